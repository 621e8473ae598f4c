"""timm's TF EfficientNet-Lite backbones (``tf_efficientnet_lite0`` to ``lite4``) rebuilt without importing timm.

Why: importing timm imports torchvision and, through it, torch's compiler (``torch._dynamo``): seconds
before a one-image ``braintumor predict`` can start, more than the prediction itself. A bundle's weights
need only the modules, so :func:`lite_backbone` builds the same modules under the same names (the same
state-dict keys and shapes as ``timm.create_model(name, num_classes=0)``), with the same forward: the
same convolutions, BatchNorm, ReLU6, residual additions and pooling in the same order, hence the same
numbers bit for bit. The tests compare both on every variant. Training, fine-tuning and explanations
keep using timm's own network (:func:`braintumor.models.create_model`); this copy is for prediction.

The layout is also known to fold (:func:`~braintumor.models.fusion.fold_known_layout`): each convolution
is followed, in registration order, by its BatchNorm, as in timm.

Example:
    >>> import torch
    >>> backbone = lite_backbone("tf_efficientnet_lite0").eval()
    >>> backbone(torch.zeros(1, 3, 64, 64)).shape, backbone.num_features
    (torch.Size([1, 1280]), 1280)
    >>> lite_backbone("resnet50") is None
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from braintumor.models.padding import FastConv2dSame

# name: (channel multiplier, depth multiplier), as timm's tf_efficientnet_lite0..4.
LITE_VARIANTS: dict[str, tuple[float, float]] = {
    "tf_efficientnet_lite0": (1.0, 1.0),
    "tf_efficientnet_lite1": (1.0, 1.1),
    "tf_efficientnet_lite2": (1.1, 1.2),
    "tf_efficientnet_lite3": (1.2, 1.4),
    "tf_efficientnet_lite4": (1.4, 1.8),
}
# Stages of timm's arch_def: (depthwise-separable?, repeats, kernel, stride, expansion, channels).
_STAGES = (
    (True, 1, 3, 1, 1, 16),
    (False, 2, 3, 2, 6, 24),
    (False, 2, 5, 2, 6, 40),
    (False, 3, 3, 2, 6, 80),
    (False, 3, 5, 1, 6, 112),
    (False, 4, 5, 2, 6, 192),
    (False, 1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# TensorFlow's BatchNorm epsilon (timm's BN_EPS_TF_DEFAULT).
TF_BATCHNORM_EPS = 1e-3


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: the nearest multiple of ``divisor``, never more than 10% below ``value``.

    Example:
        >>> make_divisible(16 * 1.1), make_divisible(112 * 1.1), make_divisible(192 * 1.1)
        (16, 120, 208)
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """timm's ``create_conv2d`` with TF "SAME" padding: static and symmetric at stride 1, per input at stride 2."""
    if stride == 1:
        padding = (kernel - 1) // 2
        return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=padding, groups=groups, bias=False)
    return FastConv2dSame(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm, then (an identity dropout and) ReLU6 or nothing: timm's layer of this name, same keys."""

    def __init__(self, channels: int, *, activation: bool) -> None:
        super().__init__(channels, eps=TF_BATCHNORM_EPS)
        self.drop = nn.Identity()
        self.act = nn.ReLU6(inplace=True) if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class DepthwiseSeparableConv(nn.Module):
    """timm's block of this name as EfficientNet-Lite builds it (no squeeze-excitation, no activation after pw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_channels == out_channels
        self.conv_dw = _conv(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = BatchNormAct2d(in_channels, activation=True)
        self.aa, self.se = nn.Identity(), nn.Identity()
        self.conv_pw = _conv(in_channels, out_channels, 1)
        self.bn2 = BatchNormAct2d(out_channels, activation=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.aa(self.bn1(self.conv_dw(x))))
        x = self.bn2(self.conv_pw(x))
        return self.drop_path(x) + shortcut if self.has_skip else x


class InvertedResidual(nn.Module):
    """timm's block of this name as EfficientNet-Lite builds it: expand (1x1), depthwise, project (1x1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = make_divisible(in_channels * expansion)
        self.has_skip = in_channels == out_channels and stride == 1
        self.conv_pw = _conv(in_channels, mid, 1)
        self.bn1 = BatchNormAct2d(mid, activation=True)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = BatchNormAct2d(mid, activation=True)
        self.aa, self.se = nn.Identity(), nn.Identity()
        self.conv_pwl = _conv(mid, out_channels, 1)
        self.bn3 = BatchNormAct2d(out_channels, activation=False)
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        x = self.bn3(self.conv_pwl(self.se(self.aa(x))))
        return self.drop_path(x) + shortcut if self.has_skip else x


class EfficientNetLite(nn.Module):
    """timm's ``EfficientNet`` for a Lite variant with ``num_classes=0``: pooled 1280-wide features out."""

    def __init__(self, channel_multiplier: float, depth_multiplier: float) -> None:
        super().__init__()
        self.conv_stem = _conv(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = BatchNormAct2d(STEM_CHANNELS, activation=True)
        stages, in_channels = [], STEM_CHANNELS
        for index, (separable, repeats, kernel, stride, expansion, channels) in enumerate(_STAGES):
            # timm's decode_arch_def(fix_first_last=True): the first and last stage keep their depth.
            fixed = index in (0, len(_STAGES) - 1)
            depth = repeats if fixed else math.ceil(repeats * depth_multiplier)
            out_channels = make_divisible(channels * channel_multiplier)
            blocks: list[nn.Module] = []
            for block in range(depth):
                step = stride if block == 0 else 1
                if separable:
                    blocks.append(DepthwiseSeparableConv(in_channels, out_channels, kernel, step))
                else:
                    blocks.append(InvertedResidual(in_channels, out_channels, kernel, step, expansion))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(in_channels, HEAD_CHANNELS, 1)
        self.bn2 = BatchNormAct2d(HEAD_CHANNELS, activation=True)
        # timm's SelectAdaptivePool2d("avg", flatten=True): adaptive average pooling, then flatten.
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Identity()
        self.num_features = HEAD_CHANNELS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = self.bn2(self.conv_head(self.blocks(x)))
        return self.classifier(self.global_pool(x))


def lite_backbone(name: str) -> EfficientNetLite | None:
    """The timm-free copy of timm backbone ``name`` (randomly initialised), or None when there is none."""
    multipliers = LITE_VARIANTS.get(name)
    return None if multipliers is None else EfficientNetLite(*multipliers)
