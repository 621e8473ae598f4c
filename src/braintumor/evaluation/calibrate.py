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
    >>> from braintumor.training.train import train_recipe
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

from braintumor.bundle import Bundle, load_bundle, read_bundle_config, write_bundle_config
from braintumor.data.dataset import load_images
from braintumor.data.layout import Sample, normalise_class_name
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


@dataclass
class CalibrationResult:
    """What calibration chose and measured on the validation split, and where it wrote its files."""

    bundle_dir: Path
    out_dir: Path
    temperature: float
    refer_threshold: float
    record: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def validation_samples(bundle: Bundle, data_root: Path | str | None = None) -> list[Sample]:
    """The bundle's validation files with labels from their class folders.

    The paths were recorded under the training data root; when ``data_root`` is given, paths under the
    recorded root are looked up under ``data_root`` instead (the data moved or is mounted elsewhere).
    """
    training = bundle.config.training
    recorded = training.val_paths
    if not recorded:
        raise BrainTumorError(
            f"{bundle.path} records no validation files (training.val_paths): calibration needs the validation "
            "split the bundle was trained with; train it again with this version of braintumor"
        )
    recorded_root = Path(training.data_root) if training.data_root else None
    samples: list[Sample] = []
    for value in recorded:
        path = Path(str(value))
        if data_root is not None and recorded_root is not None and path.is_relative_to(recorded_root):
            path = Path(data_root) / path.relative_to(recorded_root)
        elif data_root is not None and not path.is_absolute() and "Training" in path.parts:
            # Bundles before 0.1 recorded paths as given on the command line, relative to where train ran.
            path = Path(data_root).joinpath(*path.parts[path.parts.index("Training") :])
        if not path.is_file():
            raise BrainTumorError(
                f"validation file {path} of bundle {bundle.path} does not exist; pass --data with the data root "
                f"the bundle was trained on (recorded: {recorded_root or 'unknown'})"
            )
        class_name = normalise_class_name(path.parent.name)
        if class_name not in bundle.class_names:
            raise BrainTumorError(
                f"validation file {path}: its folder {path.parent.name!r} is not a class of this bundle "
                f"({', '.join(bundle.class_names)})"
            )
        samples.append(Sample(path, bundle.class_names.index(class_name)))
    return samples


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
    image_set = load_images(
        samples, bundle.preprocessing, description="Decoding validation", show_progress=show_progress
    )
    if len(image_set) == 0:
        raise BrainTumorError(f"none of the {len(samples)} validation files of {bundle_dir} could be decoded")
    labels = image_set.labels.numpy()
    logits = Predictor(bundle, tta=tta).predict_logits_uint8(image_set.images)

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
    return CalibrationResult(bundle_dir, out_dir, temperature, threshold, record, files)


def summary_rows(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(score, before, after)`` rows for the terminal table."""
    before, after = record["before"], record["after"]
    return [
        ("temperature", "1", f"{record['temperature']:.4g}"),
        ("accuracy", f"{before['accuracy']:.2%}", f"{after['accuracy']:.2%}"),
        ("mean confidence", f"{before['mean_confidence']:.3f}", f"{after['mean_confidence']:.3f}"),
        ("ECE (10 bins)", f"{before['ece']:.4f}", f"{after['ece']:.4f}"),
        ("Brier score", f"{before['brier']:.4f}", f"{after['brier']:.4f}"),
        ("log loss", f"{before['log_loss']:.4f}", f"{after['log_loss']:.4f}"),
    ]
