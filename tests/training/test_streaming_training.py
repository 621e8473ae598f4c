"""Training from streamed images: the same features and weights as from images held in memory; on-disk caches."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from braintumor.bundle import load_bundle
from braintumor.config import AugmentConfig
from braintumor.data.dataset import load_images, scan_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, eval_transform, train_transform
from braintumor.models import create_model, resolve_preprocessing
from braintumor.training import steps
from braintumor.training.feature_cache import DONE_FILE, FEATURE_CACHE_FILE, cached_features, feature_cache_dir
from braintumor.training.features import build_view_features
from braintumor.training.fitting import FitContext, RunOptions
from braintumor.workflows.train import train_recipe
from tests.conftest import tiny_recipe
from tests.training.test_cached_stage import TINY_LITE

AUGMENT = AugmentConfig(crop_scale=0.7, horizontal_flip=True, gamma=(0.7, 1.4), contrast=0.2, rotation_degrees=10)


def _backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()
    ).eval()


def test_streamed_views_are_bitwise_the_in_memory_ones(synthetic_root: Path) -> None:
    prep = Preprocessing(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    samples = discover_split(synthetic_root, "Training")[:24]
    run = {"views": 3, "seed": 7, "show_progress": False, "channels_last": False}
    clean, augmented = eval_transform(prep), train_transform(AUGMENT, prep)
    loaded = load_images(samples, prep, show_progress=False)
    random.seed(0)  # RandomGamma draws from Python's generator (a training run seeds it with the others)
    expected = build_view_features(_backbone(), loaded, clean, augmented, **run)
    scanned = scan_images(samples, prep, show_progress=False)
    random.seed(0)
    streamed = build_view_features(_backbone(), scanned, clean, augmented, **run)
    assert expected.shape == (3, 24, 16)
    assert torch.equal(streamed, expected)


def _state(bundle_dir: Path) -> dict[str, torch.Tensor]:
    return load_bundle(bundle_dir).model.state_dict()


def test_training_on_streamed_images_gives_the_in_memory_weights(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The image path with augmentation and dropout: decoded in a loader worker when streamed, in memory otherwise.
    recipe = tiny_recipe(augment={"enabled": True, "crop_scale": 0.8}, train={"max_epochs": 2})
    options = RunOptions(tracker="none", export_onnx=False, show_progress=False)
    streamed = train_recipe(recipe, synthetic_root, tmp_path / "streamed", options=options)
    monkeypatch.setattr(steps, "scan_images", load_images)
    in_memory = train_recipe(recipe, synthetic_root, tmp_path / "memory", options=options)
    assert streamed is not None and in_memory is not None
    expected, actual = _state(in_memory.bundle_dir), _state(streamed.bundle_dir)
    assert actual.keys() == expected.keys() and all(torch.equal(value, expected[key]) for key, value in actual.items())


def _context(synthetic_root: Path, run_dir: Path, budget_mb: float) -> FitContext:
    recipe = tiny_recipe(
        model={**TINY_LITE, "freeze_backbone": True, "head": "linear"},
        augment={"enabled": True, "horizontal_flip": True},
        train={"cache_views": 2, "precision": "32"},
    )
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    image_set = scan_images(discover_split(synthetic_root, "Training")[:20], prep, show_progress=False)
    options = RunOptions(tracker="none", show_progress=False, cache_memory_mb=budget_mb)
    run_dir.mkdir(parents=True)
    return FitContext(
        recipe, prep, image_set.subset(range(14)), image_set.subset(range(14, 20)), run_dir, options,
        None, None, None, False, None, print,  # type: ignore[arg-type]
    )  # fmt: skip


def test_features_over_the_memory_budget_go_to_disk_and_are_reused(synthetic_root: Path, tmp_path: Path) -> None:
    in_memory = _context(synthetic_root, tmp_path / "memory", budget_mb=512)
    model = create_model(in_memory.recipe)
    train, val, reused = cached_features(model, in_memory)
    assert not reused and (in_memory.run_dir / FEATURE_CACHE_FILE).is_file()

    on_disk = _context(synthetic_root, tmp_path / "disk", budget_mb=0)
    disk_train, disk_val, reused = cached_features(model, on_disk)
    folders = list(feature_cache_dir(on_disk).iterdir())
    assert not reused and len(folders) == 1 and (folders[0] / DONE_FILE).is_file()
    assert not (on_disk.run_dir / FEATURE_CACHE_FILE).exists()
    assert torch.equal(disk_train, train) and torch.equal(disk_val, val)
    # A resumed run reads them back (memory-mapped) instead of running the backbone again.
    again_train, again_val, reused = cached_features(model, on_disk)
    assert reused and torch.equal(again_train, train) and torch.equal(again_val, val)
    # Half-written arrays (no marker) are computed again.
    (folders[0] / DONE_FILE).unlink()
    assert not cached_features(model, on_disk)[2]
