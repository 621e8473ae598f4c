"""Synthetic brain-MRI-like data for tests, demos and smoke runs (no download, any machine).

Each class puts a bright blob in its own place inside a grey "head" ellipse on black, so a small
network learns it in a few epochs, while noise, blob size and head size vary per image.

Example:
    >>> import tempfile
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), per_class=2, size=32)
    >>> sorted(p.name for p in (root / "Training").iterdir())
    ['glioma_tumor', 'meningioma_tumor', 'no_tumor', 'pituitary_tumor']
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from braintumor.classes import CLASS_NAMES

SARTAJ_FOLDERS = {
    "glioma": "glioma_tumor",
    "meningioma": "meningioma_tumor",
    "no_tumor": "no_tumor",
    "pituitary": "pituitary_tumor",
}
# Blob centre per class as a fraction of the image; no_tumor has no blob.
_BLOB_CENTRES = {"glioma": (0.35, 0.35), "meningioma": (0.3, 0.7), "no_tumor": None, "pituitary": (0.72, 0.5)}


def synthetic_image(class_name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One grey RGB image of ``class_name``: an ellipse head plus a class-specific bright blob."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    radius_y, radius_x = rng.uniform(0.38, 0.46), rng.uniform(0.32, 0.42)
    head = (((yy - 0.5) / radius_y) ** 2 + ((xx - 0.5) / radius_x) ** 2) <= 1.0
    pixels = np.where(head, 0.35, 0.0) + rng.normal(0.0, 0.04, (size, size)) * head
    centre = _BLOB_CENTRES[class_name]
    if centre is not None:
        cy, cx = centre[0] + rng.uniform(-0.04, 0.04), centre[1] + rng.uniform(-0.04, 0.04)
        sigma = rng.uniform(0.05, 0.08)
        pixels += 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    grey = (np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def make_synthetic_dataset(
    root: Path | str,
    *,
    per_class: int = 12,
    test_per_class: int | None = None,
    size: int = 64,
    seed: int = 0,
    folder_names: dict[str, str] | None = None,
    image_format: str = "JPEG",
) -> Path:
    """Write ``<root>/Training`` and ``<root>/Testing`` with ``per_class`` images per class; returns root."""
    root = Path(root)
    names = folder_names or SARTAJ_FOLDERS
    rng = np.random.default_rng(seed)
    suffix = ".jpg" if image_format.upper() == "JPEG" else f".{image_format.lower()}"
    for split, count in (("Training", per_class), ("Testing", test_per_class or max(2, per_class // 2))):
        for class_name in CLASS_NAMES:
            folder = root / split / names[class_name]
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image = synthetic_image(class_name, size, rng)
                image.save(folder / f"{class_name}_{index:03d}{suffix}", format=image_format, quality=95)
    return root
