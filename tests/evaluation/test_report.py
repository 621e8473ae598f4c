"""The self-contained evaluation report: content, inline images, optional sections, and a real browser."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from braintumor.bundle import BundleExtras, load_bundle
from braintumor.cli import app
from braintumor.evaluation.calibration import risk_coverage
from braintumor.evaluation.evaluate import evaluate_bundle
from braintumor.evaluation.metrics import PER_CLASS_STATISTICS, bootstrap_confidence_intervals, classification_metrics
from braintumor.evaluation.report import build_report
from braintumor.evaluation.report_figures import uncalibrated

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def cli_report(trained_run, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``braintumor evaluate --report`` on the synthetic Testing split."""
    out = tmp_path_factory.mktemp("eval") / "eval-Testing"
    result = CliRunner().invoke(
        app,
        ["evaluate", str(trained_run.bundle_dir), "--data", str(synthetic_root), "--out", str(out), "--report", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    return out / "report.html"


def _inline_images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def test_report_is_one_self_contained_file(cli_report: Path) -> None:
    html = cli_report.read_text(encoding="utf-8")
    sources = _inline_images(html)
    # Confusion matrix, ROC, input guard scores, training curves, deletion curves, two Grad-CAM overlays per
    # shown mistake and a thumbnail per shown image the input guard flagged.
    with (cli_report.parent / "predictions.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # Flagged images have no diagnosis: the mistakes gallery leaves them out (they are in the guard section).
    n_wrong = sum(1 for row in rows if row["correct"] == "0" and row["flagged"] == "0")
    n_flagged = sum(1 for row in rows if row["flagged"] == "1")
    assert len(sources) == 5 + 2 * min(n_wrong, 8) + min(n_flagged, 8)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            image.verify()
    # Offline: nothing is fetched from anywhere and nothing runs.
    assert not re.search(r'(src|href)="(https?:|//|file:)', html)
    assert "<script" not in html.lower() and "<link" not in html.lower()


def test_report_content(cli_report: Path, trained_run) -> None:
    html = cli_report.read_text(encoding="utf-8")
    for text in (
        "Model card",
        "not a medical device",
        "Intended use",
        "Known leakage",
        "no audit run",
        "Confusion matrix",
        "ROC",
        "Training curves",
        "Most confident mistakes",
        "model randomisation test",
        "deletion curve",
        "95% percentile bootstrap",
        "not calibrated",
        "no risk-coverage curve",
        "Input guard (out-of-distribution inputs)",
        "Input guard scores",
        "An input guard",
        "timm",
        "torch",
        "captum",
        "tiny-cnn",
    ):
        assert text in html, text
    metrics = json.loads((cli_report.parent / "metrics.json").read_text())
    assert f"{metrics['accuracy']:.1%}" in html
    # The report shows the same intervals as metrics.json and the terminal.
    accuracy = metrics["confidence_intervals"]["accuracy"]
    assert f"{accuracy['value']:.1%} [{accuracy['low']:.1%}, {accuracy['high']:.1%}]" in html
    sanity = json.loads((cli_report.parent / "sanity.json").read_text())
    for method in ("gradcam", "gradcam++"):
        rho = sanity["methods"][method]["randomisation"]["mean_abs_rank_correlation"]
        assert f"{rho:.3f}" in html


def test_report_with_calibration_selective_prediction_and_audit(
    trained_run, synthetic_root: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    extras = BundleExtras.model_validate({"temperature": 1.7, "refer_threshold": {"threshold": 0.5}})
    calibrated = replace(bundle, config=bundle.config.model_copy(update={"extras": extras}))
    result = evaluate_bundle(calibrated, synthetic_root, "Testing", tmp_path / "eval", show_progress=False)
    # As braintumor.evaluation.deduplicated.deduplicated_metrics writes it, for an audit that dropped every third image.
    mask = np.array([bool(i % 3) for i in range(len(result.paths))])
    dedup = classification_metrics(result.labels[mask], result.probabilities[mask], bundle.class_names)
    excluded = [str(p) for p, keep in zip(result.paths, mask, strict=True) if not keep]
    result.metrics["deduplicated"] = {
        **dedup,
        "audit": "audits/synthetic/audit.json",
        "excluded_exact_copies": 4,
        "excluded_near_copies": len(excluded) - 4,
        "excluded_paths": excluded,
    }
    path = build_report(result, calibrated, tmp_path / "custom" / "report.html", n_bootstrap=200, sanity_images=4)
    html = path.read_text(encoding="utf-8")
    assert "Reliability diagram" in html and "T = 1.7" in html and "ECE" in html
    assert "Risk-coverage" in html and "referral threshold 0.500" in html
    assert "no audit run" not in html
    assert f"{dedup['accuracy']:.1%} [" in html  # deduplicated accuracy with its interval
    kept_text = f"({int(mask.sum())} of {len(mask)} images kept"
    assert f"4 byte-identical and {len(excluded) - 4} near copies left out {kept_text}" in html


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_data() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    predicted = np.where(rng.random(400) < 0.8, labels, rng.integers(0, 4, 400))
    # The per-class statistics the report shows, from the implementation metrics.json uses.
    wide = bootstrap_confidence_intervals(
        labels[:50], predicted[:50], 4, n_resamples=300, per_class=PER_CLASS_STATISTICS
    )
    narrow = bootstrap_confidence_intervals(labels, predicted, 4, n_resamples=300, per_class=PER_CLASS_STATISTICS)
    for interval in (wide["accuracy"], narrow["accuracy"], narrow["macro_f1"], *narrow["recall"].values()):
        assert interval["low"] <= interval["value"] <= interval["high"]
    narrow_width = narrow["accuracy"]["high"] - narrow["accuracy"]["low"]
    assert narrow_width < wide["accuracy"]["high"] - wide["accuracy"]["low"]


def test_uncalibrated_inverts_temperature_scaling_and_risk_coverage_is_monotone_at_full_coverage() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20, 4)) * 3
    raw = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scaled = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(axis=1, keepdims=True)
    assert np.allclose(uncalibrated(scaled, 2.5), raw, atol=1e-6)
    labels = rng.integers(0, 4, 20)
    coverage, risk, confidence = risk_coverage(raw, labels)
    assert coverage[-1] == 1.0 and np.all(np.diff(confidence) <= 0)
    assert risk[-1] == pytest.approx(float(np.mean(raw.argmax(axis=1) != labels)))


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package chromium) is not installed")
def test_report_in_headless_chromium(cli_report: Path, tmp_path: Path) -> None:
    # A copy of the report with a probe that writes the count of images that failed to load into the DOM.
    probe = (
        "<script>window.addEventListener('load', () => {"
        "const images = Array.from(document.images);"
        "const broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;"
        "document.body.setAttribute('data-images', images.length);"
        "document.body.setAttribute('data-broken', broken);});</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(cli_report.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120, check=False
    ).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, dom[:500]
    assert int(images.group(1)) == len(_inline_images(cli_report.read_text(encoding="utf-8"))) >= 4
    assert int(broken.group(1)) == 0
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1200,2400", f"--screenshot={screenshot}", cli_report.as_uri()],
        capture_output=True,
        timeout=120,
        check=False,
    )
    with Image.open(screenshot) as image:
        assert image.size == (1200, 2400)
        # Not a blank page: the rendered report has text and figures, so many distinct colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 100
