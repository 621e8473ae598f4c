"""Streamed image sets: the same files, hashes and pixels as the in-memory ones, decoded batch by batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from braintumor.data.dataset import drop_exact_duplicates, load_images, scan_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, eval_transform
from braintumor.data.synthetic import make_synthetic_dataset
from braintumor.guard import model_outputs
from braintumor.guard.guard import head_outputs
from braintumor.models.network import BrainTumorNet, LinearHead


@pytest.fixture(scope="module")
def messy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic JPEGs plus a PNG, a byte-identical copy and a file that does not decode."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("messy"), per_class=5, test_per_class=1, size=40)
    training = root / "Training"
    first = sorted((training / "glioma_tumor").iterdir())[0]
    shutil.copy(first, training / "glioma_tumor" / "zz_copy.jpg")
    (training / "no_tumor" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    make_synthetic_dataset(root / "png", per_class=1, test_per_class=1, size=40, image_format="PNG")
    png = next((root / "png" / "Training" / "pituitary_tumor").iterdir())
    shutil.copy(png, training / "pituitary_tumor" / "a_png.png")
    return root


PREPS = [
    Preprocessing(image_size=24),
    Preprocessing(image_size=32, crop="head", intensity="window", interpolation="bicubic"),
]


@pytest.mark.parametrize("prep", PREPS)
@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_pixels_are_bitwise_the_decoded_ones(messy_root: Path, prep: Preprocessing, workers: int) -> None:
    samples = discover_split(messy_root, "Training")
    loaded = load_images(samples, prep, show_progress=False)
    scanned = scan_images(samples, prep, show_progress=False)
    assert scanned.streaming and not loaded.streaming
    assert (scanned.paths, scanned.hashes, scanned.skipped) == (loaded.paths, loaded.hashes, loaded.skipped)
    assert torch.equal(scanned.labels, loaded.labels)
    assert [Path(s.path).name for s in scanned.skipped] == ["broken.jpg"]
    streamed = torch.cat(list(scanned.batches(7, workers=workers)))
    assert loaded.images is not None and torch.equal(streamed, loaded.images)
    # Subsets and duplicate dropping keep the streamed set aligned with its files.
    kept, report = drop_exact_duplicates(scanned)
    kept_loaded, _ = drop_exact_duplicates(loaded)
    assert report.removed_copies == 1 and kept.paths == kept_loaded.paths
    picked = kept.subset(np.array([5, 0, 3]))
    assert torch.equal(torch.stack([picked.image(i) for i in range(3)]), kept_loaded.subset([5, 0, 3]).images)


def _tiny_net(size: int) -> BrainTumorNet:
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, 16))
    return BrainTumorNet(backbone, 16, LinearHead(16, dropout=0.0, num_classes=4), frozen_backbone=False)


def test_guard_inputs_of_a_streamed_set_match_the_in_memory_ones(messy_root: Path) -> None:
    prep = Preprocessing(image_size=24)
    samples = discover_split(messy_root, "Training")
    loaded, scanned = load_images(samples, prep, show_progress=False), scan_images(samples, prep, show_progress=False)
    net, normalise = _tiny_net(24), eval_transform(prep)
    assert loaded.images is not None
    expected = model_outputs(net, normalise, loaded.images, batch_size=8)
    streamed = model_outputs(net, normalise, scanned, batch_size=8)
    for name in ("features", "logits", "evidence"):
        assert torch.equal(getattr(streamed, name), getattr(expected, name)), name
    features = torch.randn(len(scanned), 16)
    from_features = head_outputs(net, features, scanned).evidence
    assert torch.equal(from_features, head_outputs(net, features, loaded.images).evidence)


def test_predictions_of_a_streamed_set_match_the_in_memory_ones(synthetic_root: Path, trained_run) -> None:
    from braintumor.bundle import load_bundle
    from braintumor.inference.predictor import Predictor

    bundle = load_bundle(trained_run.bundle_dir)
    samples = discover_split(synthetic_root, "Testing")
    loaded = load_images(samples, bundle.preprocessing, show_progress=False)
    scanned = scan_images(samples, bundle.preprocessing, show_progress=False)
    predictor = Predictor(bundle, batch_size=8)
    assert loaded.images is not None
    expected, expected_verdicts = predictor.run_uint8_checked(loaded.images)
    streamed, verdicts = predictor.run_uint8_checked(scanned)
    np.testing.assert_array_equal(streamed, expected)
    if expected_verdicts is not None:
        assert verdicts is not None
        np.testing.assert_array_equal(verdicts.ood_score, expected_verdicts.ood_score)
