"""The adaptation stage's error: the CLI turns it into one line (it is a :class:`BrainTumorError`)."""

from __future__ import annotations

from braintumor.errors import BrainTumorError


class AdaptationError(BrainTumorError):
    """Adaptation cannot run on these inputs (too few images, an unknown method, an unsupported bundle, a bad
    output folder); the message says what to change."""
