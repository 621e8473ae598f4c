"""Inference copies of a network with BatchNorm folded into the convolution before it, and the activation after.

In evaluation a BatchNorm layer is a fixed per-channel scale and shift, so a convolution followed by
one equals a single convolution with rescaled weights and a bias (``torch.nn.utils.fusion``). That
removes one pass over every activation map: on this CPU it is about a sixth of EfficientNet-Lite2's
inference time. Where the folded convolution is then directly followed by its activation (timm's
``BatchNormAct2d``: ReLU, ReLU6, SiLU), oneDNN applies the activation inside the convolution
(:class:`ConvActivation`), which removes another pass. The result differs from the original network only
by float rounding; :func:`fold_batchnorm` checks that on an example batch and keeps the original network
when it does not hold.

Which layers are folded: a ``Conv2d`` immediately followed, in its parent's registration order, by a
``BatchNorm2d`` of as many channels (timm's ``BatchNormAct2d`` keeps its activation). That is how
timm's EfficientNets, MobileNets and ResNets and torchvision's ResNets are built; a layout where
the order of registration is not the order of use would fail the parity check and is left unfolded
(or folded without fusing, when only the fused copy fails).

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    >>> _ = net[1].running_mean.uniform_(-1, 1)
    >>> folded = fold_batchnorm(net, torch.randn(2, 3, 16, 16))
    >>> folded.folded_layers, [type(m).__name__ for m in folded.model]
    (1, ['Conv2d', 'Identity', 'ReLU'])
    >>> net[1].__class__.__name__  # the original is untouched
    'BatchNorm2d'
    >>> from timm.layers import BatchNormAct2d
    >>> timm_style = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.ReLU6)).eval()
    >>> fused = fold_batchnorm(timm_style, torch.randn(2, 3, 16, 16))
    >>> fused.fused_activations, [type(m).__name__ for m in fused.model]
    (1, ['ConvActivation', 'Identity'])
"""

from __future__ import annotations

import copy
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from braintumor.models.padding import FastConv2dSame, exporting, pad_border, same_pads
from braintumor.runtime import tuning_enabled

# Folding changes only the order of float operations; anything larger is a layout we misread.
PARITY_TOLERANCE = 1e-3


@dataclass
class FoldedNetwork:
    """The network to run (the folded copy, or the original when nothing was folded or parity failed),
    how many BatchNorm layers were folded and activations fused, and the largest output difference on the
    example batch."""

    model: nn.Module
    folded_layers: int
    max_difference: float
    fused_activations: int = 0


def fold_batchnorm(
    model: nn.Module,
    example: torch.Tensor,
    *,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> FoldedNetwork:
    """A copy of ``model`` (in eval mode) with each Conv2d + BatchNorm2d pair folded into the convolution.

    ``model`` itself comes back unchanged when it is training or ``BRAINTUMOR_CPU_TUNING=0`` (the eager baseline).

    Args:
        model: the network; it is not modified.
        example: an input batch to check the folded copy on (a few images suffice).
        forward: how to run a network on ``example`` (default: ``net(example)``); its outputs are compared.
        tolerance: largest allowed difference, relative to the largest output magnitude (at least 1).
    """
    run = forward or (lambda net, inputs: net(inputs))
    if model.training or not tuning_enabled():
        return FoldedNetwork(model, 0, 0.0)
    with torch.inference_mode():
        reference = run(model, example).float()
    limit = tolerance * max(1.0, float(reference.abs().max()))
    difference = 0.0
    # With the activations fused first; if that copy fails the check, folding alone.
    for fuse in (fused_activation_supported(), False):
        folded = copy.deepcopy(model)
        count = _fold_children(folded)
        if count == 0:
            return FoldedNetwork(model, 0, 0.0)
        fused = _fuse_activations(folded) if fuse else 0
        with torch.inference_mode():
            difference = float((reference - run(folded, example).float()).abs().max())
        if difference <= limit:
            return FoldedNetwork(folded, count, difference, fused)
        if not fuse:
            break
    return FoldedNetwork(model, 0, difference)


def _fold_children(module: nn.Module) -> int:
    """Fold every adjacent Conv2d, BatchNorm2d pair below ``module`` in place; the number folded."""
    count = 0
    children = list(module.named_children())
    for (name, child), (next_name, following) in itertools.pairwise(children):
        if _foldable(child, following):
            setattr(module, name, fuse_conv_bn_eval(child, following))
            setattr(module, next_name, _after_fold(following))
            count += 1
    for _, child in module.named_children():
        count += _fold_children(child)
    return count


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(norm, nn.BatchNorm2d)
        and norm.num_features == conv.out_channels
        and norm.running_mean is not None
        and norm.running_var is not None
        and not conv.training
        and not norm.training
    )


