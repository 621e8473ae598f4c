"""Input guard stage: flags inputs unlike the Training images (not brain MRIs, other sources), not diagnosing them.

Names are imported lazily, so the CLI can read :mod:`braintumor.guard.defaults` without loading torch.

Example:
    >>> from braintumor.guard import DEFAULT_DETECTOR, InputGuard
    >>> DEFAULT_DETECTOR, InputGuard.__name__
    ('mahalanobis', 'InputGuard')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from braintumor.lazy import lazy_exports

if TYPE_CHECKING:
    from braintumor.guard.defaults import DEFAULT_DETECTOR, DEFAULT_QUANTILE
    from braintumor.guard.guard import GuardInputs, GuardScores, InputGuard, fit_guard, head_outputs, model_outputs
    from braintumor.guard.reasons import FLAG_REASONS, FlagReason
    from braintumor.guard.spec import GUARD_FILE, SCORE_DEFINITION, GuardSpec

_EXPORTS = {
    **dict.fromkeys(("DEFAULT_DETECTOR", "DEFAULT_QUANTILE"), "braintumor.guard.defaults"),
    **dict.fromkeys(
        ("GuardInputs", "GuardScores", "InputGuard", "fit_guard", "head_outputs", "model_outputs"),
        "braintumor.guard.guard",
    ),
    **dict.fromkeys(("FLAG_REASONS", "FlagReason"), "braintumor.guard.reasons"),
    **dict.fromkeys(("GUARD_FILE", "SCORE_DEFINITION", "GuardSpec"), "braintumor.guard.spec"),
}
__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_QUANTILE",
    "FLAG_REASONS",
    "GUARD_FILE",
    "SCORE_DEFINITION",
    "FlagReason",
    "GuardInputs",
    "GuardScores",
    "GuardSpec",
    "InputGuard",
    "fit_guard",
    "head_outputs",
    "model_outputs",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
