"""Recipes as data: one typed model validates every YAML recipe, built in (``braintumor/configs/``) or a user's.

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

from difflib import get_close_matches
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from braintumor.errors import BrainTumorError
from braintumor.runtime import Precision, PrecisionChoice, resolve_precision

# The built-in recipes ship inside the package (package data), so a wheel install has them too.
RECIPE_PACKAGE = "braintumor.configs"
RECIPE_SUFFIXES = (".yaml", ".yml")


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
    num_workers: int = Field(
        0,
        ge=0,
        description="DataLoader workers that decode and augment training images (0: half the cores, at least one, "
        "for images streamed from disk).",
    )
    crop_to_head: bool = Field(
        False,
        description="Crop every slice to the head's bounding box (squared) before resizing, in training "
        "and inference alike: removes framing differences between sources.",
    )
    intensity: Literal["none", "equalize", "clahe", "window"] = Field(
        "none",
        description="Intensity normalisation of every slice after resizing, in training and inference alike: "
        "equalize is global histogram equalisation, clahe contrast-limited adaptive equalisation (kornia, "
        "clip limit 2, 8x8 tiles), window stretches the head's 1st-99th intensity percentiles to the full range; "
        "contrast settings differ between scanners and sources.",
    )
    drop_train_duplicates: bool = Field(
        True, description="Drop byte-identical copies inside Training before splitting (keeps one)."
    )
    interpolation: Literal["auto", "nearest", "bilinear", "bicubic"] = Field(
        "auto",
        description="Resampling of the resize to image_size: auto is the pretrained backbone's own (bilinear for "
        "custom_cnn); nearest is what Keras' flow_from_directory does.",
    )
    val_split: Literal["stratified", "keras"] = Field(
        "stratified",
        description="stratified: a seeded class-stratified random validation share; keras: the first val_fraction "
        "of each class's files in name order, as Keras' flow_from_directory(validation_split=...) takes them.",
    )


class AugmentConfig(_Strict):
    """Training-time augmentation: the seed's geometry by default, plus optional framing and intensity changes.

    The framing and intensity options (all off by default) simulate what differs between image sources:
    field of view and borders (random resized crops, zoom-out padding), contrast and brightness
    (gamma, jitter, histogram equalisation), sharpness (blur) and noise.
    """

    rotation_degrees: float = Field(10.0, ge=0.0, le=180.0)
    zoom: float = Field(0.1, ge=0.0, lt=1.0, description="Scale range 1 +- zoom.")
    translate: float = Field(0.1, ge=0.0, lt=0.5, description="Fraction of the size in each direction.")
    horizontal_flip: bool = True
    crop_scale: float | None = Field(
        None, gt=0.05, le=1.0, description="Random resized crops keeping this to 100% of the area (None: off)."
    )
    zoom_out: float = Field(
        0.0, ge=0.0, le=3.0, description="Pad to up to (1 + zoom_out) times the size with black borders, then resize."
    )
    zoom_out_p: float = Field(0.3, ge=0.0, le=1.0, description="Probability of the zoom-out padding.")
    gamma: tuple[float, float] | None = Field(
        None, description="Random gamma, log-uniform between the two values, e.g. [0.5, 2.0] (None: off)."
    )
    brightness: float = Field(0.0, ge=0.0, lt=1.0, description="Brightness jitter factor range 1 +- brightness.")
    contrast: float = Field(0.0, ge=0.0, lt=1.0, description="Contrast jitter factor range 1 +- contrast.")
    equalize_p: float = Field(0.0, ge=0.0, le=1.0, description="Probability of histogram equalisation.")
    clahe_p: float = Field(
        0.0, ge=0.0, le=1.0, description="Probability of CLAHE (clip limit drawn from 1 to 4, 8x8 tiles)."
    )
    blur_p: float = Field(0.0, ge=0.0, le=1.0, description="Probability of a Gaussian blur.")
    blur_sigma: float = Field(1.5, gt=0.0, le=10.0, description="Largest blur sigma in pixels.")
    noise_std: float = Field(
        0.0, ge=0.0, le=1.0, description="Gaussian noise with std drawn up to this, on [0, 1] pixels (0: off)."
    )
    enabled: bool = True

    @model_validator(mode="after")
    def _check_gamma(self) -> AugmentConfig:
        if self.gamma is not None and not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError("gamma must be two positive numbers, low first, e.g. [0.5, 2.0]")
        return self


class ModelConfig(_Strict):
    architecture: Literal["custom_cnn", "transfer"] = "transfer"
    backbone: str = Field("resnet50", description="timm model name (architecture: transfer).")
    pretrained: bool = Field(True, description="Start from pretrained backbone weights.")
    weights: Path | None = Field(None, description="Local .safetensors/.pth file with backbone weights.")
    freeze_backbone: bool = True
    backbone_args: dict[str, int | float | bool | str] = Field(
        default_factory=dict,
        description="transfer: further keyword arguments of timm.create_model, e.g. {depth: 2, embed_dim: 48, "
        "num_heads: 2, patch_size: 8} for a small vision transformer; a model with a fixed input size (a ViT) "
        "is built at data.image_size.",
    )
    conv_channels: list[int] = Field(
        default_factory=lambda: [32, 64, 128, 256, 512], description="custom_cnn: channels per block."
    )
    head: Literal["seed", "linear"] = Field(
        "seed",
        description="seed: Dense(head_hidden)+BatchNorm+Dropout+Dense, as the seed project; linear: standardised "
        "features (BatchNorm without affine) + Dropout + Dense, a logistic-regression probe.",
    )
    head_hidden: int = Field(128, ge=1, description="Width of the seed head's hidden layer.")
    head_standardize: bool = Field(
        True,
        description="linear head: standardise features with BatchNorm first. Turn off when the backbone's top is "
        "fine-tuned at a high LR: near-constant features then get near-zero variances, and their changes are "
        "amplified by up to 1/sqrt(eps).",
    )
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    init: Literal["pytorch", "keras"] = Field(
        "pytorch",
        description="custom_cnn and the head: pytorch keeps PyTorch's default initialisation and BatchNorm "
        "(momentum 0.1, eps 1e-5); keras uses Keras' defaults: Glorot-uniform weights, zero biases, BatchNorm "
        "momentum 0.99 (0.01 in PyTorch's convention) and eps 1e-3.",
    )

    @model_validator(mode="after")
    def _check_architecture(self) -> ModelConfig:
        if self.architecture == "custom_cnn" and not self.conv_channels:
            raise ValueError("custom_cnn needs at least one entry in conv_channels")
        reserved = sorted(set(self.backbone_args) & {"img_size", "num_classes", "pretrained", "pretrained_cfg_overlay"})
        if reserved:
            raise ValueError(
                f"backbone_args must not set {', '.join(reserved)}: the input size is data.image_size, the classes "
                "come from the data and pretraining from model.pretrained"
            )
        return self


class FineTuneStage(_Strict):
    """One stage of progressive fine-tuning: which backbone layers train, for how long, how fast.

    Stages run after the head has been trained on the frozen backbone (the linear probe of LP-FT), so
    the first update of the backbone starts from a head that already fits and does not wreck its features.
    """

    epochs: int = Field(ge=1, description="Epochs of this stage (the best epoch by validation loss is kept).")
    unfreeze: int | Literal["all"] = Field(
        "all", description="How many of the backbone's top layer groups train (timm's coarse groups), or all."
    )
    learning_rate: float = Field(1e-4, gt=0.0, description="Learning rate of the top group and the head.")
    layer_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="Layer-wise LR decay: each group below the top trains at this times the LR."
    )
    head_learning_rate: float | None = Field(None, gt=0.0, description="The head's LR (default: learning_rate).")
    cache_frozen_layers: bool = Field(
        False,
        description="Run the stage's frozen lower layers once per cached view (train.cache_views) and train the top "
        "layers and the head on their stored activations. Exact with frozen BatchNorm; augmentation then comes "
        "only from the cached views. Needs a backbone whose layer groups are a stem and a chain of stages.",
    )

    @field_validator("unfreeze")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("unfreeze must be a positive number of layer groups, or 'all'")
        return value


class DistillConfig(_Strict):
    """Knowledge distillation: the student also learns a teacher bundle's outputs on its training views.

    Example:
        >>> DistillConfig(teacher="runs/lite0-lpft-cached").loss
        'soft'
    """

    teacher: str | list[str] = Field(
        description="The teacher bundle's folder, or several folders: the one with the best validation accuracy is "
        "used (all candidates' validation figures go into the student's bundle)."
    )
    loss: Literal["soft", "hard"] = Field(
        "soft",
        description="soft: KL divergence to the teacher's probabilities at the temperature (Hinton et al. 2015); "
        "hard: cross-entropy to the teacher's predicted class (DeiT's hard distillation).",
    )
    weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the distillation term; the true labels' loss gets 1 - weight."
    )
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature of the soft loss (T^2 scales it back).")
    token: bool = Field(
        False,
        description="DeiT's distillation token (Touvron et al. 2021), for a ViT backbone that has one (timm's "
        "deit_*_distilled_*): the class token learns the labels and the distillation token the teacher, through "
        "the one linear head; prediction averages the two tokens (the average of their logits).",
    )


class TrainConfig(_Strict):
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_epochs: int = Field(30, ge=1)
    early_stopping_patience: int = Field(5, ge=1)
    lr_patience: int = Field(2, ge=1, description="ReduceLROnPlateau patience (epochs).")
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    schedule: Literal["plateau", "cosine"] = Field(
        "plateau",
        description="Learning-rate schedule: plateau (ReduceLROnPlateau on validation loss: lr_patience, lr_factor) "
        "or cosine (linear warm-up over warmup_epochs, then cosine decay to zero at max_epochs, step by step; the "
        "schedule transformers trained from scratch are trained with).",
    )
    warmup_epochs: int = Field(
        0, ge=0, description="Linear warm-up of the cosine schedule (epochs; a shorter run only warms up)."
    )
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
    precision: PrecisionChoice = Field(
        "auto",
        description="Numeric precision of the image network's training, feature caching and inference: auto is "
        "bf16-mixed where the machine runs bf16 natively (AVX-512 bf16, AMX or a bf16 GPU), else 32, and 32 for a "
        "frozen backbone without fine-tuning (exact cached features); heads on cached features always train in fp32 "
        "(docs/speed.md).",
    )
    channels_last: bool = Field(
        True, description="Run convolutional networks in NHWC memory order (oneDNN's native layout; same numbers)."
    )
    finetune_stages: list[FineTuneStage] = Field(
        default_factory=list,
        description="Progressive fine-tuning after the frozen-backbone (linear-probe) phase: LP-FT with one stage, "
        "gradual unfreezing with several. Empty: the backbone stays as model.freeze_backbone says.",
    )
    finetune_batchnorm: Literal["frozen", "train"] = Field(
        "frozen", description="frozen keeps the backbone's BatchNorm statistics while fine-tuning (small batches)."
    )
    wise_alphas: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=list,
        description="WiSE-FT: after fine-tuning, interpolate (1-a)*probed + a*fine-tuned weights for each a and keep "
        "the one with the lowest validation loss. Empty: keep the fine-tuned weights.",
    )

    distill: DistillConfig | None = Field(
        None, description="Learn from a teacher bundle's outputs as well as the labels (knowledge distillation)."
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_text(cls, value: Any) -> Any:
        # YAML reads `precision: 32` as a number.
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _check_loss(self) -> TrainConfig:
        # Label smoothing is defined for cross-entropy; silently ignoring it under focal loss would mislead.
        if self.loss == "focal" and self.label_smoothing > 0:
            raise ValueError("label_smoothing applies to loss: cross_entropy only; set it to 0 with loss: focal")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError("warmup_epochs belongs to schedule: cosine")
        if self.wise_alphas and not self.finetune_stages:
            raise ValueError("wise_alphas interpolate probed and fine-tuned weights: add finetune_stages")
        for index, stage in enumerate(self.finetune_stages, start=1):
            if stage.cache_frozen_layers and (stage.unfreeze == "all" or self.finetune_batchnorm != "frozen"):
                # Cached activations are only exact if the layers below stay fixed, statistics included.
                raise ValueError(
                    f"finetune_stages[{index}].cache_frozen_layers needs a frozen lower part: a number for unfreeze "
                    "(not 'all') and finetune_batchnorm: frozen"
                )
        return self


# The site adaptation methods (``braintumor adapt``), in the order its help lists them; combine with "+".
ADAPTATION_METHODS = ("adabn", "standardize", "coral", "em", "t3a", "shot")
# Pairs that do the same job (align the features; re-fit the last layer on the target): one of each at most.
_EXCLUSIVE_METHODS = (("standardize", "coral"), ("t3a", "shot"))


def parse_adaptation_methods(text: str) -> tuple[str, ...]:
    """The methods of ``a+b+...`` in :data:`ADAPTATION_METHODS` order; unknown or conflicting names are a ValueError.

    Example:
        >>> parse_adaptation_methods("EM + coral")
        ('coral', 'em')
    """
    names = {part.strip().lower() for part in text.split("+") if part.strip()}
    choices = ", ".join(ADAPTATION_METHODS)
    if not names:
        raise ValueError(f"no adaptation method given; choose from {choices} (combine with +, e.g. coral+em)")
    unknown = sorted(names - set(ADAPTATION_METHODS))
    if unknown:
        raise ValueError(f"unknown adaptation method {', '.join(unknown)}; choose from {choices}")
    for pair in _EXCLUSIVE_METHODS:
        if set(pair) <= names:
            raise ValueError(f"{pair[0]} and {pair[1]} do the same job: pick one")
    return tuple(name for name in ADAPTATION_METHODS if name in names)


class AdaptConfig(_Strict):
    """What ``braintumor adapt`` does to this recipe's bundles when no ``--method`` is given.

    Example:
        >>> AdaptConfig.model_validate({"method": "Standardize + EM"}).method
        'standardize+em'
    """

    method: str = Field(
        "em",
        description="The adaptation method or combination (a+b) that `braintumor adapt` uses for this recipe's "
        "bundles by default; the input guard's shift evidence still gates it.",
    )

    @field_validator("method")
    @classmethod
    def _known_methods(cls, value: str) -> str:
        return "+".join(parse_adaptation_methods(value))


class Recipe(_Strict):
    name: str
    description: str = ""
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)

    def precision(self) -> Precision:
        """The precision this recipe's image network trains and runs at on this machine.

        ``auto`` is bf16-mixed where the machine runs bf16 natively, except for a frozen backbone without
        fine-tuning: its cached features and its inference stay fp32, so that they are exact (bf16 features
        moved the Lite2 probe's Testing accuracy by 1-2 points, docs/speed.md).

        Example:
            >>> Recipe.model_validate({"name": "probe", "model": {"freeze_backbone": True}}).precision()
            '32-true'
        """
        requested = self.train.precision
        frozen = self.model.architecture == "transfer" and self.model.freeze_backbone and not self.train.finetune_stages
        if requested == "auto" and frozen:
            return "32-true"
        return resolve_precision(requested)

    @model_validator(mode="after")
    def _check_finetuning(self) -> Recipe:
        if self.train.finetune_stages and not (self.model.architecture == "transfer" and self.model.freeze_backbone):
            raise ValueError(
                "train.finetune_stages start from a head trained on the frozen backbone: they need "
                "model.architecture: transfer and model.freeze_backbone: true"
            )
        return self

    @model_validator(mode="after")
    def _check_distillation_token(self) -> Recipe:
        if self.train.distill is None or not self.train.distill.token:
            return self
        model = self.model
        if model.architecture != "transfer" or "distilled" not in (model.backbone or "") or model.freeze_backbone:
            raise ValueError(
                "train.distill.token trains a ViT's distillation token: it needs a trainable timm backbone with one "
                "(model.backbone: deit_tiny_distilled_patch16_224 or another deit_*_distilled_*, "
                "model.freeze_backbone: false)"
            )
        if model.head != "linear" or model.head_standardize:
            # The average of the two tokens' logits is the head of their average only for an affine head, and a
            # standardising BatchNorm would learn its statistics from each token's batch, not from their average.
            raise ValueError(
                "train.distill.token needs model.head: linear and model.head_standardize: false (both tokens share "
                "the one linear head)"
            )
        return self


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid recipe {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def builtin_recipes() -> dict[str, Traversable]:
    """The recipes shipped with braintumor, by name (file stem), sorted.

    Example:
        >>> "seed-cnn" in builtin_recipes()
        True
    """
    folder = resources.files(RECIPE_PACKAGE)
    found = {item.name.rsplit(".", 1)[0]: item for item in folder.iterdir() if item.name.endswith(RECIPE_SUFFIXES)}
    return dict(sorted(found.items()))


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """``" (did you mean x?)"`` with the closest of ``choices`` to a mistyped ``word``, or ``""`` when none is close.

    Example:
        >>> did_you_mean("seed-cn", ["seed-cnn", "seed-cnn-keras", "lite0-probe"])
        ' (did you mean seed-cnn?)'
    """
    close = get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _recipe_files(folder: Path) -> list[str]:
    """Names of the YAML files in ``folder`` (none when it cannot be read): suggestions for a mistyped path."""
    try:
        return sorted(path.name for path in folder.iterdir() if path.suffix in RECIPE_SUFFIXES)
    except OSError:
        return []


def _read_recipe_text(name_or_path: str | Path) -> tuple[str, str]:
    """The YAML text of a recipe file path, or of a built-in recipe by name, and where it came from."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate.read_text(encoding="utf-8"), str(candidate)
    stem = candidate.name.removesuffix(".yaml").removesuffix(".yml")
    shipped = builtin_recipes()
    if candidate.suffix not in RECIPE_SUFFIXES and stem in shipped:
        return shipped[stem].read_text(encoding="utf-8"), f"{stem} (built in)"
    files = _recipe_files(candidate.parent)
    if candidate.suffix in RECIPE_SUFFIXES or len(candidate.parts) > 1:
        raise RecipeError(f"recipe file {name_or_path!s} does not exist{did_you_mean(candidate.name, files)}")
    suggestion = did_you_mean(stem, [*shipped, *files])
    if suggestion:
        raise RecipeError(f"recipe {name_or_path!s} not found{suggestion}; braintumor recipes lists the built-in ones")
    raise RecipeError(f"recipe {name_or_path!s} not found (known recipes: {', '.join(shipped) or 'none'})")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, validate and override a recipe (a built-in name or a YAML path); problems become :class:`RecipeError`.

    Example:
        >>> load_recipe("seed-cnn", ["train.max_epochs=2"]).train.max_epochs
        2
    """
    text, source = _read_recipe_text(name_or_path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe {source} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {source} must be a mapping at the top level")
    raw.setdefault("name", Path(str(name_or_path)).name.removesuffix(".yaml").removesuffix(".yml"))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(_format_validation_error(source, error)) from None
    return apply_overrides(recipe, overrides or [])


def list_recipes() -> list[tuple[str, str]]:
    """``(name, description)`` of every built-in recipe; a broken one gets its error as description."""
    rows = []
    for name in builtin_recipes():
        try:
            rows.append((name, load_recipe(name).description))
        except RecipeError as error:
            rows.append((name, f"invalid: {error}"))
    return rows


def _field_names(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Every settable ``section.field`` of a dumped recipe (list values such as finetune_stages are one field)."""
    names = []
    for key, value in tree.items():
        names += _field_names(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return names


def _unknown_key_error(override: str, key: str, data: dict[str, Any]) -> RecipeError:
    """The error of an override naming no recipe field, with the closest fields or sections as suggestions.

    Example:
        >>> print(_unknown_key_error("train.learning_rat=0.1", "train.learning_rat", {"train": {"learning_rate": 1}}))
        override 'train.learning_rat=0.1': unknown field 'train.learning_rat' (did you mean train.learning_rate?)
    """
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            sections = [name for name, value in node.items() if isinstance(value, dict)]
            fields = [name for name in _field_names(data) if name.endswith(f".{parts[-1]}")]
            hint = did_you_mean(part, sections) or did_you_mean(key, fields)
            where = ".".join(parts[: depth + 1])
            return RecipeError(f"override {override!r}: {where!r} is not a recipe section{hint}")
        node = node[part]
    fields = _field_names(data)
    # A field given without its section ("max_epochs") is as close as a typo.
    same_name = [name for name in fields if name.rsplit(".", 1)[-1] == parts[-1]]
    hint = f" (did you mean {' or '.join(same_name[:3])}?)" if same_name else did_you_mean(key, fields)
    return RecipeError(f"override {override!r}: unknown field {key!r}{hint}")


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
                raise _unknown_key_error(override, key.strip(), data)
            node = node[part]
        if parts[-1] not in node:
            raise _unknown_key_error(override, key.strip(), data)
        try:
            node[parts[-1]] = yaml.safe_load(value_text)
        except yaml.YAMLError as error:
            raise RecipeError(f"override {override!r}: value is not valid YAML ({error})") from None
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_format_validation_error("after overrides", error)) from None