def _after_fold(norm: nn.BatchNorm2d) -> nn.Module:
    """What stays of a folded BatchNorm: nothing, or timm's BatchNormAct2d's dropout and activation."""
    tail = [
        module
        for module in (getattr(norm, "drop", None), getattr(norm, "act", None))
        if isinstance(module, nn.Module) and not isinstance(module, nn.Identity)
    ]
    if not tail:
        return nn.Identity()
    return tail[0] if len(tail) == 1 else nn.Sequential(*tail)


def fused_activation_supported() -> bool:
    """Whether oneDNN's convolution with a fused activation (``mkldnn::_convolution_pointwise``) is here."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _activation_attribute(activation: nn.Module) -> tuple[str, list[float]] | None:
    """oneDNN's name and arguments for an activation it can apply inside a convolution, or None."""
    if type(activation) is nn.ReLU:
        return "relu", []
    if type(activation) in (nn.ReLU6, nn.Hardtanh):
        return "hardtanh", [float(activation.min_val), float(activation.max_val)]
    if type(activation) is nn.SiLU:
        return "swish", []
    return None


class ConvActivation(nn.Module):
    """A (folded) convolution and the activation after it as one oneDNN call, for fp32 CPU inference.

    Why: the activation otherwise reads and writes every activation map once more (ReLU6 was a tenth of
    Lite2's inference time). oneDNN applies it to each output as it is written, so the values are those of
    ``activation(conv(x))``. Anything else (bf16, gradients, export, another device) runs the two modules.
    """

    def __init__(self, conv: nn.Conv2d, activation: nn.Module, attribute: tuple[str, list[float]]) -> None:
        super().__init__()
        self.conv, self.activation = conv, activation
        self.attribute, self.scalars = attribute
        self.same_padding = same_padded(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled() or exporting():
            return self.activation(self.conv(x))
        conv = self.conv
        if self.same_padding:
            x = pad_border(x, same_pads(x, conv.weight.shape[-2:], conv.stride, conv.dilation))
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            conv.weight,
            conv.bias,
            list(conv.padding),
            list(conv.stride),
            list(conv.dilation),
            conv.groups,
            self.attribute,
            self.scalars,
            "",
        )


def same_padded(conv: nn.Module) -> bool:
    """Whether ``conv`` pads TF-"SAME" per input: :class:`FastConv2dSame` or timm's ``Conv2dSame``."""
    if isinstance(conv, FastConv2dSame):
        return True
    # A timm layer exists only where timm was imported: no need to import it to ask.
    timm_layers = sys.modules.get("timm.layers")
    return timm_layers is not None and isinstance(conv, timm_layers.Conv2dSame)


def _fusable(conv: nn.Module, activation: nn.Module) -> tuple[str, list[float]] | None:
    plain_conv = isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    return _activation_attribute(activation) if plain_conv else None


def _fuse_activations(module: nn.Module) -> int:
    """Fuse every Conv2d directly followed (in registration order) by a supported activation; the number fused."""
    count = 0
    for (name, child), (next_name, following) in itertools.pairwise(list(module.named_children())):
        attribute = _fusable(child, following)
        if attribute is not None:
            setattr(module, name, ConvActivation(child, following, attribute))
            setattr(module, next_name, nn.Identity())
            count += 1
    for _, child in module.named_children():
        if not isinstance(child, ConvActivation):
            count += _fuse_activations(child)
    return count
