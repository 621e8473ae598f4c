"""The input guard: detectors, image evidence, thresholds, the bundle round trip and the CLI fields."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from braintumor.bundle import load_bundle, read_bundle_config, write_bundle_config
from braintumor.classes import CLASS_NAMES
from braintumor.cli import app
from braintumor.data.synthetic import synthetic_image
from braintumor.guard import GUARD_FILE, GuardInputs, fit_guard
from braintumor.guard.defaults import DETECTOR_NAMES
from braintumor.guard.detectors import create_detector, detector_names
from braintumor.guard.evidence import EVIDENCE_NAMES, evidence_distance, image_evidence
from braintumor.inference.predictor import Predictor

runner = CliRunner()


def _blobs(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four Gaussian classes in 16 dimensions (features, labels, logits that point to the class)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centres = torch.eye(4, 16) * 6.0
    features = centres[labels] + torch.randn(n, 16, generator=generator) + shift
    return features, labels, features[:, :4]


def _inputs(features: torch.Tensor, logits: torch.Tensor, images: torch.Tensor | None = None) -> GuardInputs:
    images = images if images is not None else torch.full((len(features), 3, 16, 16), 30, dtype=torch.uint8)
    return GuardInputs(features, logits, image_evidence(images))


@pytest.mark.parametrize("name", DETECTOR_NAMES)
def test_each_detector_scores_far_inputs_higher(name: str) -> None:
    detector = create_detector(name)
    features, labels, logits = _blobs(400, seed=0)
    state = detector.fit(features, labels, logits)
    near, _, near_logits = _blobs(200, seed=1)
    # Far from every class: feature noise of another scale, logits without a clear class.
    generator = torch.Generator().manual_seed(2)
    far = torch.randn(200, 16, generator=generator) * 4 + 10
    far_logits = torch.zeros(200, 4)
    scores = torch.cat([detector.score(state, near, near_logits), detector.score(state, far, far_logits)])
    assert roc_auc_score([0] * 200 + [1] * 200, scores.numpy()) > 0.95
    assert all(isinstance(value, torch.Tensor) for value in state.values())  # safetensors-storable, no objects


def test_the_light_detector_list_matches_the_registry() -> None:
    assert tuple(detector_names()) == DETECTOR_NAMES
    with pytest.raises(Exception, match="choose one of"):
        create_detector("isolation-forest")


def test_image_evidence_tells_grey_slices_from_colour_and_blank_images() -> None:
    rng = np.random.default_rng(0)
    slices = torch.stack([torch.from_numpy(np.array(synthetic_image("glioma", 32, rng))).permute(2, 0, 1)])
    colour = torch.from_numpy(rng.integers(0, 256, (1, 3, 32, 32), dtype=np.uint8))
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    stats = {name: image_evidence(batch)[0] for name, batch in [("mri", slices), ("colour", colour), ("white", white)]}
    index = {name: i for i, name in enumerate(EVIDENCE_NAMES)}
    assert stats["mri"][index["colourfulness"]] < 0.02 < stats["colour"][index["colourfulness"]]
    assert stats["mri"][index["dark_fraction"]] > 0.3 and stats["white"][index["dark_fraction"]] == 0
    assert stats["white"][index["grey_std"]] == 0 and stats["white"][index["border_grey"]] == 1
    low, high = image_evidence(slices)[0], image_evidence(slices)[0]
    assert float(evidence_distance(image_evidence(white), low, high)[0]) > 1


def test_thresholds_flag_about_the_chosen_share_of_validation() -> None:
    features, labels, logits = _blobs(2000, seed=0)
    val_features, _, val_logits = _blobs(1000, seed=1)
    guard = fit_guard(_inputs(features, logits), labels, _inputs(val_features, val_logits), quantile=0.95)
    spec = guard.spec
    assert (spec.n_train, spec.n_val, spec.detector) == (2000, 1000, "mahalanobis")
    assert spec.feature_threshold > spec.feature_median
    assert 0.03 <= spec.validation_flag_rate <= 0.07  # the 0.95 quantile of the same validation scores
    fresh, _, fresh_logits = _blobs(1000, seed=3)
    assert float(guard.score(_inputs(fresh, fresh_logits)).flagged.float().mean()) < 0.1
    shifted, _, shifted_logits = _blobs(200, seed=4, shift=5.0)
    assert float(guard.score(_inputs(shifted, shifted_logits)).flagged.float().mean()) > 0.9


def _test_images(root: Path) -> list[Path]:
    return sorted((root / "Testing").rglob("*.jpg"))


def _not_mri_images(folder: Path) -> list[Path]:
    """A colour photo-like gradient, colour noise, a blank white image and 16-bit grey noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, 96, dtype=np.float64)
    gradient = np.stack([*np.meshgrid(x, x[::-1]), np.full((96, 96), 128.0)], axis=-1).astype(np.uint8)
    images = {
        "gradient.jpg": Image.fromarray(gradient),
        "colour-noise.png": Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)),
        "white.png": Image.new("RGB", (96, 96), (255, 255, 255)),
        "grey16.png": Image.fromarray(rng.integers(0, 65535, (96, 96)).astype(np.uint16)),
    }
    for name, image in images.items():
        image.save(folder / name)
    return [folder / name for name in images]


