"""The input guard in evaluate and the report: metrics.json["guard"], the predictions columns, the CLI line."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from braintumor.bundle import load_bundle, read_bundle_config, write_bundle_config
from braintumor.cli import app
from braintumor.data.dataset import load_images
from braintumor.data.layout import discover_split
from braintumor.evaluation.evaluate import NO_GUARD, EvaluationResult, evaluate_bundle
from braintumor.evaluation.metrics import classification_metrics
from braintumor.evaluation.report import build_report
from braintumor.evaluation.report_data import validation_ood_scores
from braintumor.inference.predictor import Predictor

N_NOISE = 3  # colour-noise images added to one class of Testing: nothing like a brain MRI


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def noisy_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic Testing split plus a few colour-noise JPEGs filed as glioma."""
    root = tmp_path_factory.mktemp("noisy")
    shutil.copytree(synthetic_root / "Testing", root / "Testing")
    rng = np.random.default_rng(0)
    for index in range(N_NOISE):
        noise = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "Testing" / "glioma_tumor" / f"noise_{index}.jpg")
    return root


@pytest.fixture(scope="module")
def unguarded_bundle(trained_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained bundle as one trained before the input guard (no extras.guard)."""
    copy = tmp_path_factory.mktemp("unguarded") / "bundle"
    shutil.copytree(trained_run.bundle_dir, copy)
    config = read_bundle_config(copy)
    config.extras.guard = None
    write_bundle_config(copy, config)
    (copy / "guard.safetensors").unlink(missing_ok=True)
    return copy


@pytest.fixture(scope="module")
def guarded(trained_run, noisy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> EvaluationResult:
    return evaluate_bundle(
        trained_run.bundle_dir,
        noisy_root,
        "Testing",
        tmp_path_factory.mktemp("eval"),
        show_progress=False,
        n_bootstrap=50,
    )


@pytest.fixture(scope="module")
def unguarded(unguarded_bundle: Path, noisy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> EvaluationResult:
    return evaluate_bundle(
        unguarded_bundle, noisy_root, "Testing", tmp_path_factory.mktemp("eval"), show_progress=False, n_bootstrap=50
    )


def test_metrics_json_guard_section_is_consistent(guarded: EvaluationResult, trained_run) -> None:
    metrics = json.loads((guarded.out_dir / "metrics.json").read_text())
    guard = metrics["guard"]
    n = metrics["n_images"]
    assert guard["n_images"] == n == len(guarded.labels) == 32 + N_NOISE
    assert guard["n_flagged"] + guard["n_accepted"] == n
    assert guard["n_flagged"] == sum(c["n_flagged"] for c in guard["per_class"].values()) >= N_NOISE
    assert guard["flagged_share"] == pytest.approx(guard["n_flagged"] / n)
    for name, share in guard["per_class"].items():
        assert share["n_images"] == metrics["per_class"][name]["support"]
        assert share["flagged_share"] == pytest.approx(share["n_flagged"] / share["n_images"])
    assert guard["per_class"]["glioma"]["n_flagged"] >= N_NOISE
    spec = load_bundle(trained_run.bundle_dir).guard.spec
    assert (guard["detector"], guard["validation_flag_rate"], guard["threshold"]) == (
        spec.detector,
        spec.validation_flag_rate,
        1.0,
    )
    # The accepted images' metrics are classification_metrics of the images the guard did not flag.
    accepted = guarded.ood_scores <= 1.0
    assert guard["n_accepted"] == int(accepted.sum())
    expected = classification_metrics(
        guarded.labels[accepted], guarded.probabilities[accepted], load_bundle(trained_run.bundle_dir).class_names
    )
    assert guard["accepted"] == json.loads(json.dumps(expected))
    assert guard["all_images"]["accuracy"] == metrics["accuracy"] and guard["all_images"]["n_images"] == n
    assert guard["ood_score"]["max"] == pytest.approx(float(guarded.ood_scores.max()), rel=1e-5)


def test_ood_scores_come_with_the_predictions(guarded: EvaluationResult, trained_run, noisy_root: Path) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    images = load_images(discover_split(noisy_root, "Testing"), bundle.preprocessing, show_progress=False).images
    probabilities, scores = Predictor(bundle).predict_uint8_guarded(images)
    np.testing.assert_allclose(guarded.ood_scores, scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(guarded.probabilities, probabilities, atol=1e-6)
    rows = _rows(guarded.out_dir / "predictions.csv")
    assert [float(row["ood_score"]) for row in rows] == pytest.approx(scores.tolist(), abs=1e-4)
    assert [int(row["out_of_distribution"]) for row in rows] == [int(s > 1.0) for s in scores]
    noise = [row for row in rows if Path(row["path"]).name.startswith("noise_")]
    assert len(noise) == N_NOISE and all(row["out_of_distribution"] == "1" for row in noise)
    # A flagged image has no diagnosis: no predicted class, the verdict and its reason.
    for row in rows:
        flagged = row["flagged"] == "1"
        assert row["out_of_distribution"] == row["flagged"] and (row["predicted_class"] == "") is flagged
        assert bool(row["flag_reason"]) is flagged  # the guard's words: what it saw in the image


def test_a_bundle_without_guard_says_none_and_keeps_every_other_metric(
    guarded: EvaluationResult, unguarded: EvaluationResult
) -> None:
    metrics = json.loads((unguarded.out_dir / "metrics.json").read_text())
    assert metrics["guard"] == NO_GUARD == "none" and unguarded.ood_scores is None
    unguarded_rows = _rows(unguarded.out_dir / "predictions.csv")
    assert not {"flagged", "flag_reason", "out_of_distribution", "ood_score"} & set(unguarded_rows[0])
    assert all(row["predicted_class"] for row in unguarded_rows)
    with_guard = json.loads((guarded.out_dir / "metrics.json").read_text())
    # Same model, same images: everything but the guard section (and the bundle's path) is unchanged.
    for values in (metrics, with_guard):
        values.pop("guard"), values.pop("bundle")
    assert metrics == with_guard


def test_evaluate_command_prints_the_guard_line(
    trained_run, unguarded_bundle: Path, noisy_root: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    run = runner.invoke(
        app, ["evaluate", str(trained_run.bundle_dir), "--data", str(noisy_root), "--out", str(tmp_path / "a"), "-q"]
    )
    assert run.exit_code == 0, run.output
    guard = json.loads((tmp_path / "a" / "metrics.json").read_text())["guard"]
    line = (
        f"input guard: {guard['n_flagged']} of {guard['n_images']} images ({guard['flagged_share']:.1%}) flagged; "
        f"accuracy on the accepted images {guard['accepted']['accuracy']:.2%}"
    )
    assert line in _flat(run.output)
    run = runner.invoke(
        app, ["evaluate", str(unguarded_bundle), "--data", str(noisy_root), "--out", str(tmp_path / "b"), "-q"]
    )
    assert run.exit_code == 0, run.output
    assert "guard: none (bundle trained before the input guard; add one with `braintumor guard" in _flat(run.output)


def test_report_has_the_guard_section(guarded: EvaluationResult, trained_run) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    html = build_report(guarded, bundle, n_bootstrap=50, sanity_images=2).read_text(encoding="utf-8")
    assert 'id="guard"' in html and "Input guard scores" in html
    assert "validation (from Training)" in html and "accepted images (not flagged)" in html
    n_flagged = int((guarded.ood_scores > 1.0).sum())
    assert html.count('alt="flagged image, ood_score') == min(n_flagged, 8)
    assert "noise_" in html
    # The model card: the guard replaces the "cannot say none of these" sentence.
    assert "An input guard (mahalanobis" in html and "cannot say &#39;none of these&#39;" not in html
    assert f"flag {bundle.guard.spec.validation_flag_rate:.1%} of the {bundle.guard.spec.n_val} validation" in html


def test_report_of_a_bundle_without_guard_says_so(unguarded: EvaluationResult, unguarded_bundle: Path) -> None:
    html = build_report(unguarded, unguarded_bundle, n_bootstrap=50, sanity_images=2).read_text(encoding="utf-8")
    assert 'id="guard"' in html and "The bundle has no input guard" in html
    assert "Input guard scores" not in html and "cannot say &#39;none of these&#39;" in html


def test_validation_scores_need_the_recorded_files(trained_run, tmp_path: Path) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    scores, problem = validation_ood_scores(bundle)
    assert problem is None and scores is not None and len(scores) == len(bundle.config.training.val_paths)
    # Validation quantile thresholds: about (1 - quantile) of each component flagged, as recorded at fitting.
    assert float((scores > 1.0).mean()) == pytest.approx(bundle.guard.spec.validation_flag_rate, abs=1e-6)
    bundle.config.training.val_paths = [str(tmp_path / "gone" / "glioma_tumor" / "x.jpg")]
    scores, problem = validation_ood_scores(bundle, tmp_path / "nowhere")
    assert scores is None and "does not exist" in problem
