"""Recipes as data: one typed model validates every YAML file under ``configs/``.

A recipe names everything that decides a trained model: the data handling, the augmentation,
the network and the optimisation. The seed project's two models are two recipes of this one
schema, not two code paths.

Example:
    >>> from braintumor.config import Recipe
    >>> recipe = Recipe.model_validate({"name": "tiny", "model": {"architecture": "custom_cnn"}})
    >>> recipe.data.image_size
    224
    >>> apply_overrides(recipe, ["train.max_epochs=3"]).train.max_epochs
    3
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from braintumor.errors import BrainTumorError

REPO_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class RecipeError(BrainTumorError, ValueError):
    """A recipe file or override that cannot be used, with a message a person can act on."""


class _Strict(BaseModel):
    # Unknown keys are typos in a recipe: reject them instead of silently ignoring them.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    image_size: int = Field(224, ge=16, le=1024, description="Square input size in pixels.")
    val_fraction: float = Field(0.15, gt=0.0, lt=0.9, description="Stratified validation share of Training.")
    split_seed: int = Field(42, description="Seed of the stratified train/validation split.")
    batch_size: int = Field(32, ge=1, le=4096)
    num_workers: int = Field(0, ge=0, description="DataLoader workers (images are pre-decoded in memory).")
    crop_to_head: bool = Field(
        False,
        description="Crop every slice to the head's bounding box (squared) before resizing, in training "
        "and inference alike: removes framing differences between sources.",
    )
    drop_train_duplicates: bool = Field(
        True, description="Drop byte-identical copies inside Training before splitting (keeps one)."
    )


class AugmentConfig(_Strict):
    """The seed's augmentation: small rotation, zoom, translation and horizontal flips."""

    rotation_degrees: float = Field(10.0, ge=0.0, le=180.0)
    zoom: float = Field(0.1, ge=0.0, lt=1.0, description="Scale range 1 +- zoom.")
    translate: float = Field(0.1, ge=0.0, lt=0.5, description="Fraction of the size in each direction.")
    horizontal_flip: bool = True
    enabled: bool = True


class ModelConfig(_Strict):
    architecture: Literal["custom_cnn", "transfer"] = "transfer"
    backbone: str = Field("resnet50", description="timm model name (architecture: transfer).")
    pretrained: bool = Field(True, description="Start from pretrained backbone weights.")
    weights: Path | None = Field(None, description="Local .safetensors/.pth file with backbone weights.")
    freeze_backbone: bool = True
    conv_channels: list[int] = Field(
        default_factory=lambda: [32, 64, 128, 256, 512], description="custom_cnn: channels per block."
    )
    head_hidden: int = Field(128, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check_architecture(self) -> ModelConfig:
        if self.architecture == "custom_cnn" and not self.conv_channels:
            raise ValueError("custom_cnn needs at least one entry in conv_channels")
        return self


class TrainConfig(_Strict):
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_epochs: int = Field(30, ge=1)
    early_stopping_patience: int = Field(5, ge=1)
    lr_patience: int = Field(2, ge=1, description="ReduceLROnPlateau patience (epochs).")
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    seed: int = 42
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    loss: Literal["cross_entropy", "focal"] = Field(
        "cross_entropy", description="Training loss; validation loss is always plain cross-entropy."
    )
    focal_gamma: float = Field(2.0, ge=0.0, le=10.0, description="Focal loss exponent (0 is cross-entropy).")
    class_weights: Literal["none", "balanced"] | list[Annotated[float, Field(gt=0.0)]] = Field(
        "none",
        description="Per-class loss weights: none, balanced (n / (classes * count) from the training split), "
        "or one positive number per class in class order. With the focal loss they are its alpha.",
    )
    feature_cache: bool = Field(
        True, description="Frozen backbone: compute features once and train only the head on them."
    )
    cache_views: int = Field(
        4, ge=1, le=64, description="Augmented views per image in the feature cache (view e%K in epoch e)."
    )
    precision: str = Field("32-true", description="Lightning precision string.")

    @model_validator(mode="after")
    def _check_loss(self) -> TrainConfig:
        # Label smoothing is defined for cross-entropy; silently ignoring it under focal loss would mislead.
        if self.loss == "focal" and self.label_smoothing > 0:
            raise ValueError("label_smoothing applies to loss: cross_entropy only; set it to 0 with loss: focal")
        return self


class Recipe(_Strict):
    name: str
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid recipe {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """Find a recipe by file path, or by name in ``./configs`` or the repository's ``configs/``."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    stem = candidate.name.removesuffix(".yaml").removesuffix(".yml")
    for folder in (Path.cwd() / "configs", REPO_CONFIG_DIR):
        for suffix in (".yaml", ".yml"):
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    known = sorted(p.stem for p in REPO_CONFIG_DIR.glob("*.yaml")) if REPO_CONFIG_DIR.is_dir() else []
    raise RecipeError(f"recipe {name_or_path!s} not found (known recipes: {', '.join(known) or 'none'})")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, validate and override a recipe; every problem becomes a :class:`RecipeError`."""
    path = resolve_recipe_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path} must be a mapping at the top level")
    raw.setdefault("name", path.stem)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(_format_validation_error(str(path), error)) from None
    return apply_overrides(recipe, overrides or [])


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply ``section.field=value`` overrides (values parsed as YAML) and re-validate."""
    data: dict[str, Any] = recipe.model_dump(mode="json")
    for override in overrides:
        key, sep, value_text = override.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {override!r} must look like section.field=value")
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise RecipeError(f"override {override!r}: {part!r} is not a recipe section")
            node = node[part]
        if parts[-1] not in node:
            raise RecipeError(f"override {override!r}: unknown field {key.strip()!r}")
        try:
            node[parts[-1]] = yaml.safe_load(value_text)
        except yaml.YAMLError as error:
            raise RecipeError(f"override {override!r}: value is not valid YAML ({error})") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_format_validation_error("after overrides", error)) from None
