"""Evaluate a bundle on a labelled split and write every result a reviewer asks for.

Outputs in ``out_dir``: ``metrics.json`` (accuracy, cross-entropy, macro-F1, per-class precision,
recall, F1; one-vs-rest sensitivity, specificity and ROC-AUC; bootstrap 95% intervals; calibration
scores and, with a referral threshold in the bundle, selective prediction), ``confusion_matrix.json`` and ``.png``,
``per_class.csv``, ``predictions.csv`` (one row per image with every class probability, and
``referred`` when the bundle has a threshold), ``reliability.png``, ``risk_coverage.png`` and
``skipped.csv`` when some files could not be decoded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.bundle import Bundle, load_bundle
from braintumor.data.dataset import ImageSet, load_images
from braintumor.data.images import SkippedFile
from braintumor.data.layout import discover_split
from braintumor.evaluation.calibration import plot_reliability_diagram, plot_risk_coverage, uncertainty_metrics
from braintumor.evaluation.deduplicated import deduplicated_metrics
from braintumor.evaluation.metrics import classification_metrics
from braintumor.evaluation.plots import plot_confusion_matrix
from braintumor.inference.predictor import Predictor, probabilities_from_logits
from braintumor.io import write_json_atomic


@dataclass
class EvaluationResult:
    """Metrics of one bundle on one split, and where they were written."""

    metrics: dict[str, Any]
    out_dir: Path
    probabilities: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    skipped: list[SkippedFile] = field(default_factory=list)
    # Metrics on the data audit's clean subset (no copy in Training), or why there are none.
    deduplicated: dict[str, Any] | None = None
    audit_note: str | None = None


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_evaluation(
    out_dir: Path,
    metrics: dict[str, Any],
    probabilities: np.ndarray,
    image_set: ImageSet,
    class_names: list[str],
    title: str,
    referred: np.ndarray | None = None,
) -> None:
    """Write the metric files, the confusion matrix plot and the per-image predictions.

    ``referred`` (one bool per image) adds a ``referred`` column to ``predictions.csv``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_json_atomic(
        out_dir / "confusion_matrix.json",
        {"class_names": class_names, "rows_true_columns_predicted": metrics["confusion_matrix"]},
    )
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, out_dir / "confusion_matrix.png", title=title)
    _write_csv(
        out_dir / "per_class.csv",
        ["class", "precision", "recall", "f1", "support"],
        [
            [name, f"{v['precision']:.4f}", f"{v['recall']:.4f}", f"{v['f1']:.4f}", v["support"]]
            for name, v in metrics["per_class"].items()
        ],
    )
    predicted = probabilities.argmax(axis=1)
    _write_csv(
        out_dir / "predictions.csv",
        ["path", "true_class", "predicted_class", "correct", *[f"p_{name}" for name in class_names]]
        + (["referred"] if referred is not None else []),
        [
            [
                str(path),
                class_names[int(label)],
                class_names[int(guess)],
                int(label == guess),
                *[f"{p:.6f}" for p in row],
            ]
            + ([int(referred[index])] if referred is not None else [])
            for index, (path, label, guess, row) in enumerate(
                zip(image_set.paths, image_set.labels.tolist(), predicted, probabilities, strict=True)
            )
        ],
    )
    if image_set.skipped:
        _write_csv(out_dir / "skipped.csv", ["path", "reason"], [[s.path, s.reason] for s in image_set.skipped])


def _split_metrics(
    bundle: Bundle,
    data_root: Path | str,
    split: str,
    image_set: ImageSet,
    predictor: Predictor,
    logits: np.ndarray,
    probabilities: np.ndarray,
    *,
    tta: bool,
    n_bootstrap: int,
) -> dict[str, Any]:
    """``metrics.json`` of the whole split: classification metrics, provenance and the uncertainty scores."""
    labels = image_set.labels.numpy()
    metrics = classification_metrics(labels, probabilities, bundle.class_names)
    metrics.update(
        split=split,
        data_root=str(Path(data_root).resolve()),
        bundle=str(bundle.path.resolve()),
        recipe=bundle.name,
        skipped_files=len(image_set.skipped),
    )
    extra = uncertainty_metrics(
        labels,
        probabilities,
        bundle.class_names,
        logits=logits,
        temperature=predictor.temperature,
        refer_threshold=predictor.refer_threshold,
        n_bootstrap=n_bootstrap,
    )
    metrics.update(extra, tta=tta)
    return metrics


