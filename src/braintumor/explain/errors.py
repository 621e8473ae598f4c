"""The explain stage's errors, in a module of their own so every part of the stage can raise them."""

from __future__ import annotations

from braintumor.errors import BrainTumorError


class ExplainError(BrainTumorError):
    """An explanation that cannot be computed as asked (unknown layer, method or class)."""


class NotATransformerError(ExplainError):
    """A transformer-only explanation (attention rollout) asked of a network that has no attention blocks."""
