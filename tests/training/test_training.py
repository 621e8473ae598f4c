from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from braintumor.bundle import load_bundle
from braintumor.data.dataset import load_images
from braintumor.data.layout import discover_split
from braintumor.inference import Predictor
from braintumor.training.validation import predict_probabilities
from braintumor.workflows.train import train_recipe
from tests.conftest import tiny_recipe


def test_training_writes_a_complete_run(trained_run) -> None:
    run_dir = trained_run.run_dir
    assert (run_dir / "bundle" / "model.safetensors").is_file()
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    with (run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(trained_run.history) >= 1
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "learning_rate"} <= set(rows[0])
    config = json.loads((run_dir / "bundle" / "config.json").read_text())
    assert config["class_names"] == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert config["preprocessing"]["image_size"] == 32
    assert config["recipe"]["name"] == "tiny-cnn"
    assert config["training"]["best_epoch"] == trained_run.best_epoch
    assert {"torch", "timm", "lightning"} <= set(config["versions"])
    # Testing is never touched by training: the validation images all come from Training.
    assert all("/Training/" in path for path in config["training"]["val_paths"])


def test_the_synthetic_task_is_learned(trained_run) -> None:
    assert trained_run.val_metrics["accuracy"] >= 0.75


def test_best_epoch_is_restored(trained_run) -> None:
    losses = [row["val_loss"] for row in trained_run.history]
    best = int(np.argmin(losses))
    assert trained_run.best_epoch == best + 1
    # The bundle's validation loss is the best epoch's, not the last epoch's.
    assert trained_run.val_metrics["loss"] == pytest.approx(losses[best], rel=0.02, abs=1e-3)


def test_bundle_reloads_and_predicts_identically(trained_run, synthetic_root: Path) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    image_set = load_images(discover_split(synthetic_root, "Testing"), bundle.preprocessing, show_progress=False)
    from_bundle = Predictor(bundle).predict_uint8(image_set.images)
    again = Predictor(load_bundle(trained_run.bundle_dir)).predict_uint8(image_set.images)
    np.testing.assert_array_equal(from_bundle, again)
    # The same precision on both paths (bf16 autocast where the CPU has native bf16): the same numbers.
    direct = predict_probabilities(bundle.model, image_set, bundle.preprocessing, precision=Predictor(bundle).precision)
    np.testing.assert_allclose(from_bundle, direct, atol=1e-6)
    paths = [str(p) for p in image_set.paths[:3]]
    predictions, skipped = Predictor(bundle).predict_paths(paths)
    assert not skipped
    for prediction, row in zip(predictions, from_bundle[:3], strict=True):
        assert prediction.confidence == pytest.approx(float(row.max()), abs=1e-6)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_training_is_repeatable_with_a_seed(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(train={"max_epochs": 2})
    first = train_recipe(recipe, synthetic_root, tmp_path / "a", show_progress=False)
    second = train_recipe(recipe, synthetic_root, tmp_path / "b", show_progress=False)
    assert [r["val_loss"] for r in first.history] == pytest.approx([r["val_loss"] for r in second.history], rel=1e-5)


@pytest.mark.slow
def test_frozen_backbone_trains_the_head_on_cached_features(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(
        model={
            "architecture": "transfer",
            "backbone": "mobilenetv3_small_050",
            "pretrained": False,
            "freeze_backbone": True,
        },
        augment={"enabled": True},
        train={"max_epochs": 3, "cache_views": 2},
    )
    result = train_recipe(recipe, synthetic_root, tmp_path / "cached", show_progress=False)
    config = json.loads((result.bundle_dir / "config.json").read_text())
    assert config["training"]["feature_cache"] is True
    assert config["training"]["timing"]["feature_views"] == 2
    bundle = load_bundle(result.bundle_dir)
    reference = load_bundle(result.bundle_dir)
    # The frozen backbone is saved unchanged from its initialisation: only the head was trained.
    torch.manual_seed(0)
    probabilities = Predictor(bundle).predict_images([Image.new("RGB", (40, 40), 90)])
    np.testing.assert_allclose(probabilities, Predictor(reference).predict_images([Image.new("RGB", (40, 40), 90)]))


def test_training_goes_on_past_bad_files(synthetic_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    (root / "Training" / "no_tumor" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    messages: list[str] = []
    result = train_recipe(
        tiny_recipe(train={"max_epochs": 1}), root, tmp_path / "run", show_progress=False, console_log=messages.append
    )
    assert [Path(s.path).name for s in result.skipped] == ["broken.jpg"]
    assert any("broken.jpg" in m for m in messages) and any("1 of 65 files" in m for m in messages)
    assert (result.bundle_dir / "model.safetensors").is_file()


def test_exact_duplicates_in_training_are_dropped(synthetic_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    glioma = root / "Training" / "glioma_tumor"
    source = sorted(glioma.iterdir())[0]
    shutil.copy(source, glioma / "copy.jpg")
    shutil.copy(source, root / "Training" / "meningioma_tumor" / "conflict.jpg")
    messages: list[str] = []
    result = train_recipe(
        tiny_recipe(train={"max_epochs": 1}), root, tmp_path / "run", show_progress=False, console_log=messages.append
    )
    duplicates = json.loads((result.bundle_dir / "config.json").read_text())["training"]["duplicates"]
    # The glioma file and its glioma copy agree, but the meningioma copy conflicts: all three go.
    assert duplicates["removed_label_conflicts"] == 3 and duplicates["removed_copies"] == 0
    assert any("conflicting labels" in m for m in messages)


def test_balanced_class_weights_reach_the_training_record(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(train={"max_epochs": 1, "class_weights": "balanced", "loss": "focal", "focal_gamma": 2.0})
    result = train_recipe(recipe, synthetic_root, tmp_path / "run", show_progress=False)
    weights = json.loads((result.bundle_dir / "config.json").read_text())["training"]["class_weights"]
    assert weights == pytest.approx([1.0, 1.0, 1.0, 1.0])  # the synthetic classes are balanced


def test_cosine_schedule_warms_up_then_decays_to_zero(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(
        train={"max_epochs": 4, "early_stopping_patience": 4, "schedule": "cosine", "warmup_epochs": 1}
    )
    result = train_recipe(recipe, synthetic_root, tmp_path / "cosine", show_progress=False)
    rates = [row["learning_rate"] for row in result.history]
    peak = recipe.train.learning_rate
    # The rate logged after each epoch: the warm-up has reached the peak after epoch 1, then it only falls.
    assert rates[0] == pytest.approx(peak, rel=0.05)
    assert all(later < earlier for earlier, later in itertools.pairwise(rates))
    assert rates[-1] < 1e-3 * peak


def test_warmup_needs_the_cosine_schedule() -> None:
    from braintumor.config import RecipeError

    with pytest.raises((RecipeError, ValueError), match="warmup_epochs belongs to schedule: cosine"):
        tiny_recipe(train={"warmup_epochs": 2})
    # A run shorter than the warm-up (a one-epoch trial of a ViT recipe) is allowed: it only warms up.
    assert tiny_recipe(train={"schedule": "cosine", "warmup_epochs": 5, "max_epochs": 1}).train.warmup_epochs == 5
