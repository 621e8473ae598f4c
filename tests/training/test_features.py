"""A frozen network's outputs do not depend on the batch an image is in, so the batch that bounds the memory of
feature extraction, validation and the guard's outputs changes no number; and a frozen probe's validation from
its cached features is the pass over the images."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from braintumor.config import Recipe
from braintumor.data.dataset import ImageSet
from braintumor.data.preprocessing import eval_transform
from braintumor.models import create_model, resolve_preprocessing
from braintumor.runtime import INFERENCE_BATCH_SIZE
from braintumor.training.features import extract_features
from braintumor.training.validation import (
    head_probabilities,
    head_validation_metrics,
    predict_probabilities,
    validation_metrics,
)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_features_are_the_same_at_any_batch_size(precision: str) -> None:
    torch.manual_seed(0)
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    images = torch.randint(0, 256, (10, 3, 64, 64), dtype=torch.uint8)
    image_set = ImageSet(images, torch.zeros(10, dtype=torch.long), [f"{i}.png" for i in range(10)], [""] * 10)

    def transform(batch: torch.Tensor) -> torch.Tensor:
        return batch.float() / 255.0

    features = {
        size: extract_features(
            backbone, image_set, transform, batch_size=size, per_image=False, show_progress=False, precision=precision
        )
        for size in (1, 3, 10, INFERENCE_BATCH_SIZE)
    }
    for size, value in features.items():
        assert torch.equal(value, features[1]), size


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_validation_from_cached_features_equals_the_pass_over_the_images(precision: str) -> None:
    # A frozen probe's validation metrics come from its cached clean features: only the head runs.
    recipe = Recipe.model_validate(
        {
            "name": "probe",
            "data": {"image_size": 64},
            "model": {"architecture": "transfer", "backbone": "tf_efficientnet_lite0", "pretrained": False},
        }
    )
    model = create_model(recipe, load_pretrained=False).eval()
    prep = resolve_preprocessing(recipe, model)
    images = torch.randint(0, 256, (40, 3, 64, 64), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    image_set = ImageSet(images, labels, [f"{i}.png" for i in range(40)], [""] * 40)
    features = extract_features(
        model.backbone, image_set, eval_transform(prep), per_image=False, show_progress=False, precision=precision
    )
    from_images = predict_probabilities(model, image_set, prep, precision=precision)
    from_features = head_probabilities(model, features, precision=precision)
    np.testing.assert_array_equal(from_features, from_images)
    assert head_validation_metrics(model, image_set, features, precision) == validation_metrics(
        model, image_set, prep, precision
    )