def _write_uncertainty_plots(
    out_dir: Path, title: str, predictor: Predictor, logits: np.ndarray, probabilities: np.ndarray, labels: np.ndarray
) -> None:
    """``reliability.png`` (with the uncalibrated curve when the bundle has a temperature) and ``risk_coverage.png``."""
    curves = {"uncalibrated (T = 1)": probabilities_from_logits(logits)} if predictor.temperature != 1.0 else {}
    curves[f"as predicted (T = {predictor.temperature:.3g})"] = probabilities
    plot_reliability_diagram(curves, labels, out_dir / "reliability.png", title=f"{title}: reliability")
    plot_risk_coverage(
        probabilities,
        labels,
        out_dir / "risk_coverage.png",
        threshold=predictor.refer_threshold,
        title=f"{title}: risk-coverage",
    )


def _write_deduplicated(out_dir: Path, deduplicated: dict[str, Any], class_names: list[str], title: str) -> None:
    """``metrics_deduplicated.json`` and the confusion matrix of the clean subset."""
    write_json_atomic(out_dir / "metrics_deduplicated.json", deduplicated)
    plot_confusion_matrix(
        deduplicated["confusion_matrix"],
        class_names,
        out_dir / "confusion_matrix_deduplicated.png",
        title=f"{title}, deduplicated ({deduplicated['n_images']} images)",
    )


def evaluate_bundle(
    bundle: Bundle | Path | str,
    data_root: Path | str,
    split: str,
    out_dir: Path | str,
    *,
    show_progress: bool = True,
    tta: bool = False,
    n_bootstrap: int = 1000,
    audit: Path | str | None = None,
) -> EvaluationResult:
    """Predict every image of ``<data_root>/<split>`` with ``bundle`` and write the results to ``out_dir``.

    ``tta`` averages the logits of flipped and shifted views (:mod:`braintumor.inference.tta`);
    ``n_bootstrap`` resamples give the 95% confidence intervals (seed 0).
    With a data audit (``audit``, else ``audits/<data root name>/audit.json`` when present), metrics
    on the audit's clean subset go to ``metrics.json["deduplicated"]`` and ``metrics_deduplicated.json``.
    """
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out_dir = Path(out_dir)
    samples = discover_split(data_root, split)
    image_set = load_images(samples, bundle.preprocessing, description=f"Decoding {split}", show_progress=show_progress)
    predictor = Predictor(bundle, tta=tta)
    logits = predictor.predict_logits_uint8(image_set.images)
    probabilities = probabilities_from_logits(logits, predictor.temperature)
    labels = image_set.labels.numpy()
    metrics = _split_metrics(
        bundle, data_root, split, image_set, predictor, logits, probabilities, tta=tta, n_bootstrap=n_bootstrap
    )
    deduplicated, audit_note = deduplicated_metrics(
        data_root,
        split,
        image_set.paths,
        image_set.hashes,
        labels,
        probabilities,
        bundle.class_names,
        audit=audit,
        n_bootstrap=n_bootstrap,
    )
    if deduplicated is not None:
        metrics["deduplicated"] = deduplicated
    title = f"{bundle.name} on {split}"
    referred = predictor.referred(probabilities)
    write_evaluation(out_dir, metrics, probabilities, image_set, bundle.class_names, title=title, referred=referred)
    _write_uncertainty_plots(out_dir, title, predictor, logits, probabilities, labels)
    if deduplicated is not None:
        _write_deduplicated(out_dir, deduplicated, bundle.class_names, title)
    return EvaluationResult(
        metrics, out_dir, probabilities, labels, image_set.paths, image_set.skipped, deduplicated, audit_note
    )
