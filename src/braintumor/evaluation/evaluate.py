"""Evaluate a bundle on a labelled split and write every result a reviewer asks for.

Outputs in ``out_dir``: ``metrics.json`` (accuracy, cross-entropy, macro-F1, per-class precision,
recall, F1; one-vs-rest sensitivity, specificity and ROC-AUC; bootstrap 95% intervals; calibration
scores and, with a referral threshold in the bundle, selective prediction), ``confusion_matrix.json`` and ``.png``,
``per_class.csv``, ``predictions.csv`` (one row per image with every class probability,
``referred`` when the bundle has a threshold, ``flagged``, ``flag_reason``, ``out_of_distribution`` and
``ood_score`` when it has an input guard; a flagged image's ``predicted_class`` is empty: no diagnosis),
``reliability.png``, ``risk_coverage.png`` and ``skipped.csv`` when some files could not
be decoded.

With an input guard (:mod:`braintumor.guard`) the ood scores come from the same forward pass as the
predictions, and ``metrics.json["guard"]`` holds the share flagged (overall and per true class) and the
metrics on the accepted images beside those on all images; without one it is ``"none"``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.bundle import Bundle, load_bundle
from braintumor.data.dataset import ImageSet, scan_images
from braintumor.data.images import SkippedFile
from braintumor.data.layout import discover_split
from braintumor.evaluation.adaptation_info import adaptation_summary
from braintumor.evaluation.calibration import plot_reliability_diagram, plot_risk_coverage, uncertainty_metrics
from braintumor.evaluation.deduplicated import deduplicated_metrics
from braintumor.evaluation.metrics import classification_metrics, guard_metrics
from braintumor.evaluation.plots import plot_confusion_matrix
from braintumor.inference.predictor import Predictor, probabilities_from_logits
from braintumor.inference.volume_outputs import FLAG_REASON
from braintumor.io import write_json_atomic
from braintumor.runtime import tune_cpu_runtime

# What metrics.json["guard"] says for a bundle without an input guard (trained before it).
NO_GUARD = "none"


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
    # Per image, the input guard's ood_score (> 1: flagged out of distribution); None: the bundle has no guard.
    ood_scores: np.ndarray | None = None


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _prediction_rows(
    image_set: ImageSet,
    probabilities: np.ndarray,
    class_names: list[str],
    referred: np.ndarray | None,
    ood_scores: np.ndarray | None,
    flag_reasons: Sequence[str | None] | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``predictions.csv``: one row per image, optional referral and guard columns.

    A flagged image gets no diagnosis: ``predicted_class`` is empty, ``flagged`` is 1 and ``flag_reason`` says why.
    ``correct`` compares the network's top class with the truth for every image, flagged or not, as the metrics
    count it.
    """
    header = ["path", "true_class", "predicted_class", "correct", *[f"p_{name}" for name in class_names]]
    header += (["referred"] if referred is not None else []) + (
        ["flagged", "flag_reason", "out_of_distribution", "ood_score"] if ood_scores is not None else []
    )
    rows: list[list[Any]] = []
    predicted = probabilities.argmax(axis=1)
    flagged = np.zeros(len(predicted), dtype=bool) if ood_scores is None else ~(np.asarray(ood_scores) <= 1.0)
    for index, (path, label, guess, row) in enumerate(
        zip(image_set.paths, image_set.labels.tolist(), predicted, probabilities, strict=True)
    ):
        shown = "" if flagged[index] else class_names[int(guess)]
        values = [str(path), class_names[int(label)], shown, int(label == guess)]
        values += [f"{p:.6f}" for p in row]
        if referred is not None:
            values.append(int(referred[index]))
        if ood_scores is not None:
            reason = ((flag_reasons[index] if flag_reasons else None) or FLAG_REASON) if flagged[index] else ""
            values += [int(flagged[index]), reason, int(flagged[index]), f"{ood_scores[index]:.4f}"]
        rows.append(values)
    return header, rows


