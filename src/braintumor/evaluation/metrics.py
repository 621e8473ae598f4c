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
"""

from __future__ import annotations

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


def _interval(samples: np.ndarray, value: float, confidence_level: float) -> dict[str, float]:
    tail = (1.0 - confidence_level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return {"value": float(value), "low": float(low), "high": float(high)}


def bootstrap_confidence_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    *,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """Percentile bootstrap intervals for accuracy, macro-F1 and each class's recall, resampling images.

    Vectorised: each resample is a vector of multinomial counts over the images (the exact bootstrap
    distribution), so the confusion counts of all resamples are one matrix product. Per-class F1 is 0
    where a class has neither true nor predicted images, as scikit-learn's ``zero_division=0``.
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
        """``[B, 2 + C]``: accuracy, macro-F1 and per-class recall of each resample (``counts`` is ``[B, N]``)."""
        totals = counts @ indicators
        tp, true, predicted = np.split(totals[:, 1:], 3, axis=1)
        f1 = np.divide(2 * tp, true + predicted, out=np.zeros_like(tp), where=(true + predicted) > 0)
        recall = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
        accuracy = totals[:, :1] / counts.sum(axis=1, keepdims=True)
        return np.concatenate([accuracy, f1.mean(axis=1, keepdims=True), recall], axis=1)

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
    return {
        "accuracy": _interval(samples[:, 0], point[0], confidence_level),
        "macro_f1": _interval(samples[:, 1], point[1], confidence_level),
        "recall": {
            name: _interval(samples[:, 2 + index], point[2 + index], confidence_level)
            for index, name in enumerate(names)
        },
        "method": "percentile bootstrap over images",
        "n_resamples": int(n_resamples),
        "confidence_level": confidence_level,
        "seed": seed,
    }
