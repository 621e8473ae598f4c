"""Data stage: folder layout discovery, safe image decoding, splits and transforms."""

from braintumor.data.images import SkippedFile, load_image_rgb
from braintumor.data.layout import Sample, discover_split, normalise_class_name
from braintumor.data.preprocessing import Preprocessing

__all__ = [
    "Preprocessing",
    "Sample",
    "SkippedFile",
    "discover_split",
    "load_image_rgb",
    "normalise_class_name",
]
