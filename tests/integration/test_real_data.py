"""A small sample of the real Brain Tumor MRI images (shared folder, via BRAINTUMOR_DATA)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from braintumor.bundle import load_bundle
from braintumor.classes import CLASS_NAMES
from braintumor.data.dataset import load_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing
from braintumor.inference import Predictor
from braintumor.workflows.train import train_recipe
from tests.conftest import tiny_recipe

pytestmark = pytest.mark.real_data


def test_real_layout_has_the_published_counts(real_data_root: Path) -> None:
    training = discover_split(real_data_root, "Training")
    testing = discover_split(real_data_root, "Testing")
    assert (len(training), len(testing)) == (2870, 394)
    counts = {name: sum(s.class_name == name for s in testing) for name in CLASS_NAMES}
    assert counts == {"glioma": 100, "meningioma": 115, "no_tumor": 105, "pituitary": 74}


def test_train_and_predict_on_a_real_sample(real_data_root: Path, tmp_path: Path) -> None:
    sample_root = tmp_path / "sample"
    for split, per_class in (("Training", 8), ("Testing", 2)):
        for class_dir in sorted((real_data_root / split).iterdir()):
            target = sample_root / split / class_dir.name
            target.mkdir(parents=True)
            for path in sorted(class_dir.iterdir())[:per_class]:
                shutil.copy(path, target / path.name)
    image_set = load_images(discover_split(sample_root, "Training"), Preprocessing(image_size=64), show_progress=False)
    assert len(image_set) == 32 and not image_set.skipped
    assert image_set.images.shape == (32, 3, 64, 64)
    recipe = tiny_recipe(data={"image_size": 64}, train={"max_epochs": 2})
    result = train_recipe(recipe, sample_root, tmp_path / "run", show_progress=False)
    predictions, skipped = Predictor(load_bundle(result.bundle_dir)).predict_paths(
        sorted((sample_root / "Testing").rglob("*.jpg"))
    )
    assert len(predictions) == 8 and not skipped
    assert all(p.class_name in CLASS_NAMES for p in predictions)
