"""Calibration and selective prediction: temperature scaling, ECE/Brier/log loss, referral thresholds.

Temperature scaling (Guo et al., 2017) divides the logits by one number ``T`` fitted to minimise the
negative log-likelihood of the validation split; it changes confidences, never the predicted class.
Selective prediction answers only when the top probability reaches a threshold, chosen on validation
so that a target share of images (the coverage) is answered; the rest are referred to a person.

Example:
    >>> import numpy as np
    >>> labels = np.array([0, 1, 0, 1])
    >>> logits = np.array([[4.0, 0.0], [0.0, 4.0], [0.0, 4.0], [0.0, 4.0]])  # 3 of 4 right, all very sure
    >>> temperature = fit_temperature(logits, labels)
    >>> temperature > 1.0  # over-confident: the fitted temperature softens the probabilities
    True
    >>> probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    >>> threshold_for_coverage(probabilities, 0.5)
    0.8
    >>> selective_metrics(probabilities, np.array([0, 1, 1, 1]), 0.8)["coverage"]
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from braintumor.evaluation.metrics import bootstrap_confidence_intervals, one_vs_rest_metrics
from braintumor.inference.predictor import probabilities_from_logits

ECE_BINS = 10
# Temperatures outside this range mean the validation split is degenerate (e.g. perfectly separated).
TEMPERATURE_BOUNDS = (0.05, 20.0)


# --- scores ----------------------------------------------------------------------------------------


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: the image-weighted mean gap between confidence and accuracy in equal-width bins (torchmetrics)."""
    return float(
        multiclass_calibration_error(
            torch.as_tensor(probabilities, dtype=torch.float32),
            torch.as_tensor(labels, dtype=torch.long),
            num_classes=probabilities.shape[1],
            n_bins=n_bins,
            norm="l1",
        )
    )


def calibration_scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, mean confidence, ECE, multi-class Brier score (0 best, 2 worst) and log loss."""
    classes = list(range(probabilities.shape[1]))
    # Clip like classification_metrics so one confidently wrong image cannot make the log loss infinite.
    # float64: float32 rows miss scikit-learn's sum-to-one check by rounding alone.
    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1.0)
    clipped = clipped / clipped.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
        "mean_confidence": float(probabilities.max(axis=1).mean()),
        "ece": expected_calibration_error(probabilities, labels),
        "brier": float(brier_score_loss(labels, clipped, labels=classes)),
        "log_loss": float(log_loss(labels, clipped, labels=classes)),
    }


# --- temperature scaling ---------------------------------------------------------------------------


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 200) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (L-BFGS on ``log T``, float64).

    Fit it on validation logits only. The result is clamped to :data:`TEMPERATURE_BOUNDS`.
    """
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled image")
    logits_t = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    # Optimising log T keeps T positive without constraints.
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_temperature], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits_t / log_temperature.exp(), labels_t)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_temperature.exp().item())
    if not math.isfinite(temperature):
        return 1.0
    return float(np.clip(temperature, *TEMPERATURE_BOUNDS))


# --- selective prediction --------------------------------------------------------------------------


def threshold_for_coverage(probabilities: np.ndarray, target_coverage: float) -> float:
    """The top-probability threshold that answers ``ceil(target * N)`` of these images (more only on ties).

    An image is answered when its top probability is ``>=`` the threshold. Choose it on validation.
    """
    if not 0.0 < target_coverage <= 1.0:
        raise ValueError(f"target coverage must be in (0, 1], got {target_coverage}")
    confidence = np.sort(np.asarray(probabilities).max(axis=1))[::-1]
    if len(confidence) == 0:
        raise ValueError("choosing a threshold needs at least one image")
    answered = min(len(confidence), max(1, math.ceil(target_coverage * len(confidence) - 1e-9)))
    return float(confidence[answered - 1])