def write_evaluation(
    out_dir: Path,
    metrics: dict[str, Any],
    probabilities: np.ndarray,
    image_set: ImageSet,
    class_names: list[str],
    title: str,
    referred: np.ndarray | None = None,
    ood_scores: np.ndarray | None = None,
    flag_reasons: Sequence[str | None] | None = None,
) -> None:
    """Write the metric files, the confusion matrix plot and the per-image predictions.

    ``referred`` (one bool per image) adds a ``referred`` column to ``predictions.csv``; ``ood_scores``
    (the input guard's score per image) add ``out_of_distribution`` (score > 1) and ``ood_score``.
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
    header, rows = _prediction_rows(image_set, probabilities, class_names, referred, ood_scores, flag_reasons)
    _write_csv(out_dir / "predictions.csv", header, rows)
    if image_set.skipped:
        _write_csv(out_dir / "skipped.csv", ["path", "reason"], [[s.path, s.reason] for s in image_set.skipped])


def guard_section(
    predictor: Predictor, labels: np.ndarray, probabilities: np.ndarray, ood_scores: np.ndarray | None
) -> dict[str, Any] | str:
    """``metrics.json["guard"]``: the guard's definition and what it flagged here, or :data:`NO_GUARD`."""
    if predictor.guard is None or ood_scores is None:
        return NO_GUARD
    spec = predictor.guard.spec
    return {
        "detector": spec.detector,
        "quantile": spec.quantile,
        "validation_flag_rate": spec.validation_flag_rate,
        "threshold": 1.0,
        **guard_metrics(labels, probabilities, ood_scores, predictor.class_names),
    }


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
    precision: str | None = None,
) -> EvaluationResult:
    """Predict every image of ``<data_root>/<split>`` with ``bundle`` and write the results to ``out_dir``.

    ``tta`` averages the logits of flipped and shifted views (:mod:`braintumor.inference.tta`);
    ``n_bootstrap`` resamples give the 95% confidence intervals (seed 0).
    With a data audit (``audit``, else ``audits/<data root name>/audit.json`` when present), metrics
    on the audit's clean subset go to ``metrics.json["deduplicated"]`` and ``metrics_deduplicated.json``.
    With an input guard, ``metrics.json["guard"]`` says what it flagged (:func:`guard_section`).
    ``precision`` is the PyTorch inference precision (:class:`~braintumor.inference.predictor.Predictor`).
    """
    tune_cpu_runtime()
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out_dir = Path(out_dir)
    samples = discover_split(data_root, split)
    image_set = scan_images(samples, bundle.preprocessing, description=f"Checking {split}", show_progress=show_progress)
    predictor = Predictor(bundle, tta=tta, precision=precision)
    # One pass decoding batch by batch: the logits and, with a guard, each image's ood_score and reason (clean view).
    logits, verdicts = predictor.run_uint8_checked(image_set)
    ood_scores, flag_reasons = (None, None) if verdicts is None else (verdicts.ood_score, verdicts.texts())
    probabilities = probabilities_from_logits(logits, predictor.temperature)
    labels = image_set.labels.numpy()
    metrics = _split_metrics(
        bundle, data_root, split, image_set, predictor, logits, probabilities, tta=tta, n_bootstrap=n_bootstrap
    )
    metrics["guard"] = guard_section(predictor, labels, probabilities, ood_scores)
    adaptation = adaptation_summary(bundle.config.extras.adaptation, image_set.hashes)
    if adaptation is not None:
        metrics["adaptation"] = adaptation
    metrics["inference_precision"] = predictor.precision
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
    write_evaluation(
        out_dir,
        metrics,
        probabilities,
        image_set,
        bundle.class_names,
        title,
        referred=referred,
        ood_scores=ood_scores,
        flag_reasons=flag_reasons,
    )
    _write_uncertainty_plots(out_dir, title, predictor, logits, probabilities, labels)
    if deduplicated is not None:
        _write_deduplicated(out_dir, deduplicated, bundle.class_names, title)
    return EvaluationResult(
        metrics,
        out_dir,
        probabilities,
        labels,
        image_set.paths,
        image_set.skipped,
        deduplicated,
        audit_note,
        ood_scores=ood_scores,
    )
