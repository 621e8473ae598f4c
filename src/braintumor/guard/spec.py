"""What a bundle's ``config.json`` records about its input guard (the tensors are in ``guard.safetensors``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

GUARD_FILE = "guard.safetensors"
# How ood_score is built, written into every guard so a reader of config.json does not need the code.
SCORE_DEFINITION = (
    "ood_score = max over components of (score - validation median) / (validation threshold - validation median): "
    "0 is a typical validation image, 1 the threshold; the input is flagged out of distribution when ood_score > 1. "
    "Components: the feature detector on the penultimate features (and logits) of the model, the image "
    "evidence (how far grey level statistics of the model's input fall outside the Training images' range) and, "
    "where bone_ring is set, the bone-ring score (above 1: a white skull ring like a head CT's, already normalised)."
)


class GuardSpec(BaseModel):
    """The input guard's definition and thresholds; stored in ``extras.guard`` of a bundle."""

    model_config = ConfigDict(extra="forbid")

    detector: str = Field(description="Feature detector (braintumor.guard.detectors registry).")
    quantile: float = Field(gt=0.5, lt=1.0, description="Validation quantile that sets each threshold.")
    feature_median: float
    feature_threshold: float
    evidence_names: list[str]
    evidence_low: list[float] = Field(description="Per statistic, the Training images' low quantile.")
    evidence_high: list[float] = Field(description="Per statistic, the Training images' high quantile.")
    evidence_median: float
    evidence_threshold: float
    n_train: int
    n_val: int
    validation_flag_rate: float = Field(description="Share of validation images flagged with these thresholds.")
    bone_ring: list[float] | None = Field(
        default=None,
        description="The bone-ring rule (least white share, white gap, white on rim; most dark inside): images "
        "that look like a head CT are flagged and left out of the fit. None (guards fitted before it): no rule.",
    )
    ct_like_left_out: int = Field(
        default=0, description="Training and validation images left out of the fit because they look like head CT."
    )
    definition: str = SCORE_DEFINITION
