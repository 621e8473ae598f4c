"""Augmented copies of Training images for the large trees the scale benchmarks build."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def augmented_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A grey copy with a seeded flip (p 0.5), a crop of 85-100% of each side, gain 0.85-1.15 and offset -12..12."""
    image = image.convert("L")
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    width, height = image.size
    keep_w, keep_h = (int(side * rng.uniform(0.85, 1.0)) for side in (width, height))
    left, top = int(rng.integers(0, width - keep_w + 1)), int(rng.integers(0, height - keep_h + 1))
    image = image.crop((left, top, left + keep_w, top + keep_h))
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
