"""Batch inference on files, folders or decoded images with a loaded bundle.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model, resolve_preprocessing
    >>> from braintumor.inference.bundle import load_bundle, save_bundle
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe)
    >>> folder = save_bundle(tempfile.mkdtemp() + "/b", model, recipe, resolve_preprocessing(recipe, model))
    >>> predictor = Predictor(load_bundle(folder))
    >>> probabilities = predictor.predict_images([Image.new("RGB", (50, 40))])
    >>> probabilities.shape
    (1, 4)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from braintumor.data.images import SkippedFile, load_image_rgb
from braintumor.data.preprocessing import eval_transform, resize_to_uint8_tensor
from braintumor.errors import BrainTumorError, ImageDecodeError
from braintumor.inference.bundle import Bundle


@dataclass(frozen=True)
class Prediction:
    """One image's predicted class and the probability of every class."""

    source: str
    class_name: str
    confidence: float
    probabilities: dict[str, float]


def expand_inputs(inputs: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders expanded recursively to their non-hidden files (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.exists():
            paths.append(path)
        else:
            raise BrainTumorError(f"input {path} does not exist")
    return paths


class Predictor:
    """Runs a bundle's model on images, in batches, with the bundle's own preprocessing."""

    def __init__(self, bundle: Bundle, *, batch_size: int = 32) -> None:
        self.bundle = bundle
        self.batch_size = batch_size
        self.transform = eval_transform(bundle.preprocessing)
        self.temperature = float(bundle.config.get("extras", {}).get("temperature", 1.0))

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    @torch.inference_mode()
    def predict_uint8(self, images: torch.Tensor) -> np.ndarray:
        """Probabilities ``[N, C]`` for uint8 images ``[N, 3, S, S]`` already at the model's size."""
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = self.transform(images[start : start + self.batch_size])
            logits = self.bundle.model(batch) / self.temperature
            outputs.append(torch.softmax(logits, dim=1))
        if not outputs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return torch.cat(outputs).numpy()

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Probabilities for decoded PIL images of any size."""
        if not images:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        batch = torch.stack([resize_to_uint8_tensor(image, self.bundle.preprocessing) for image in images])
        return self.predict_uint8(batch)

    def to_prediction(self, source: str, probabilities: np.ndarray) -> Prediction:
        index = int(np.argmax(probabilities))
        return Prediction(
            source=source,
            class_name=self.class_names[index],
            confidence=float(probabilities[index]),
            probabilities={name: float(p) for name, p in zip(self.class_names, probabilities, strict=True)},
        )

    def predict_paths(self, paths: Sequence[Path | str]) -> tuple[list[Prediction], list[SkippedFile]]:
        """Predict every decodable file; undecodable ones are returned as skipped with the reason."""
        predictions: list[Prediction] = []
        skipped: list[SkippedFile] = []
        for start in range(0, len(paths), self.batch_size):
            images, sources = [], []
            for path in paths[start : start + self.batch_size]:
                try:
                    images.append(load_image_rgb(path))
                    sources.append(str(path))
                except ImageDecodeError as error:
                    skipped.append(SkippedFile(str(path), error.reason))
            for source, row in zip(sources, self.predict_images(images), strict=True):
                predictions.append(self.to_prediction(source, row))
        return predictions, skipped
