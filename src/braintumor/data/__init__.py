"""Data stage: folder layout discovery, safe image decoding, splits and transforms.

Names are imported lazily, so importing one data module (``braintumor.data.images``) loads neither torch
nor the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from braintumor.lazy import lazy_exports

if TYPE_CHECKING:
    from braintumor.data.images import SkippedFile, load_image_rgb
    from braintumor.data.layout import Sample, discover_split, normalise_class_name
    from braintumor.data.preprocessing import Preprocessing

_EXPORTS = {
    **dict.fromkeys(("SkippedFile", "load_image_rgb"), "braintumor.data.images"),
    **dict.fromkeys(("Sample", "discover_split", "normalise_class_name"), "braintumor.data.layout"),
    "Preprocessing": "braintumor.data.preprocessing",
}

__all__ = [
    "Preprocessing",
    "Sample",
    "SkippedFile",
    "discover_split",
    "load_image_rgb",
    "normalise_class_name",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
