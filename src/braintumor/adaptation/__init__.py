"""Unsupervised site adaptation: fit a bundle to a new site's unlabelled scans (``braintumor adapt``).

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
    from braintumor.adaptation.run import (
        AdaptationResult,
        adapt_bundle,
        manifest_sha256,
        source_stats,
    )

_EXPORTS = {
    **dict.fromkeys(("DEFAULT_METHOD", "METHODS"), "braintumor.adaptation.defaults"),
    "AdaptationError": "braintumor.adaptation.errors",
    **dict.fromkeys(("ShiftEvidence", "shift_evidence"), "braintumor.adaptation.evidence"),
    **dict.fromkeys(("HeadState", "SourceStats"), "braintumor.adaptation.methods"),
    **dict.fromkeys(("adapt_head", "parse_methods"), "braintumor.adaptation.pipeline"),
    **dict.fromkeys(
        ("AdaptationResult", "adapt_bundle", "manifest_sha256", "source_stats"),
        "braintumor.adaptation.run",
    ),
}
__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "AdaptationError",
    "AdaptationResult",
    "HeadState",
    "ShiftEvidence",
    "SourceStats",
    "adapt_bundle",
    "adapt_head",
    "manifest_sha256",
    "parse_methods",
    "shift_evidence",
    "source_stats",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