def risk_coverage(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage, risk (error rate among the answered) and the confidence at each cut, most confident first."""
    confidence = probabilities.max(axis=1)
    wrong = (probabilities.argmax(axis=1) != labels).astype(float)
    order = np.argsort(-confidence, kind="stable")
    answered = np.arange(1, len(order) + 1)
    return answered / len(order), np.cumsum(wrong[order]) / answered, confidence[order]


def selective_metrics(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """What answering only images with top probability ``>= threshold`` gives on a labelled set."""
    answered = probabilities.max(axis=1) >= threshold
    correct = probabilities.argmax(axis=1) == labels
    n_answered = int(answered.sum())
    _, risk, _ = risk_coverage(probabilities, labels)
    return {
        "threshold": float(threshold),
        "n_images": len(labels),
        "n_answered": n_answered,
        "n_referred": len(labels) - n_answered,
        "coverage": n_answered / len(labels) if len(labels) else 0.0,
        "selective_accuracy": float(correct[answered].mean()) if n_answered else None,
        "accuracy_of_referred": float(correct[~answered].mean()) if n_answered < len(labels) else None,
        # Area under the risk-coverage curve: lower means confidence ranks mistakes last.
        "aurc": float(risk.mean()) if len(labels) else None,
    }


# --- everything evaluate adds to metrics.json ------------------------------------------------------


def uncertainty_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    *,
    logits: np.ndarray | None = None,
    temperature: float = 1.0,
    refer_threshold: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap CIs, one-vs-rest sensitivity/specificity/ROC-AUC, calibration and selective prediction.

    ``logits`` (raw, before the temperature) add the uncalibrated scores for comparison.
    """
    predicted = probabilities.argmax(axis=1)
    calibration: dict[str, Any] = {"temperature": temperature, **calibration_scores(probabilities, labels)}
    if logits is not None and temperature != 1.0:
        calibration["uncalibrated"] = calibration_scores(probabilities_from_logits(logits), labels)
    result: dict[str, Any] = {
        "confidence_intervals": bootstrap_confidence_intervals(
            labels, predicted, len(class_names), n_resamples=n_bootstrap, seed=seed, class_names=class_names
        ),
        "one_vs_rest": one_vs_rest_metrics(labels, probabilities, class_names),
        "calibration": calibration,
    }
    if refer_threshold is not None:
        result["selective"] = selective_metrics(probabilities, labels, refer_threshold)
    return result


# --- figures ---------------------------------------------------------------------------------------


def plot_reliability_diagram(
    curves: Mapping[str, np.ndarray], labels: np.ndarray, path: Path, title: str = "Reliability diagram"
) -> Path:
    """Accuracy against top-label confidence (10 equal-width bins) for each named set of probabilities.

    Left: the reliability curves with their ECE; right: how many images fall in each confidence bin.
    """
    figure, (curve_axis, count_axis) = plt.subplots(1, 2, figsize=(10, 4.3))
    curve_axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    width = (edges[1] - edges[0]) / (len(curves) + 1)
    for index, (name, probabilities) in enumerate(curves.items()):
        confidence = probabilities.max(axis=1)
        correct = (probabilities.argmax(axis=1) == labels).astype(int)
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=ECE_BINS, strategy="uniform")
        ece = expected_calibration_error(probabilities, labels)
        curve_axis.plot(mean_confidence, accuracy, marker="o", label=f"{name}: ECE {ece:.3f}")
        counts, _ = np.histogram(confidence, bins=edges)
        count_axis.bar(edges[:-1] + (index + 0.5) * width, counts, width=width, align="edge", label=name)
    curve_axis.set(xlabel="confidence (top class)", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1.02))
    count_axis.set(xlabel="confidence (top class)", ylabel="images", title="Confidence histogram", xlim=(0, 1))
    for axis in (curve_axis, count_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_risk_coverage(
    probabilities: np.ndarray,
    labels: np.ndarray,
    path: Path,
    *,
    threshold: float | None = None,
    title: str = "Risk-coverage",
) -> Path:
    """Error rate among the answered images against the share answered, most confident first."""
    coverage, risk, confidence = risk_coverage(probabilities, labels)
    figure, axis = plt.subplots(figsize=(5.8, 4.5))
    axis.plot(coverage, risk, label=f"answer the most confident first (AURC {risk.mean():.3f})")
    if threshold is not None:
        answered = int((confidence >= threshold).sum())
        if answered:
            axis.scatter(
                [coverage[answered - 1]],
                [risk[answered - 1]],
                color="C3",
                zorder=3,
                label=f"threshold {threshold:.3f}: coverage {coverage[answered - 1]:.1%}, "
                f"risk {risk[answered - 1]:.1%}",
            )
    axis.axhline(risk[-1], color="grey", linestyle=":", linewidth=1, label=f"answer all: risk {risk[-1]:.1%}")
    axis.set(xlabel="coverage (share of images answered)", ylabel="risk (error rate among answered)", title=title)
    axis.set_xlim(0, 1)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
