"""Fine-tuning that keeps what pretraining knows: LP-FT, gradual unfreezing, layer-wise LR decay, WiSE-FT.

The head is first trained on the frozen backbone (the linear probe, on cached features). Each
:class:`~braintumor.config.FineTuneStage` then unfreezes the backbone's top ``unfreeze`` layer groups
(timm's coarse ``group_matcher``: stem, stages, conv head) with learning rates that shrink by
``layer_decay`` per group going down. WiSE-FT finally interpolates probed and fine-tuned weights.

Example:
    >>> import timm
    >>> backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    >>> groups = backbone_layer_groups(backbone)
    >>> len(groups), groups[0][0], groups[-1][0]
    (8, 'stem', 'head')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from timm.models import group_parameters

from braintumor.config import FineTuneStage
from braintumor.models.network import BrainTumorNet


def backbone_layer_groups(backbone: nn.Module) -> list[tuple[str, list[str]]]:
    """The backbone's parameter names in layer groups, input side first, from timm's coarse group matcher.

    Backbones without a ``group_matcher`` (the seed CNN, plain torch modules) are one group per top-level child.
    """
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is not None:
        grouped = group_parameters(backbone, matcher(coarse=True))
        ordered = sorted(grouped.items(), key=lambda item: item[0])
        names: list[tuple[str, list[str]]] = []
        for index, (_, parameter_names) in enumerate(ordered):
            if index == 0:
                label = "stem"
            elif index == len(ordered) - 1:
                label = "head"
            else:
                label = f"group{index}"
            names.append((label, list(parameter_names)))
        return names
    groups: dict[str, list[str]] = {}
    for name, _ in backbone.named_parameters():
        groups.setdefault(name.split(".")[0], []).append(name)
    return list(groups.items())


class _StagedTop(nn.Module):
    """The trainable top of a staged backbone: stages ``start:``, the tail layers, then timm's pooling head."""

    def __init__(self, backbone: nn.Module, stages: list[nn.Module], tail: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.tail = nn.Sequential(*tail)
        self._forward_head = backbone.forward_head  # pooling (and flatten) only: the backbone has num_classes=0

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self._forward_head(self.tail(self.stages(activations)))


def _staged_layout(backbone: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]] | None:
    """``(stem, stages, tail)`` modules of the timm backbones we can split, else ``None``."""
    names = {name for name, _ in backbone.named_children()}
    if {"conv_stem", "bn1", "blocks", "conv_head", "bn2"} <= names:  # EfficientNet family, Lite included
        return [backbone.conv_stem, backbone.bn1], list(backbone.blocks), [backbone.conv_head, backbone.bn2]
    if {"conv1", "bn1", "act1", "maxpool", "layer1", "layer4"} <= names:  # ResNet family
        stem = [backbone.conv1, backbone.bn1, backbone.act1, backbone.maxpool]
        return stem, [getattr(backbone, f"layer{i}") for i in range(1, 5)], []
    return None


def split_backbone(backbone: nn.Module, trainable: set[int] | None = None) -> tuple[nn.Module, nn.Module] | None:
    """Split a timm backbone at the boundary of its trainable parameters: ``(frozen bottom, trainable top)``.

    ``bottom(x)`` gives the activations entering the first trainable stage and ``top(bottom(x))`` equals
    ``backbone(x)``. The split exists only when the trainable parameters are exactly the top stages (and the
    tail), which is what :func:`prepare_stage` makes; otherwise (or for unknown backbones) ``None``.
    ``trainable`` (the ``id`` of each parameter that will train) defaults to those with ``requires_grad``.

    Example:
        >>> import timm
        >>> backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
        >>> _ = backbone.requires_grad_(False)
        >>> _ = backbone.blocks[6].requires_grad_(True), backbone.conv_head.requires_grad_(True)
        >>> _ = backbone.bn2.requires_grad_(True)
        >>> bottom, top = split_backbone(backbone)
        >>> x = torch.randn(1, 3, 64, 64)
        >>> torch.allclose(top(bottom(x)), backbone(x))
        True
    """
    layout = _staged_layout(backbone)
    if layout is None:
        return None
    stem, stages, tail = layout
    if trainable is None:
        trainable = {id(p) for p in backbone.parameters() if p.requires_grad}
    for start in range(len(stages) + 1):
        top_params = {id(p) for module in [*stages[start:], *tail] for p in module.parameters()}
        # The top must hold every trainable parameter and nothing frozen, else the cache would be wrong.
        if top_params == trainable and not any(id(p) in trainable for m in stages[:start] for p in m.parameters()):
            return nn.Sequential(*stem, *stages[:start]), _StagedTop(backbone, stages[start:], tail)
    return None


