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


def resize_to_uint8_tensor(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Resize an RGB PIL image to the model's square size and return a ``[3, S, S]`` uint8 tensor."""
    size = (prep.image_size, prep.image_size)
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
