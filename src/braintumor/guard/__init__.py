"""Input guard stage: flags inputs unlike the Training images (not brain MRIs, other sources), not diagnosing them."""

from braintumor.guard.guard import (
    DEFAULT_DETECTOR,
    DEFAULT_QUANTILE,
    GuardInputs,
    GuardScores,
    InputGuard,
    fit_guard,
    head_outputs,
    model_outputs,
)
from braintumor.guard.spec import GUARD_FILE, SCORE_DEFINITION, GuardSpec

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_QUANTILE",
    "GUARD_FILE",
    "SCORE_DEFINITION",
    "GuardInputs",
    "GuardScores",
    "GuardSpec",
    "InputGuard",
    "fit_guard",
    "head_outputs",
    "model_outputs",
]
