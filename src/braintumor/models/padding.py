"""TensorFlow "SAME" padding without PyTorch's slow constant pad on channels_last tensors.

The TF-ported EfficientNet-Lite backbones (timm's ``tf_efficientnet_lite*``) pad the input of every
stride-2 convolution asymmetrically (one more row and column at the bottom and right), so timm runs
them as ``Conv2dSame``: ``F.pad`` then the convolution. On a channels_last tensor ``F.pad`` (PyTorch's
``constant_pad_nd``) fills the whole output with the pad value before copying the input in, and that
fill is slow, most of all on memory the process has not touched yet: measured here on a 32 x 96 x 130 x 130
batch, 107-129 ms the first time and 15 ms after, against 6-10 ms for allocating the output, copying the
input and zeroing only the new border (docs/speed.md).

:func:`pad_border` writes the same tensor (bitwise: padding does no arithmetic), so swapping it in
changes no feature, gradient or prediction. :class:`FastConv2dSame` is such a convolution, and
:func:`use_fast_same_padding` swaps it into a network's ``Conv2dSame`` layers. Under ``torch.export``/ONNX
export and tracing it uses ``F.pad``, which the exporters know. This module imports timm only to find
the layers to swap.

Example:
    >>> import torch
    >>> import torch.nn.functional as F
    >>> x = torch.randn(2, 3, 5, 4).contiguous(memory_format=torch.channels_last)
    >>> padded = pad_border(x, (0, 1, 1, 2))
    >>> torch.equal(padded, F.pad(x, (0, 1, 1, 2))), padded.is_contiguous(memory_format=torch.channels_last)
    (True, True)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from braintumor.runtime import tuning_enabled


def exporting() -> bool:
    """True while a network is traced, scripted, compiled or exported (where ``F.pad`` must be used)."""
    # torch.onnx is imported on first use (tens of milliseconds): when nothing imported it, no ONNX export runs.
    onnx = sys.modules.get("torch.onnx")
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or (onnx is not None and onnx.is_in_onnx_export())
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
    )


def pad_border(x: torch.Tensor, pads: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """``F.pad(x, pads, value=value)`` for a 4-D tensor and non-negative ``(left, right, top, bottom)`` pads,
    in ``x``'s memory format, writing the pad value only where it goes.

    Args:
        x: an N x C x H x W tensor (any memory format).
        pads: ``(left, right, top, bottom)`` as in ``F.pad``; all >= 0.
        value: the pad value.
    """
    left, right, top, bottom = (int(p) for p in pads)
    if x.dim() != 4 or min(left, right, top, bottom) < 0 or exporting():
        return F.pad(x, (left, right, top, bottom), value=value)
    if not (left or right or top or bottom):
        return x
    batch, channels, height, width = x.shape
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty(
        (batch, channels, height + top + bottom, width + left + right),
        dtype=x.dtype,
        device=x.device,
        memory_format=layout,
    )
    out[:, :, top : top + height, left : left + width] = x
    # Only the border: the rows above and below (full width), then the columns beside the input.
    out[:, :, :top].fill_(value)
    out[:, :, top + height :].fill_(value)
    out[:, :, top : top + height, :left].fill_(value)
    out[:, :, top : top + height, left + width :].fill_(value)
    return out


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    # timm.layers.padding.get_same_padding for an int size.
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def same_pads(x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> list[int]:
    """timm's TF "SAME" pads ``(left, right, top, bottom)`` for a convolution over ``x`` (``pad_same_arg``).

    Example:
        >>> same_pads(torch.zeros(1, 3, 7, 8), (3, 3), (2, 2), (1, 1))
        [0, 1, 1, 1]
    """
    height, width = x.shape[-2:]
    pad_h = _same_padding(height, kernel_size[0], stride[0], dilation[0])
    pad_w = _same_padding(width, kernel_size[1], stride[1], dilation[1])
    return [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]


class FastConv2dSame(nn.Conv2d):
    """timm's ``Conv2dSame`` (TF "SAME" padding, computed per input) with :func:`pad_border` in place of ``F.pad``.

    Same parameters and state dict as ``Conv2dSame``; built with ``padding=0``. With ``BRAINTUMOR_CPU_TUNING=0``
    it pads with ``F.pad``, as ``Conv2dSame`` does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_pads(x, self.weight.shape[-2:], self.stride, self.dilation)
        padded = pad_border(x, pads) if tuning_enabled() else F.pad(x, pads)
        return F.conv2d(padded, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


def use_fast_same_padding(model: nn.Module) -> int:
    """Make every timm ``Conv2dSame`` of ``model`` a :class:`FastConv2dSame`, in place; returns how many.

    The layers keep their parameters, buffers and hooks (only their class changes), so checkpoints and
    bundles load as before. Nothing changes with ``BRAINTUMOR_CPU_TUNING=0`` (the eager baseline).
    """
    if not tuning_enabled():
        return 0
    from timm.layers import Conv2dSame

    count = 0
    for module in model.modules():
        if type(module) is Conv2dSame:
            module.__class__ = FastConv2dSame
            count += 1
    return count
