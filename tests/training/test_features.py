"""A frozen network's outputs do not depend on the batch an image is in, so the batch that bounds the memory of
feature extraction, validation and the guard's outputs changes no number."""

from __future__ import annotations

import pytest
import timm
import torch

from braintumor.data.dataset import ImageSet
from braintumor.runtime import INFERENCE_BATCH_SIZE
from braintumor.training.features import extract_features


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
