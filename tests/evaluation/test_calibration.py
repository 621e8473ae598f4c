"""Temperature scaling, referral thresholds, bootstrap intervals and what evaluate/calibrate write."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, log_loss, roc_auc_score
from typer.testing import CliRunner

from braintumor.bundle import load_bundle, read_bundle_config, save_bundle, write_bundle_config
from braintumor.bundle.validation import validation_samples
from braintumor.classes import CLASS_NAMES
from braintumor.cli import app
from braintumor.errors import BrainTumorError
from braintumor.evaluation.calibration import (
    calibration_scores,
    fit_temperature,
    selective_metrics,
    threshold_for_coverage,
)
from braintumor.evaluation.evaluate import evaluate_bundle
from braintumor.evaluation.metrics import bootstrap_confidence_intervals, one_vs_rest_metrics
from braintumor.inference.predictor import Predictor, probabilities_from_logits
from braintumor.workflows.calibrate import calibrate_bundle


def _overconfident_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 4-class 'model' that is right 70% of the time and always gives its answer ~99.9% probability."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    guesses = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 4, n))
    logits = rng.normal(0, 0.5, (n, 4))
    logits[np.arange(n), guesses] += 8.0
    return logits, labels


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_model() -> None:
    val_logits, val_labels = _overconfident_logits(400, seed=0)
    temperature = fit_temperature(val_logits, val_labels)
    assert temperature > 2.0

    def nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
        probabilities = probabilities_from_logits(logits, t).astype(np.float64)
        return log_loss(labels, probabilities / probabilities.sum(axis=1, keepdims=True), labels=list(range(4)))

    assert nll(val_logits, val_labels, temperature) < 0.6 * nll(val_logits, val_labels, 1.0)
    # It is the minimum: a little hotter or colder is worse on the split it was fitted on.
    assert nll(val_logits, val_labels, temperature) <= min(
        nll(val_logits, val_labels, temperature * 0.9), nll(val_logits, val_labels, temperature * 1.1)
    )
    # And it carries over to fresh images from the same model.
    test_logits, test_labels = _overconfident_logits(400, seed=1)
    assert nll(test_logits, test_labels, temperature) < nll(test_logits, test_labels, 1.0)
    before = calibration_scores(probabilities_from_logits(test_logits), test_labels)
    after = calibration_scores(probabilities_from_logits(test_logits, temperature), test_labels)
    assert after["accuracy"] == before["accuracy"]  # temperature never changes the predicted class
    assert after["ece"] < before["ece"] and after["brier"] < before["brier"]


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_gives_the_target_coverage_on_the_split_it_was_chosen_on(target: float) -> None:
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(4), size=417)
    labels = rng.integers(0, 4, 417)
    threshold = threshold_for_coverage(probabilities, target)
    selective = selective_metrics(probabilities, labels, threshold)
    assert target <= selective["coverage"] <= target + 1 / 417
    assert selective["n_answered"] + selective["n_referred"] == 417
    assert selective["n_answered"] == int((probabilities.max(axis=1) >= threshold).sum())


def test_threshold_with_tied_confidences_never_answers_less_than_the_target() -> None:
    probabilities = np.array([[0.9, 0.1]] * 3 + [[0.7, 0.3]] * 3 + [[0.6, 0.4]] * 4)
    threshold = threshold_for_coverage(probabilities, 0.5)
    assert threshold == 0.7
    assert selective_metrics(probabilities, np.zeros(10, dtype=int), threshold)["coverage"] == 0.6
    with pytest.raises(ValueError, match="coverage"):
        threshold_for_coverage(probabilities, 0.0)


def test_bootstrap_interval_contains_the_point_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, 120)
    predicted = np.where(rng.random(120) < 0.75, labels, rng.integers(0, 4, 120))
    small = bootstrap_confidence_intervals(labels, predicted, 4, seed=0, class_names=list(CLASS_NAMES))
    assert small["accuracy"]["value"] == pytest.approx(np.mean(labels == predicted))
    assert small["macro_f1"]["value"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    for interval in [small["accuracy"], small["macro_f1"], *small["recall"].values()]:
        assert interval["low"] <= interval["value"] <= interval["high"]
    assert small["accuracy"]["high"] - small["accuracy"]["low"] > 0.05

    large = bootstrap_confidence_intervals(np.tile(labels, 9), np.tile(predicted, 9), 4, seed=0)
    assert large["accuracy"]["value"] == pytest.approx(small["accuracy"]["value"])
    for key in ("accuracy", "macro_f1"):
        small_width = small[key]["high"] - small[key]["low"]
        large_width = large[key]["high"] - large[key]["low"]
        assert large_width < 0.5 * small_width  # 9x the images: about a third of the width
    assert bootstrap_confidence_intervals(labels, predicted, 4, seed=0) == bootstrap_confidence_intervals(
        labels, predicted, 4, seed=0
    )


def test_one_vs_rest_sensitivity_specificity_and_auc() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]]
    )
    result = one_vs_rest_metrics(labels, probabilities, ["a", "b", "c"])
    # Class b: predicted for images 1, 2, 3; true for 2, 3 -> sensitivity 2/2, specificity 3/4.
    assert result["b"]["sensitivity"] == 1.0 and result["b"]["specificity"] == 0.75
    # Class a: predicted for 0 and 5; true for 0 and 1 -> sensitivity 1/2, specificity 3/4.
    assert result["a"]["sensitivity"] == 0.5 and result["a"]["specificity"] == 0.75
    assert result["c"]["roc_auc"] == pytest.approx(roc_auc_score(labels == 2, probabilities[:, 2]))
    assert one_vs_rest_metrics(np.array([0, 0]), probabilities[:2], ["a", "b", "c"])["b"]["roc_auc"] is None


@pytest.fixture
def overconfident_bundle(trained_run, tmp_path: Path) -> Path:
    """The tiny trained bundle made deliberately over-confident: glioma and meningioma outputs swapped
    (half its answers confidently wrong) and every logit multiplied by 3."""
    bundle = load_bundle(trained_run.bundle_dir)
    final = [m for m in bundle.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        final.weight[[0, 1]] = final.weight[[1, 0]].clone()
        final.bias[[0, 1]] = final.bias[[1, 0]].clone()
        final.weight.mul_(3.0)
        final.bias.mul_(3.0)
    return save_bundle(
        tmp_path / "bundle", bundle.model, bundle.recipe, bundle.preprocessing, training=bundle.config.training
    )


def test_calibrate_fits_on_validation_and_evaluate_reports_it(
    overconfident_bundle: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    result = calibrate_bundle(overconfident_bundle, synthetic_root, tmp_path / "cal", target_coverage=0.75)
    record = result.record
    assert record["n_images"] == len(load_bundle(overconfident_bundle).config.training.val_paths)
    assert record["after"]["log_loss"] < record["before"]["log_loss"]
    assert result.temperature > 1.5
    assert record["after"]["accuracy"] == record["before"]["accuracy"] < 1.0
    assert record["after"]["ece"] < record["before"]["ece"]
    assert 0.75 <= record["validation_selective"]["coverage"] <= 0.75 + 1 / record["n_images"]
    assert all(path.is_file() and path.stat().st_size > 0 for path in result.files)
    # Only Training files were read.
    assert all("Training" in str(s.path) for s in validation_samples(load_bundle(overconfident_bundle)))

    bundle = load_bundle(overconfident_bundle)
    extras = bundle.config.extras.model_dump()
    assert extras["temperature"] == result.temperature and extras["refer_threshold"] == result.refer_threshold
    assert extras["calibration"]["before"] == record["before"]
    predictor = Predictor(bundle)
    assert (predictor.temperature, predictor.refer_threshold) == (result.temperature, result.refer_threshold)

    out = tmp_path / "eval"
    evaluation = evaluate_bundle(bundle, synthetic_root, "Testing", out, show_progress=False, n_bootstrap=200)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == result.temperature
    assert metrics["calibration"]["uncalibrated"]["log_loss"] > metrics["calibration"]["log_loss"]
    ci = metrics["confidence_intervals"]
    assert ci["accuracy"]["low"] <= metrics["accuracy"] <= ci["accuracy"]["high"]
    assert set(metrics["one_vs_rest"]["glioma"]) == {"sensitivity", "specificity", "roc_auc"}
    assert metrics["one_vs_rest"]["glioma"]["sensitivity"] == metrics["per_class"]["glioma"]["recall"]
    confident = evaluation.probabilities.max(axis=1) >= result.refer_threshold
    assert metrics["selective"]["n_answered"] == int(confident.sum())
    with (out / "predictions.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["referred"]) for row in rows] == [int(not c) for c in confident]
    assert (out / "risk_coverage.png").stat().st_size > 0 and (out / "reliability.png").stat().st_size > 0


def test_calibrate_command_and_referral_in_predict(
    overconfident_bundle: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    run = runner.invoke(
        app, ["calibrate", str(overconfident_bundle), "--data", str(synthetic_root), "--target-coverage", "0.5", "-q"]
    )
    assert run.exit_code == 0, run.output
    assert "referral threshold" in run.output and "ECE" in run.output
    threshold = load_bundle(overconfident_bundle).config.extras.refer_threshold

    csv_path = tmp_path / "p.csv"
    images = synthetic_root / "Testing"
    run = runner.invoke(app, ["predict", str(overconfident_bundle), str(images), "--csv", str(csv_path)])
    assert run.exit_code == 0, run.output
    with csv_path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["referred"]) for row in rows] == [int(float(row["confidence"]) < threshold) for row in rows]
    referred = sum(row["referred"] == "1" for row in rows)
    assert f"{referred} of {len(rows)} images below the confidence threshold" in run.output
    assert "refer to a radiologist" in run.output


def test_calibrate_explains_what_is_missing(trained_run, synthetic_root: Path, tmp_path: Path) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    no_record = save_bundle(tmp_path / "b", bundle.model, bundle.recipe, bundle.preprocessing)
    with pytest.raises(BrainTumorError, match="val_paths"):
        calibrate_bundle(no_record, synthetic_root, tmp_path / "c", show_progress=False)
    run = CliRunner().invoke(app, ["calibrate", str(no_record), "--data", str(synthetic_root), "-q"])
    assert run.exit_code == 2 and "records no validation files" in " ".join(run.output.split())
    moved = tmp_path / "moved"
    shutil.copytree(synthetic_root, moved)
    # The recorded paths are re-rooted under --data, so a moved data folder still works.
    assert all(str(s.path).startswith(str(moved)) for s in validation_samples(bundle, moved))
    with pytest.raises(BrainTumorError, match="does not exist"):
        validation_samples(bundle, tmp_path / "nowhere")


def test_calibrate_refits_the_input_guard_on_request(trained_run, synthetic_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(trained_run.bundle_dir, copy)
    config = read_bundle_config(copy)
    config.extras.guard = None  # as a bundle trained before the input guard
    write_bundle_config(copy, config)
    runner = CliRunner()
    run = runner.invoke(app, ["calibrate", str(copy), "--data", str(synthetic_root), "--no-guard", "-q"])
    assert run.exit_code == 0, run.output
    assert "has no input guard: add one with --guard" in " ".join(run.output.split())
    assert load_bundle(copy).guard is None
    run = runner.invoke(app, ["calibrate", str(copy), "--data", str(synthetic_root), "--guard", "-q"])
    assert run.exit_code == 0, run.output
    bundle = load_bundle(copy)
    assert bundle.guard is not None and bundle.config.extras.temperature is not None  # calibration kept
    spec = bundle.guard.spec
    assert f"input guard refitted ({spec.detector} + image evidence): {spec.validation_flag_rate:.1%} of" in " ".join(
        run.output.split()
    )
    assert spec.n_val == len(bundle.config.training.val_paths)
