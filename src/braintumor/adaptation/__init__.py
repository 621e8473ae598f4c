"""Unsupervised site adaptation maths; :mod:`braintumor.workflows.adapt` applies it and writes the adapted bundle.

Names are imported lazily, so the CLI can read :mod:`braintumor.adaptation.defaults` without loading torch.
See ``docs/adaptation.md`` for the methods, the honest protocol and what it measured.

Example:
    >>> from braintumor.adaptation import DEFAULT_METHOD, parse_methods
    >>> parse_methods(DEFAULT_METHOD)
    ('em',)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from braintumor.lazy import lazy_exports

if TYPE_CHECKING:
    from braintumor.adaptation.defaults import DEFAULT_METHOD, METHODS
    from braintumor.adaptation.errors import AdaptationError
    from braintumor.adaptation.evidence import ShiftEvidence, shift_evidence
    from braintumor.adaptation.methods import HeadState, SourceStats
    from braintumor.adaptation.pipeline import adapt_head, parse_methods

_EXPORTS = {
    **dict.fromkeys(("DEFAULT_METHOD", "METHODS"), "braintumor.adaptation.defaults"),
    "AdaptationError": "braintumor.adaptation.errors",
    **dict.fromkeys(("ShiftEvidence", "shift_evidence"), "braintumor.adaptation.evidence"),
    **dict.fromkeys(("HeadState", "SourceStats"), "braintumor.adaptation.methods"),
    **dict.fromkeys(("adapt_head", "parse_methods"), "braintumor.adaptation.pipeline"),
}
__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "AdaptationError",
    "HeadState",
    "ShiftEvidence",
    "SourceStats",
    "adapt_head",
    "parse_methods",
    "shift_evidence",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
