"""Evaluate a bundle on a labelled split and write every result a reviewer asks for.

Outputs in ``out_dir``: ``metrics.json`` (accuracy, cross-entropy, macro-F1, per-class precision,
recall, F1), ``confusion_matrix.json`` and ``.png``, ``per_class.csv``, ``predictions.csv`` (one row
per image with every class probability) and ``skipped.csv`` when some files could not be decoded.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.data.dataset import ImageSet, load_images
from braintumor.data.images import SkippedFile
from braintumor.data.layout import discover_split
from braintumor.evaluation.metrics import classification_metrics
from braintumor.evaluation.plots import plot_confusion_matrix
from braintumor.inference.bundle import Bundle, load_bundle, write_json_atomic
from braintumor.inference.predictor import Predictor


@dataclass
class EvaluationResult:
    """Metrics of one bundle on one split, and where they were written."""

    metrics: dict[str, Any]
    out_dir: Path
    probabilities: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    skipped: list[SkippedFile] = field(default_factory=list)


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
) -> None:
    """Write the metric files, the confusion matrix plot and the per-image predictions."""
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
        ["path", "true_class", "predicted_class", "correct", *[f"p_{name}" for name in class_names]],
        [
            [
                str(path),
                class_names[int(label)],
                class_names[int(guess)],
                int(label == guess),
                *[f"{p:.6f}" for p in row],
            ]
            for path, label, guess, row in zip(
                image_set.paths, image_set.labels.tolist(), predicted, probabilities, strict=True
            )
        ],
    )
    if image_set.skipped:
        _write_csv(out_dir / "skipped.csv", ["path", "reason"], [[s.path, s.reason] for s in image_set.skipped])


def evaluate_bundle(
    bundle: Bundle | Path | str,
    data_root: Path | str,
    split: str,
    out_dir: Path | str,
    *,
    show_progress: bool = True,
) -> EvaluationResult:
    """Predict every image of ``<data_root>/<split>`` with ``bundle`` and write the results to ``out_dir``."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out_dir = Path(out_dir)
    samples = discover_split(data_root, split)
    image_set = load_images(samples, bundle.preprocessing, description=f"Decoding {split}", show_progress=show_progress)
    probabilities = Predictor(bundle).predict_uint8(image_set.images)
    labels = image_set.labels.numpy()
    metrics = classification_metrics(labels, probabilities, bundle.class_names)
    metrics.update(
        split=split,
        data_root=str(Path(data_root).resolve()),
        bundle=str(bundle.path.resolve()),
        recipe=bundle.name,
        skipped_files=len(image_set.skipped),
    )
    write_evaluation(out_dir, metrics, probabilities, image_set, bundle.class_names, title=f"{bundle.name} on {split}")
    return EvaluationResult(metrics, out_dir, probabilities, labels, image_set.paths, image_set.skipped)
