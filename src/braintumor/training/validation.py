"""Predictions and metrics on the validation split, for picking weights (WiSE-FT) and for the record."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from braintumor.classes import CLASS_NAMES
from braintumor.data.dataset import ImageSet
from braintumor.data.preprocessing import Preprocessing, eval_transform
from braintumor.evaluation.metrics import classification_metrics
from braintumor.inference.predictor import probabilities_from_logits
from braintumor.models.network import BrainTumorNet
from braintumor.runtime import INFERENCE_BATCH_SIZE, autocast, channels_last_batch, to_channels_last


@torch.inference_mode()
def predict_probabilities(
    model: BrainTumorNet,
    image_set: ImageSet,
    prep: Preprocessing,
    batch_size: int = INFERENCE_BATCH_SIZE,
    precision: str = "32-true",
) -> np.ndarray:
    """Softmax probabilities of ``model`` on ``image_set`` (held in memory or streamed from disk; eval mode,
    no augmentation, NHWC order)."""
    model.eval()
    to_channels_last(model)
    transform = eval_transform(prep)
    with autocast(precision):
        logits = torch.cat(
            [model(channels_last_batch(transform(images))).float() for images in image_set.batches(batch_size)]
        )
    return probabilities_from_logits(logits)


def validation_metrics(
    model: BrainTumorNet, val_set: ImageSet, prep: Preprocessing, precision: str = "32-true"
) -> dict[str, Any]:
    """:func:`~braintumor.evaluation.metrics.classification_metrics` of ``model`` on the validation split."""
    probabilities = predict_probabilities(model, val_set, prep, precision=precision)
    return classification_metrics(val_set.labels.numpy(), probabilities, list(CLASS_NAMES))


@torch.inference_mode()
def head_probabilities(
    model: BrainTumorNet, features: torch.Tensor, batch_size: int = INFERENCE_BATCH_SIZE, precision: str = "32-true"
) -> np.ndarray:
    """:func:`predict_probabilities` from cached backbone features ``[N, D]``: only the head runs.

    A frozen backbone's cached clean features are bitwise what it gives on the images
    (:mod:`braintumor.training.features`), and the head runs on the same batches under the same autocast, so the
    probabilities are the same numbers without decoding the images or running the backbone again.
    """
    model.eval()
    with autocast(precision):
        logits = torch.cat(
            [
                model.forward_head(features[start : start + batch_size]).float()
                for start in range(0, len(features), batch_size)
            ]
        )
    return probabilities_from_logits(logits)


def head_validation_metrics(
    model: BrainTumorNet, val_set: ImageSet, features: torch.Tensor, precision: str
) -> dict[str, Any]:
    """:func:`validation_metrics` from the validation split's cached backbone features (:func:`head_probabilities`)."""
    probabilities = head_probabilities(model, features, precision=precision)
    return classification_metrics(val_set.labels.numpy(), probabilities, list(CLASS_NAMES))
