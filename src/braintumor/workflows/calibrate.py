"""``braintumor calibrate``: fit a bundle's temperature and referral threshold on its own validation split.

The bundle records the exact validation files it was trained with (``training.val_paths``); they
are read again (labels from their class folders), the model's raw logits computed once, and then:

- the temperature minimising the validation NLL is fitted (:func:`~braintumor.evaluation.calibration.fit_temperature`);
- ECE, Brier score and log loss are reported before and after, with a reliability diagram PNG;
- the confidence threshold answering ``target_coverage`` of the validation images is chosen;
- ``extras.temperature``, ``extras.refer_threshold`` and ``extras.calibration`` are written into the
  bundle's ``config.json`` atomically (the weights are not touched).

The Testing split is never read.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from braintumor.config import Recipe
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> from braintumor.workflows.train import train_recipe
    >>> work = Path(tempfile.mkdtemp())
    >>> root = make_synthetic_dataset(work / "data", per_class=6, test_per_class=2, size=32)
    >>> recipe = Recipe.model_validate({"name": "tiny", "data": {"image_size": 32, "val_fraction": 0.5},
    ...     "model": {"architecture": "custom_cnn", "conv_channels": [4]}, "train": {"max_epochs": 1}})
    >>> run = train_recipe(recipe, root, work / "run", show_progress=False)
    >>> result = calibrate_bundle(run.bundle_dir, root, work / "calibration", show_progress=False)
    >>> result.temperature > 0, sorted(p.name for p in result.files)
    (True, ['calibration.json', 'reliability_validation.png', 'risk_coverage_validation.png'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.bundle import load_bundle, read_bundle_config, write_bundle_config
from braintumor.bundle.validation import validation_samples
from braintumor.data.dataset import scan_images
from braintumor.errors import BrainTumorError
from braintumor.evaluation.calibration import (
    calibration_scores,
    fit_temperature,
    plot_reliability_diagram,
    plot_risk_coverage,
    selective_metrics,
    threshold_for_coverage,
)
from braintumor.evaluation.defaults import DEFAULT_TARGET_COVERAGE
from braintumor.inference.predictor import Predictor, probabilities_from_logits
from braintumor.io import write_json_atomic
from braintumor.workflows.export import ensure_onnx


@dataclass
class CalibrationResult:
    """What calibration chose and measured on the validation split, and where it wrote its files."""

    bundle_dir: Path
    out_dir: Path
    temperature: float
    refer_threshold: float
    record: dict[str, Any]
    files: list[Path] = field(default_factory=list)
    # What happened to model.onnx (kept, written, or why not): one line for the person running it.
    onnx_note: str = ""


def _write_calibration_files(
    out_dir: Path,
    name: str,
    record: dict[str, Any],
    before: np.ndarray,
    after: np.ndarray,
    labels: np.ndarray,
) -> list[Path]:
    """``calibration.json`` and the validation reliability and risk-coverage plots, in that order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "calibration.json", record)
    return [
        out_dir / "calibration.json",
        plot_reliability_diagram(
            {"before (T = 1)": before, f"after (T = {record['temperature']:.3g})": after},
            labels,
            out_dir / "reliability_validation.png",
            title=f"{name}: validation reliability",
        ),
        plot_risk_coverage(
            after,
            labels,
            out_dir / "risk_coverage_validation.png",
            threshold=record["refer_threshold"],
            title=f"{name}: validation risk-coverage",
        ),
    ]


def calibrate_bundle(
    bundle_dir: Path | str,
    data_root: Path | str | None,
    out_dir: Path | str | None = None,
    *,
    target_coverage: float = DEFAULT_TARGET_COVERAGE,
    tta: bool = False,
    show_progress: bool = True,
) -> CalibrationResult:
    """Fit the temperature and the referral threshold on the bundle's validation split and store them.

    ``out_dir`` (default ``<bundle>/../calibration``) receives ``calibration.json``,
    ``reliability_validation.png`` and ``risk_coverage_validation.png``.
    """
    if not 0.0 < target_coverage <= 1.0:
        raise BrainTumorError(f"--target-coverage must be in (0, 1], got {target_coverage}")
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)
    out_dir = Path(out_dir) if out_dir is not None else bundle_dir.resolve().parent / "calibration"
    samples = validation_samples(bundle, data_root)
    image_set = scan_images(
        samples, bundle.preprocessing, description="Checking validation", show_progress=show_progress
    )
    if len(image_set) == 0:
        raise BrainTumorError(f"none of the {len(samples)} validation files of {bundle_dir} could be decoded")
    labels = image_set.labels.numpy()
    logits = Predictor(bundle, tta=tta).predict_logits_uint8(image_set)

    temperature = fit_temperature(logits, labels)
    before = probabilities_from_logits(logits, 1.0)
    after = probabilities_from_logits(logits, temperature)
    threshold = threshold_for_coverage(after, target_coverage)
    selective = selective_metrics(after, labels, threshold)
    record: dict[str, Any] = {
        "method": "temperature scaling (NLL, L-BFGS) and a top-probability referral threshold",
        "fitted_on": "validation split from Training (training.val_paths)",
        "n_images": len(labels),
        "skipped_files": [vars(s) for s in image_set.skipped],
        "tta": tta,
        "temperature": temperature,
        "before": calibration_scores(before, labels),
        "after": calibration_scores(after, labels),
        "target_coverage": target_coverage,
        "refer_threshold": threshold,
        "validation_selective": selective,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    files = _write_calibration_files(out_dir, bundle.name, record, before, after, labels)
    # Re-read the config on disk (not the loaded copy) so nothing written since loading is lost.
    config = read_bundle_config(bundle_dir)
    config.extras.temperature, config.extras.refer_threshold, config.extras.calibration = temperature, threshold, record
    write_bundle_config(bundle_dir, config)
    onnx = ensure_onnx(bundle_dir)
    return CalibrationResult(bundle_dir, out_dir, temperature, threshold, record, files, onnx.note)
