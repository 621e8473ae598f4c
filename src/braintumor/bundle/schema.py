"""The typed model of a bundle's ``config.json``: read once, validated once, used by its fields everywhere.

Sections that grow with new stages (the training record, ``extras``) keep unknown keys, so a bundle
written by a newer minor version still loads; the parts that rebuild the network (recipe,
preprocessing, class names, ensemble members) are strict.

Example:
    >>> from braintumor.config import Recipe
    >>> from braintumor.data.preprocessing import Preprocessing
    >>> recipe = Recipe.model_validate({"name": "tiny", "model": {"architecture": "custom_cnn"}})
    >>> config = BundleConfig(name="tiny", class_names=["a", "b"], recipe=recipe,
    ...                       preprocessing=Preprocessing(image_size=32))
    >>> config.extras.temperature is None, config.training.val_paths
    (True, [])
    >>> BundleConfig.model_validate_json(config.model_dump_json()).recipe.name
    'tiny'
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing
from braintumor.guard.spec import GuardSpec

BUNDLE_FORMAT = "braintumor-bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ONNX_FILE = "model.onnx"


PositiveFinite = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class _Open(BaseModel):
    # Records that later stages add keys to: keep what we do not know instead of failing or dropping it.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class TrainingRecord(_Open):
    """What training did and measured: data, split, history, validation metrics, timing, devices, tracking."""

    data_root: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    train_class_counts: dict[str, int] = Field(default_factory=dict)
    val_paths: list[str] = Field(default_factory=list, description="The validation split: calibration refits on it.")
    skipped_files: list[dict[str, Any]] = Field(default_factory=list)
    duplicates: dict[str, Any] = Field(default_factory=dict)
    epochs_run: int | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    val_metrics: dict[str, Any] = Field(default_factory=dict)
    feature_cache: bool = False
    finetuning: dict[str, Any] | None = None
    class_weights: list[float] | None = None
    timing: dict[str, float | int | bool] = Field(default_factory=dict)
    duration_s: float | None = None
    resumed: bool = False
    devices: dict[str, Any] = Field(default_factory=dict)
    tracking: dict[str, Any] = Field(default_factory=dict)
    ensemble_of: list[str] | None = Field(None, description="Member names, for an ensemble bundle.")
    distillation: dict[str, Any] | None = Field(
        None, description="The teacher a distilled model learnt from: bundle, recipe, version, validation figures."
    )


class AdaptationRecord(_Open):
    """What ``braintumor adapt`` did: the method, its settings, the unlabelled images and what they showed.

    The fitted change itself lives in the weights (the head's last Dense layer, or the backbone's BatchNorm
    statistics), so an adapted bundle loads, predicts and exports like any other.
    """

    method: str
    settings: dict[str, Any] = Field(default_factory=dict)
    source_bundle: str = Field(description="The bundle that was adapted (left unchanged).")
    images_root: str
    n_images: int = Field(ge=0, description="Images the adaptation was fitted on (after the guard).")
    manifest_sha256: str = Field(description="sha256 over the sorted content hashes of those images.")
    image_digests: list[str] = Field(default_factory=list, description="Their content hashes (file_digest).")
    rejected_by_guard: list[str] = Field(default_factory=list)
    skipped_files: list[dict[str, Any]] = Field(default_factory=list)
    evidence: dict[str, Any] = Field(default_factory=dict, description="How far the images sat from the source.")
    warnings: list[str] = Field(default_factory=list)
    created_utc: str | None = None


class BundleExtras(_Open):
    """State fitted after training (``braintumor calibrate``); later stages (input guard, adaptation) add theirs."""

    temperature: PositiveFinite | None = Field(None, description="Temperature scaling of the logits.")
    refer_threshold: PositiveFinite | None = Field(
        None, description="Confidence below which an answer is 'refer to a radiologist'."
    )
    calibration: dict[str, Any] | None = Field(None, description="The calibration record (scores before/after).")
    guard: GuardSpec | None = Field(None, description="The input guard (its tensors are in guard.safetensors).")
    adaptation: AdaptationRecord | None = Field(None, description="Set by `braintumor adapt` on the new bundle.")

    @field_validator("refer_threshold", mode="before")
    @classmethod
    def _threshold_number(cls, value: Any) -> Any:
        # Early bundles stored the threshold as {"threshold": x}.
        return value.get("threshold", value) if isinstance(value, dict) else value


class EnsembleMember(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    recipe: Recipe
    source: str | None = None
    val_metrics: dict[str, Any] = Field(default_factory=dict)


class EnsembleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    members: list[EnsembleMember] = Field(min_length=1)
    weights: list[float] | None = None

    def member_weights(self) -> list[float]:
        """The members' weights; equal when none were given."""
        return [float(w) for w in self.weights] if self.weights else [1.0] * len(self.members)


class BundleConfig(BaseModel):
    """``config.json`` of a model bundle."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: Literal["braintumor-bundle"] = BUNDLE_FORMAT
    format_version: int = Field(BUNDLE_VERSION, ge=1, le=BUNDLE_VERSION)
    name: str
    class_names: list[str] = Field(min_length=2)
    preprocessing: Preprocessing
    recipe: Recipe
    training: TrainingRecord = Field(default_factory=TrainingRecord)
    extras: BundleExtras = Field(default_factory=BundleExtras)
    manifest: dict[str, Any] = Field(default_factory=dict, description="Provenance: git, data hash, seed, machine.")
    ensemble: EnsembleSpec | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    created_utc: str | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form written to ``config.json`` (no ``ensemble`` key for a single model)."""
        return self.model_dump(mode="json", exclude_none=False, exclude={"ensemble"} if self.ensemble is None else None)
