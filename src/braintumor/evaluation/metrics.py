"""Classification metrics from probabilities (scikit-learn), as plain JSON-ready dictionaries.

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> m = classification_metrics(np.array([0, 1, 1]), probs, ["a", "b"])
    >>> round(m["accuracy"], 3), m["confusion_matrix"]
    (0.667, [[1, 0], [1, 1]])
    >>> one_vs_rest_metrics(np.array([0, 1, 1]), probs, ["a", "b"])["b"]
    {'sensitivity': 0.5, 'specificity': 1.0, 'roc_auc': 1.0}
    >>> ci = bootstrap_confidence_intervals(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 2, n_resamples=200)
    >>> ci["accuracy"]["low"] <= ci["accuracy"]["value"] == 0.75 <= ci["accuracy"]["high"]
    True
    >>> full = bootstrap_confidence_intervals(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), 2, n_resamples=200,
    ...                                       per_class=PER_CLASS_STATISTICS)
    >>> full["precision"]["1"]["value"], full["accuracy"] == ci["accuracy"]  # more statistics, the same resamples
    (1.0, True)
    >>> flags = guard_metrics(np.array([0, 1, 1]), probs, np.array([0.2, 3.0, 0.5]), ["a", "b"])
    >>> flags["n_flagged"], flags["per_class"]["b"]["flagged_share"], flags["accepted"]["accuracy"]
    (1, 0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, cross-entropy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    labels = list(range(len(class_names)))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    # Clip like Keras does so one confidently wrong image cannot make the loss infinite.
    clipped = np.clip(probabilities, 1e-7, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return {
        "n_images": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "loss": float(log_loss(y_true, clipped, labels=labels)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def one_vs_rest_metrics(y_true: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Per class, one class against the rest: sensitivity (recall), specificity and ROC-AUC.

    ROC-AUC is ``None`` for a class that is absent (or the only one present) in ``y_true``.
    """
    labels = list(range(len(class_names)))
    y_true = np.asarray(y_true)
    # [C, 2, 2] with rows (negative, positive) truth and columns (negative, positive) prediction.
    matrices = multilabel_confusion_matrix(y_true, probabilities.argmax(axis=1), labels=labels)
    result: dict[str, Any] = {}
    for index, name in enumerate(class_names):
        (tn, fp), (fn, tp) = matrices[index]
        positives = y_true == index
        auc = (
            float(roc_auc_score(positives, probabilities[:, index]))
            if positives.any() and not positives.all()
            else None
        )
        result[name] = {
            "sensitivity": float(tp / (tp + fn)) if tp + fn else 0.0,
            "specificity": float(tn / (tn + fp)) if tn + fp else 0.0,
            "roc_auc": auc,
        }
    return result


PER_CLASS_STATISTICS = ("precision", "recall", "f1")


