"""Where adaptation touches a network: the head's last Dense layer, the BatchNorm before it, the backbone's
BatchNorm statistics (AdaBN).

Example:
    >>> from braintumor.models.network import BrainTumorNet, LinearHead
    >>> net = BrainTumorNet(torch.nn.Identity(), 3, LinearHead(3, dropout=0.0, num_classes=2), frozen_backbone=True)
    >>> state = head_state(net)
    >>> set_head_state(net, HeadState(state.weight * 2, state.bias))
    >>> bool(torch.allclose(head_state(net).weight, state.weight * 2))
    True
    >>> source_moments(net)[1].tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from braintumor.adaptation.defaults import ADABN_BATCH_SIZE, SEED
from braintumor.adaptation.methods import HeadState
from braintumor.errors import BrainTumorError
from braintumor.models.fusion import fold_batchnorm
from braintumor.models.network import BrainTumorNet
from braintumor.runtime import channels_last_batch, to_channels_last

if TYPE_CHECKING:
    # Only a type here: the data set module imports scikit-learn, which the network code does not need.
    from braintumor.data.dataset import ImageSet


def last_layer(model: nn.Module) -> nn.Linear:
    """The head's last Dense layer (what every head here ends in)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Linear):
        raise BrainTumorError("adaptation needs a network whose head ends in a Dense layer (every recipe's head does)")
    return head[-1]


def head_state(model: nn.Module) -> HeadState:
    layer = last_layer(model)
    return HeadState(layer.weight.detach().double().clone(), layer.bias.detach().double().clone())


@torch.no_grad()
def set_head_state(model: nn.Module, state: HeadState) -> None:
    """Write an adapted layer into the network, in place (same shapes, same state-dict keys)."""
    layer = last_layer(model)
    layer.weight.copy_(state.weight.to(layer.weight.dtype))
    layer.bias.copy_(state.bias.to(layer.bias.dtype))


def source_moments(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-dimension mean and standard deviation of the source's penultimate features, read from the
    BatchNorm before the last layer: its output has mean 0 and deviation 1 on the source (affine: beta, |gamma|).
    None when the head has no such BatchNorm (a linear probe without standardisation)."""
    norms = [layer for layer in model.head if isinstance(layer, nn.BatchNorm1d)]  # type: ignore[union-attr]
    if not norms:
        return None
    norm = norms[-1]
    if norm.affine:
        return norm.bias.detach().double().clone(), norm.weight.detach().double().abs().clone()
    size = norm.num_features
    return torch.zeros(size, dtype=torch.float64), torch.ones(size, dtype=torch.float64)


@torch.no_grad()
def penultimate(model: BrainTumorNet, backbone_features: torch.Tensor) -> torch.Tensor:
    """The input of the last layer for cached backbone features (eval mode)."""
    model.eval()
    return model.head_penultimate_and_logits(backbone_features)[0].double()


def _batches(images: torch.Tensor | ImageSet, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive uint8 batches of a tensor or an image set (a streaming set is decoded from disk per batch)."""
    if not isinstance(images, torch.Tensor):
        return images.batches(batch_size)
    return (images[start : start + batch_size] for start in range(0, len(images), batch_size))


def _shuffled_batches(images: torch.Tensor | ImageSet, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """``images`` in a seeded random order, batch by batch: the same permutation, so the same batches, for a
    tensor and for an image set of the same images."""
    order = np.random.default_rng(seed).permutation(len(images))
    if not isinstance(images, torch.Tensor):
        return images.subset(order).batches(batch_size)
    index = torch.as_tensor(order)
    return (images[index[start : start + batch_size]] for start in range(0, len(images), batch_size))


@torch.no_grad()
def adabn(
    backbone: nn.Module,
    images: torch.Tensor | ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = ADABN_BATCH_SIZE,
    seed: int = SEED,
) -> int:
    """AdaBN (Li et al. 2016): replace every BatchNorm's running statistics by the target images' (in place).

    ``images`` is ``[N, 3, S, S]`` uint8 or an :class:`~braintumor.data.dataset.ImageSet` (a streaming one is
    decoded from disk batch by batch, never held whole); both give the same statistics. The images are
    shuffled (a seeded permutation) so that no batch is one folder's, and the statistics are the plain average
    over batches (``momentum=None``). Returns the number of BatchNorm layers reset.
    """
    norms = [layer for layer in backbone.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise BrainTumorError("AdaBN needs a backbone with BatchNorm layers; this one has none")
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.reset_running_stats()
        layer.momentum = None
    backbone.train()
    try:
        for batch in _shuffled_batches(images, batch_size, seed):
            backbone(transform(batch))
    finally:
        backbone.eval()
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return len(norms)


@torch.inference_mode()
def backbone_features(
    backbone: nn.Module,
    images: torch.Tensor | ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = ADABN_BATCH_SIZE,
    on_batch: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Pooled backbone features ``[N, D]`` (float32, eval mode, NHWC), through a copy with BatchNorm folded
    into the convolutions (:func:`~braintumor.models.fusion.fold_batchnorm`, as prediction runs it).

    ``images`` is ``[N, 3, S, S]`` uint8 or an :class:`~braintumor.data.dataset.ImageSet` (a streaming one is
    decoded from disk batch by batch, in order); both give the same features. ``on_batch`` sees each uint8
    batch, in order (what else needs the pixels reads them in the same pass).
    """
    backbone.eval()
    to_channels_last(backbone)
    batches = _batches(images, batch_size)
    first = next(batches, None) if len(images) else None  # an empty set starts no decoding workers
    if first is None:
        return torch.zeros((0, 0))
    network = fold_batchnorm(backbone, channels_last_batch(transform(first[:2]))).model
    chunks = []
    for batch in itertools.chain([first], batches):
        if on_batch is not None:
            on_batch(batch)
        chunks.append(network(channels_last_batch(transform(batch))).float())
    return torch.cat(chunks)
