"""Preprocessing stored with each model, and the torchvision v2 transforms built from it.

Images are resized once to the model's square size (as the seed did: no aspect-ratio padding) and
kept as uint8 tensors; the transforms below then augment and normalise them.

Example:
    >>> import torch
    >>> prep = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> image = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    >>> eval_transform(prep)(image).max().item()
    1.0
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict
from scipy import ndimage
from torchvision.transforms import InterpolationMode, v2

from braintumor.config import AugmentConfig

Interpolation = Literal["nearest", "bilinear", "bicubic"]
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class Preprocessing(BaseModel):
    """How raw pixels become model input; saved in every bundle's ``config.json``."""

    model_config = ConfigDict(extra="forbid")

    image_size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: Interpolation = "bilinear"
    resize: Literal["squash"] = "squash"
    crop: Literal["none", "head"] = "none"


def head_bounding_box(grey: np.ndarray, *, margin: float = 0.02) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the head in a grey slice, or ``None`` when no head stands out.

    Foreground is what is brighter than a tenth of the 99th percentile; the head is its largest
    connected region, so burnt-in text, rulers and stray noise do not stretch the box.

    Example:
        >>> slice_ = np.zeros((100, 200), dtype=np.uint8)
        >>> slice_[20:80, 120:180] = 150
        >>> head_bounding_box(slice_, margin=0.0)
        (20, 80, 120, 180)
    """
    height, width = grey.shape
    level = float(np.percentile(grey, 99))
    if level <= 0:
        return None
    labels, count = ndimage.label(grey > 0.1 * level)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    if rows.stop - rows.start < 0.1 * height or cols.stop - cols.start < 0.1 * width:
        return None
    pad_y, pad_x = round(margin * height), round(margin * width)
    return (
        max(0, rows.start - pad_y),
        min(height, rows.stop + pad_y),
        max(0, cols.start - pad_x),
        min(width, cols.stop + pad_x),
    )


def crop_to_head(image: Image.Image) -> Image.Image:
    """Crop an RGB slice to its head's bounding box, padded with black to a square (framing removed).

    Example:
        >>> slice_ = np.zeros((100, 200, 3), dtype=np.uint8)
        >>> slice_[20:80, 120:180] = 150
        >>> crop_to_head(Image.fromarray(slice_)).size  # 60 px plus a 2% margin on each side
        (68, 68)
    """
    box = head_bounding_box(np.asarray(image.convert("L")))
    if box is None:
        return image
    top, bottom, left, right = box
    cropped = image.crop((left, top, right, bottom))
    side = max(cropped.size)
    square = Image.new("RGB", (side, side))
    square.paste(cropped, ((side - cropped.width) // 2, (side - cropped.height) // 2))
    return square


def resize_to_uint8_tensor(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Resize an RGB PIL image to the model's square size and return a ``[3, S, S]`` uint8 tensor.

    With ``prep.crop == "head"`` the slice is first cropped to the head (:func:`crop_to_head`).
    """
    size = (prep.image_size, prep.image_size)
    if prep.crop == "head":
        image = crop_to_head(image.convert("RGB"))
    resized = image.convert("RGB").resize(size, resample=_PIL_RESAMPLE[prep.interpolation], reducing_gap=3.0)
    # numpy's transpose copy: torch's multi-threaded permute().contiguous() of one small uint8 image
    # costs ~10 ms on a busy 2-core machine (thread-pool wake-ups), numpy's single-threaded copy ~0.2 ms.
    return torch.from_numpy(np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)))


def normalise_transform(prep: Preprocessing) -> v2.Compose:
    """uint8 ``[.., 3, S, S]`` to normalised float32, the last step of every pipeline."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=prep.mean, std=prep.std)])


def eval_transform(prep: Preprocessing) -> v2.Compose:
    """Deterministic transform for validation, testing and prediction."""
    return normalise_transform(prep)


def augmentation_transform(augment: AugmentConfig, prep: Preprocessing) -> v2.Compose:
    """The seed's geometric augmentation on uint8 images (no normalisation)."""
    steps: list[v2.Transform] = []
    if augment.enabled:
        if augment.rotation_degrees or augment.zoom or augment.translate:
            steps.append(
                v2.RandomAffine(
                    degrees=augment.rotation_degrees,
                    translate=(augment.translate, augment.translate) if augment.translate else None,
                    scale=(1.0 - augment.zoom, 1.0 + augment.zoom) if augment.zoom else None,
                    interpolation=InterpolationMode.BILINEAR,
                    fill=0,
                )
            )
        if augment.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip(p=0.5))
    return v2.Compose(steps) if steps else v2.Compose([v2.Identity()])


def train_transform(augment: AugmentConfig, prep: Preprocessing) -> v2.Compose:
    """Augmentation followed by normalisation, applied per image during training."""
    return v2.Compose([augmentation_transform(augment, prep), normalise_transform(prep)])
