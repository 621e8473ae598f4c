"""Models stage: one ``create_model`` entry point for every recipe (as in timm).

Example:
    >>> import torch
    >>> from braintumor.config import Recipe
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [8, 16]}})
    >>> model = create_model(recipe)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch.nn as nn

from braintumor.classes import CLASS_NAMES
from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing
from braintumor.models.network import BrainTumorNet, LinearHead, SeedCNN, SeedHead, keras_initialise
from braintumor.models.pretrained import create_backbone

__all__ = ["BrainTumorNet", "create_model", "resolve_preprocessing"]


def create_model(recipe: Recipe, *, load_pretrained: bool = True, num_classes: int = len(CLASS_NAMES)) -> BrainTumorNet:
    """Build the recipe's network. ``load_pretrained=False`` skips weight loading (bundles bring their own)."""
    spec = recipe.model
    if spec.architecture == "custom_cnn":
        backbone: nn.Module = SeedCNN(spec.conv_channels, recipe.data.image_size)
        frozen = False
    else:
        backbone = create_backbone(
            spec.backbone,
            pretrained=spec.pretrained and load_pretrained,
            weights=spec.weights,
            image_size=recipe.data.image_size,
            options=spec.backbone_args,
        )
        frozen = spec.freeze_backbone
    return _with_head(recipe, backbone, frozen, num_classes)


def _with_head(recipe: Recipe, backbone: nn.Module, frozen: bool, num_classes: int) -> BrainTumorNet:
    spec = recipe.model
    # Some families (MobileNetV3, ...) add a conv head after num_features: use its width then.
    num_features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    head: nn.Module
    if spec.head == "linear":
        head = LinearHead(num_features, spec.dropout, num_classes, standardize=spec.head_standardize)
    else:
        head = SeedHead(num_features, spec.head_hidden, spec.dropout, num_classes)
    if spec.init == "keras":
        # The from-scratch parts only: a pretrained backbone keeps the weights it was trained to.
        keras_initialise(head)
        if spec.architecture == "custom_cnn":
            keras_initialise(backbone)
    return BrainTumorNet(backbone, num_features, head, frozen_backbone=frozen)


def resolve_preprocessing(recipe: Recipe, model: BrainTumorNet) -> Preprocessing:
    """Normalisation and interpolation from the backbone's pretrained config; [0, 1] pixels for the CNN."""
    size = recipe.data.image_size
    crop = "head" if recipe.data.crop_to_head else "none"
    chosen = recipe.data.interpolation
    if recipe.model.architecture == "custom_cnn":
        interpolation = "bilinear" if chosen == "auto" else chosen
        return Preprocessing(image_size=size, interpolation=interpolation, crop=crop, intensity=recipe.data.intensity)
    import timm.data

    data_config = timm.data.resolve_data_config(model=model.backbone)
    interpolation = data_config.get("interpolation", "bilinear") if chosen == "auto" else chosen
    if interpolation not in {"nearest", "bilinear", "bicubic"}:
        interpolation = "bilinear"
    return Preprocessing(
        image_size=size,
        mean=tuple(float(v) for v in data_config["mean"]),
        std=tuple(float(v) for v in data_config["std"]),
        interpolation=interpolation,
        crop=crop,
        intensity=recipe.data.intensity,
    )