def _interval(samples: np.ndarray, value: float, confidence_level: float) -> dict[str, float]:
    tail = (1.0 - confidence_level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return {"value": float(value), "low": float(low), "high": float(high)}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # 0 where the denominator is 0, as scikit-learn's zero_division=0.
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def bootstrap_confidence_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    *,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    class_names: list[str] | None = None,
    per_class: Sequence[str] = ("recall",),
) -> dict[str, Any]:
    """Percentile bootstrap intervals for accuracy, macro-F1 and the ``per_class`` statistics, resampling images.

    ``per_class`` names any of :data:`PER_CLASS_STATISTICS`; each becomes a ``{class name: interval}`` entry.
    The resamples depend only on ``seed``, ``n_resamples`` and the number of images, so asking for more
    per-class statistics never changes the accuracy, macro-F1 or recall intervals.

    Vectorised: each resample is a vector of multinomial counts over the images (the exact bootstrap
    distribution), so the confusion counts of all resamples are one matrix product. Per-class precision,
    recall and F1 are 0 where their denominator is, as scikit-learn's ``zero_division=0``.
    The point values equal :func:`classification_metrics`'s.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        raise ValueError("bootstrap confidence intervals need at least one image")
    names = class_names or [str(index) for index in range(n_classes)]
    identity = np.eye(n_classes)
    true_onehot, pred_onehot = identity[y_true], identity[y_pred]
    # Columns: correct, then C true-positive, C true-count and C predicted-count indicators.
    indicators = np.concatenate(
        [(y_true == y_pred)[:, None].astype(float), true_onehot * pred_onehot, true_onehot, pred_onehot], axis=1
    )

    def statistics(counts: np.ndarray) -> np.ndarray:
        """``[B, 2 + len(per_class) * C]`` from ``counts`` ``[B, N]``: accuracy, macro-F1, the per-class statistics."""
        totals = counts @ indicators
        tp, true, predicted = np.split(totals[:, 1:], 3, axis=1)
        by_class = {
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, true),
            "f1": _ratio(2 * tp, true + predicted),
        }
        accuracy = totals[:, :1] / counts.sum(axis=1, keepdims=True)
        return np.concatenate(
            [accuracy, by_class["f1"].mean(axis=1, keepdims=True), *(by_class[key] for key in per_class)], axis=1
        )

    n = len(y_true)
    point = statistics(np.ones((1, n)))[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // max(1, n))  # bounded memory for large test sets
    resampled = [
        statistics(rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_resamples - start)).astype(float))
        for start in range(0, n_resamples if n > 1 else 0, chunk)
    ]
    # One image (or none) has no spread to estimate: the interval collapses onto the point.
    samples = np.concatenate(resampled) if resampled else point[None, :]
    intervals = [_interval(samples[:, column], point[column], confidence_level) for column in range(len(point))]
    result: dict[str, Any] = {"accuracy": intervals[0], "macro_f1": intervals[1]}
    for position, key in enumerate(per_class):
        start = 2 + position * n_classes
        result[key] = dict(zip(names, intervals[start : start + n_classes], strict=True))
    return {
        **result,
        "method": "percentile bootstrap over images",
        "n_resamples": int(n_resamples),
        "confidence_level": confidence_level,
        "seed": seed,
    }


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def guard_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, ood_scores: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """What the input guard flagged (``ood_score > 1``) and the metrics on the images it accepted.

    Returns:
        ``n_images``, ``n_flagged``, ``flagged_share`` (``None`` without images), ``per_class`` (per true
        class: ``n_images``, ``n_flagged``, ``flagged_share``), ``ood_score`` quantiles, ``n_accepted``,
        ``all_images`` (accuracy, macro-F1 and loss on every image) and ``accepted``
        (:func:`classification_metrics` of the accepted images; ``None`` when the guard flagged all).
    """
    y_true, scores = np.asarray(y_true), np.asarray(ood_scores, dtype=np.float64)
    flagged = scores > 1.0
    accepted = ~flagged
    per_class = {}
    for index, name in enumerate(class_names):
        members = y_true == index
        n_flagged = int((flagged & members).sum())
        per_class[name] = {
            "n_images": int(members.sum()),
            "n_flagged": n_flagged,
            "flagged_share": _share(n_flagged, int(members.sum())),
        }
    everything = classification_metrics(y_true, probabilities, class_names) if len(y_true) else None
    quantiles = (
        dict(zip(("min", "median", "p95", "max"), np.quantile(scores, [0, 0.5, 0.95, 1]).tolist(), strict=True))
        if len(scores)
        else None
    )
    return {
        "n_images": len(y_true),
        "n_flagged": int(flagged.sum()),
        "flagged_share": _share(int(flagged.sum()), len(y_true)),
        "per_class": per_class,
        "ood_score": quantiles,
        "n_accepted": int(accepted.sum()),
        "all_images": None
        if everything is None
        else {key: everything[key] for key in ("n_images", "accuracy", "macro_f1", "loss")},
        "accepted": classification_metrics(y_true[accepted], probabilities[accepted], class_names)
        if accepted.any()
        else None,
    }