def test_a_trained_bundle_carries_a_guard_that_flags_non_mri_inputs(trained_run, synthetic_root: Path, tmp_path):
    bundle = load_bundle(trained_run.bundle_dir)
    assert bundle.guard is not None and (trained_run.bundle_dir / GUARD_FILE).is_file()
    assert bundle.config.extras.guard is not None and "ood_score" in bundle.config.extras.guard.definition
    predictor = Predictor(bundle)
    flagged, _ = predictor.predict_paths(_not_mri_images(tmp_path / "odd"))
    assert [p.out_of_distribution for p in flagged] == [True] * 4
    assert all(p.ood_score is not None and p.ood_score > 1 for p in flagged)
    accepted, _ = predictor.predict_paths(_test_images(synthetic_root))
    assert np.mean([p.out_of_distribution for p in accepted]) <= 0.25  # synthetic test slices look like training


def test_the_guard_round_trips_through_safetensors_and_tta_keeps_it(trained_run, synthetic_root: Path) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    with (trained_run.bundle_dir / GUARD_FILE).open("rb") as handle:
        assert b"pickle" not in handle.read(4096)  # a safetensors header, never a pickle
    images = _test_images(synthetic_root)[:6]
    plain = [p.ood_score for p in Predictor(bundle).predict_paths(images)[0]]
    again = [p.ood_score for p in Predictor(load_bundle(trained_run.bundle_dir)).predict_paths(images)[0]]
    with_tta = [p.ood_score for p in Predictor(bundle, tta=True).predict_paths(images)[0]]
    assert plain == again == with_tta  # the guard judges the image as sent, not the augmented views


def _without_guard(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    (target / GUARD_FILE).unlink()
    config = read_bundle_config(target)
    config.extras.guard = None
    write_bundle_config(target, config)
    return target


def test_predict_json_csv_and_table_carry_the_guard_fields(trained_run, tmp_path: Path) -> None:
    odd = _not_mri_images(tmp_path / "odd")
    json_out, csv_out = tmp_path / "p.json", tmp_path / "p.csv"
    args = ["predict", str(trained_run.bundle_dir), *map(str, odd), "--json", str(json_out), "--csv", str(csv_out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4 of 4 images flagged" in result.output and "unlike the training images" in result.output
    payload = json.loads(json_out.read_text())
    assert payload["guard"]["detector"] == "mahalanobis"
    assert all(p["out_of_distribution"] is True and p["ood_score"] > 1 for p in payload["predictions"])
    assert all(p["flag_reason"].startswith("not an MRI slice: ") for p in payload["predictions"])
    rows = list(csv.DictReader(csv_out.open()))
    assert [row["out_of_distribution"] for row in rows] == ["1"] * 4 and all(float(r["ood_score"]) > 1 for r in rows)


def test_an_old_bundle_says_guard_none_and_braintumor_guard_adds_one(trained_run, synthetic_root, tmp_path) -> None:
    old = _without_guard(trained_run.bundle_dir, tmp_path / "old")
    json_out = tmp_path / "old.json"
    image = str(_test_images(synthetic_root)[0])
    result = runner.invoke(app, ["predict", str(old), image, "--json", str(json_out)])
    assert result.exit_code == 0 and "guard: none" in result.output
    prediction = json.loads(json_out.read_text())
    assert prediction["guard"] == "none" and prediction["predictions"][0]["out_of_distribution"] is None

    fitted = runner.invoke(app, ["guard", str(old), "--data", str(synthetic_root), "--quiet"])
    assert fitted.exit_code == 0, fitted.output
    assert "validation images" in fitted.output and (old / GUARD_FILE).is_file()
    guard = load_bundle(old).guard
    assert guard is not None and guard.spec.n_val == len(read_bundle_config(old).training.val_paths)
    original = load_bundle(trained_run.bundle_dir).guard
    assert original is not None and guard.spec.feature_threshold == pytest.approx(original.spec.feature_threshold)


def test_guard_refuses_other_data_and_unknown_detectors(trained_run, tmp_path: Path) -> None:
    from braintumor.data.synthetic import make_synthetic_dataset

    other = make_synthetic_dataset(tmp_path / "other", per_class=10, test_per_class=2, size=48, seed=7)
    old = _without_guard(trained_run.bundle_dir, tmp_path / "old")
    result = runner.invoke(app, ["guard", str(old), "--data", str(other), "--quiet"])
    assert result.exit_code == 2 and "validation split" in result.output
    result = runner.invoke(app, ["guard", str(old), "--detector", "nope", "--quiet"])
    assert result.exit_code == 2 and "choose one of" in result.output
    assert CLASS_NAMES  # the class order the guard's labels follow