def _freeze_batchnorm(module: nn.Module) -> None:
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


class FineTuneNet(nn.Module):
    """Wraps what a fine-tuning stage trains; BatchNorm statistics in ``frozen_batchnorm`` stay fixed if given.

    ``network`` is the whole :class:`BrainTumorNet` (image path) or ``nn.Sequential(top, head)`` on cached
    activations of the frozen bottom (:func:`split_backbone`); ``frozen_batchnorm`` is the backbone part.
    Lightning puts the module in train mode each epoch, so freezing BatchNorm has to happen in ``train``.
    """

    def __init__(self, network: nn.Module, frozen_batchnorm: nn.Module | None = None) -> None:
        super().__init__()
        self.network = network
        # A plain list, not a submodule: its parameters are already registered through ``network``.
        self._frozen_batchnorm = [frozen_batchnorm] if frozen_batchnorm is not None else []

    def train(self, mode: bool = True) -> FineTuneNet:
        super().train(mode)
        if mode:
            for module in self._frozen_batchnorm:
                _freeze_batchnorm(module)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def unfrozen_groups(backbone: nn.Module, stage: FineTuneStage) -> list[list[str]]:
    """The parameter names of each backbone layer group ``stage`` unfreezes, the top group first."""
    groups = backbone_layer_groups(backbone)
    count = len(groups) if stage.unfreeze == "all" else min(stage.unfreeze, len(groups))
    return [names for _, names in reversed(groups[len(groups) - count :])]


def stage_split(backbone: nn.Module, stage: FineTuneStage) -> tuple[nn.Module, nn.Module] | None:
    """:func:`split_backbone` at the groups ``stage`` will unfreeze, before it unfreezes anything: the probe
    runs the frozen bottom once and hands its activations to the stage."""
    parameters = dict(backbone.named_parameters())
    trainable = {id(parameters[name]) for names in unfrozen_groups(backbone, stage) for name in names}
    return split_backbone(backbone, trainable)


def prepare_stage(network: BrainTumorNet, stage: FineTuneStage, weight_decay: float) -> list[dict[str, Any]]:
    """Unfreeze the stage's top backbone groups and return optimizer parameter groups with their LRs.

    The head trains at ``stage.head_learning_rate`` (default ``stage.learning_rate``); the top unfrozen
    backbone group at ``learning_rate``, the next one down at ``learning_rate * layer_decay``, and so on.
    """
    network.frozen_backbone = False
    network.backbone.requires_grad_(False)
    parameters = dict(network.backbone.named_parameters())
    optimizer_groups: list[dict[str, Any]] = [
        {"params": list(network.head.parameters()), "lr": stage.head_learning_rate or stage.learning_rate}
    ]
    for depth, names in enumerate(unfrozen_groups(network.backbone, stage)):
        params = [parameters[name] for name in names]
        for param in params:
            param.requires_grad_(True)
        optimizer_groups.append(
            {"params": params, "lr": stage.learning_rate * stage.layer_decay**depth, "weight_decay": weight_decay}
        )
    for group in optimizer_groups:
        group.setdefault("weight_decay", weight_decay)
    return optimizer_groups


def interpolate_weights(
    start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``(1 - alpha) * start + alpha * end`` for float tensors; integer buffers come from ``end``.

    Example:
        >>> interpolate_weights({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)["w"].tolist()
        [0.25, 0.25]
    """
    if start.keys() != end.keys():
        raise ValueError("WiSE-FT needs two state dicts of the same network")
    mixed: dict[str, torch.Tensor] = {}
    for key, end_value in end.items():
        if torch.is_floating_point(end_value):
            mixed[key] = torch.lerp(start[key].to(end_value.dtype), end_value, alpha)
        else:
            mixed[key] = end_value.clone()
    return mixed
