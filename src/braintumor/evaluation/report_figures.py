"""The images of ``report.html``: matplotlib figures and Grad-CAM tiles as PNG data URIs.

Example:
    >>> import numpy as np
    >>> probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    >>> selective_text(probabilities, np.array([0, 1, 1]), 0.65)[:65]
    'at the referral threshold 0.650 the model answers 66.7% of images'
    >>> np.allclose(uncalibrated(probabilities, 1.0), probabilities)
    True
    >>> guard_histogram_figure({"validation": np.array([0.1, 0.5, 1.2])}).title
    'Input guard scores'
"""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from braintumor.data.images import load_image_rgb
from braintumor.errors import ImageDecodeError
from braintumor.evaluation.calibration import expected_calibration_error, risk_coverage
from braintumor.evaluation.evaluate import EvaluationResult

if TYPE_CHECKING:
    from braintumor.explain.explainer import Explainer

PNG_URI_PREFIX = "data:image/png;base64,"


@dataclass
class Figure:
    """An inline image of the report."""

    title: str
    uri: str
    caption: str


def figure_uri(figure: plt.Figure, dpi: int = 100) -> str:
    """A matplotlib figure as a PNG data URI (and closes it)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return PNG_URI_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_uri(image: Image.Image, max_side: int = 256) -> str:
    """A PIL image as a PNG data URI, no larger than ``max_side``."""
    copy = image.convert("RGB")
    copy.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG", optimize=True)
    return PNG_URI_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_to_uri(plot: Callable[[Path], Path]) -> str:
    """The PNG that ``plot(path)`` writes, as a data URI."""
    # The shared plot helpers write files; render them into a private temporary folder and inline the bytes.
    with tempfile.TemporaryDirectory() as folder:
        return PNG_URI_PREFIX + base64.b64encode(plot(Path(folder) / "figure.png").read_bytes()).decode("ascii")


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Undo temperature scaling: ``softmax(T * log p)`` equals ``softmax(logits)`` for ``p = softmax(logits / T)``."""
    scaled = temperature * np.log(np.clip(probabilities, 1e-12, 1.0))
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def roc_figure(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> tuple[Figure, list[str]]:
    """One-vs-rest ROC curves (scikit-learn) and the per-class AUC texts."""
    figure, axis = plt.subplots(figsize=(5.5, 4.8))
    aucs: list[str] = []
    for index, name in enumerate(class_names):
        positives = labels == index
        if positives.all() or not positives.any():
            aucs.append("n/a")
            continue
        fpr, tpr, _ = roc_curve(positives, probabilities[:, index])
        auc = roc_auc_score(positives, probabilities[:, index])
        aucs.append(f"{auc:.3f}")
        axis.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one class vs the rest")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    caption = "One-vs-rest ROC curves from the predicted probabilities (scikit-learn roc_curve)."
    return Figure("ROC curves", figure_uri(figure), caption), aucs


def reliability_figure(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> Figure:
    """Top-label reliability before and after temperature scaling, with ECE."""
    figure, axis = plt.subplots(figsize=(5.5, 4.8))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    errors = []
    for name, probs in (
        ("before (T = 1)", uncalibrated(probabilities, temperature)),
        (f"after (T = {temperature:.3g})", probabilities),
    ):
        confidence = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == labels).astype(int)
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=10, strategy="uniform")
        errors.append(expected_calibration_error(probs, labels))
        axis.plot(mean_confidence, accuracy, marker="o", label=f"{name}: ECE {errors[-1]:.3f}")
    axis.set(xlabel="confidence (top class)", ylabel="accuracy", title="Reliability diagram", xlim=(0, 1), ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    caption = (
        f"Temperature scaling with T = {temperature:.3g}: top-label ECE {errors[0]:.3f} before, {errors[1]:.3f} after. "
        "Accuracy against confidence in 10 equal-width bins (scikit-learn calibration_curve); ECE from torchmetrics; "
        "'before' undoes the bundle's temperature exactly (softmax(T log p))."
    )
    return Figure("Reliability diagram", figure_uri(figure), caption)


def _answered_count(probabilities: np.ndarray, threshold: float) -> int:
    """How many images reach the referral threshold (they are answered, the rest referred)."""
    return int((probabilities.max(axis=1) >= threshold).sum())


def selective_text(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> str:
    """What answering only at or above the referral threshold gives: coverage, risk and the referred share."""
    coverage, risk, _ = risk_coverage(probabilities, labels)
    k = _answered_count(probabilities, threshold)
    if not k:
        return f"threshold {threshold:.3f}: nothing answered"
    return (
        f"at the referral threshold {threshold:.3f} the model answers {coverage[k - 1]:.1%} of images "
        f"with an error rate of {risk[k - 1]:.1%} and refers {1 - coverage[k - 1]:.1%} to a person "
        f"(error rate when answering all: {risk[-1]:.1%})"
    )


def risk_coverage_figure(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> Figure:
    """Risk against coverage when answering only the most confident images, with the referral threshold marked."""
    coverage, risk, _ = risk_coverage(probabilities, labels)
    figure, axis = plt.subplots(figsize=(5.5, 4.8))
    axis.plot(coverage, risk, label="answer the most confident first")
    k = _answered_count(probabilities, threshold)
    if k:
        axis.scatter(
            [coverage[k - 1]], [risk[k - 1]], color="C3", zorder=3, label=f"referral threshold {threshold:.3f}"
        )
    axis.set(
        xlabel="coverage (share of images answered)", ylabel="risk (error rate among answered)", title="Risk-coverage"
    )
    axis.set_xlim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    caption = "Selective prediction: " + selective_text(probabilities, labels, threshold) + "."
    return Figure("Risk-coverage curve", figure_uri(figure), caption)


def load_model_sized(path: Path, explainer: Explainer) -> tuple[Image.Image, torch.Tensor] | None:
    """The image at ``path`` and its uint8 tensor at the model's size; ``None`` when it cannot be decoded."""
    try:
        image = load_image_rgb(path)
    except (ImageDecodeError, OSError):
        return None
    return image, explainer.to_uint8([image])[0]


def confident_mistakes(
    result: EvaluationResult, explainer: Explainer, class_names: Sequence[str], count: int
) -> tuple[list[dict[str, str]], int]:
    """Tiles for the ``count`` most confident wrong answers: Grad-CAM for the predicted and for the true class.

    Only diagnoses are shown: an image the input guard flagged has no predicted class (it is in the guard
    section), so it is left out here, and the count returned is of the unflagged wrong answers.
    """
    from braintumor.explain.overlay import overlay_heatmap

    predicted = result.probabilities.argmax(axis=1)
    confidence = result.probabilities.max(axis=1)
    wrong = np.flatnonzero((predicted != result.labels) & ~flagged_mask(result))
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    tiles: list[dict[str, str]] = []
    for index in order:
        if len(tiles) >= count:
            break
        loaded = load_model_sized(Path(result.paths[index]), explainer)
        if loaded is None:
            continue
        image, uint8 = loaded
        inputs = explainer.to_inputs(uint8.unsqueeze(0)).expand(2, -1, -1, -1)
        guess, truth = int(predicted[index]), int(result.labels[index])
        maps = explainer.maps(inputs, [guess, truth], "gradcam").numpy()
        display = image.copy()
        display.thumbnail((256, 256))
        tiles.append(
            {
                "predicted": class_names[guess],
                "true": class_names[truth],
                "confidence": f"{confidence[index]:.1%}",
                "file": str(result.paths[index]),
                "predicted_uri": image_uri(overlay_heatmap(display, maps[0])),
                "true_uri": image_uri(overlay_heatmap(display, maps[1])),
            }
        )
    return tiles, len(wrong)


GUARD_THRESHOLD = 1.0  # ood_score above this: flagged out of distribution (braintumor.guard.spec)


def flagged_mask(result: EvaluationResult) -> np.ndarray:
    """Per image, whether the input guard flagged it (all False without a guard; a NaN score is flagged)."""
    if result.ood_scores is None:
        return np.zeros(len(result.labels), dtype=bool)
    return ~(np.asarray(result.ood_scores, dtype=np.float64) <= GUARD_THRESHOLD)


def guard_histogram_figure(scores: dict[str, np.ndarray]) -> Figure:
    """Histograms of the input guard's ``ood_score`` per split (share of each split's images), threshold at 1.

    The axis spans the scores near the threshold (up to the 95th percentile of all splits together, kept
    within 3 to 10); scores beyond it are drawn in the outermost bins, so a few far outliers (images nothing
    like Training score in the hundreds) do not squeeze every other image into a single bar.
    """
    joined = np.concatenate([np.asarray(v, dtype=np.float64) for v in scores.values()])
    low = float(np.clip(np.percentile(joined, 1), -5.0, -1.0))
    high = float(np.clip(np.percentile(joined, 95), 3.0, 10.0))
    bins = np.linspace(low, high, 41)
    figure, axis = plt.subplots(figsize=(7.0, 3.8))
    for name, values in scores.items():
        values = np.asarray(values, dtype=np.float64)
        flagged = float((values > GUARD_THRESHOLD).mean()) if len(values) else 0.0
        weights = np.full(len(values), 1.0 / max(len(values), 1))
        label = f"{name} ({len(values)} images, {flagged:.1%} flagged)"
        axis.hist(
            np.clip(values, low, high), bins=bins, weights=weights, histtype="stepfilled", alpha=0.45, label=label
        )
    axis.axvline(GUARD_THRESHOLD, color="C3", linestyle="--", label="threshold (ood_score = 1)")
    axis.set(xlabel="ood_score", ylabel="share of the split's images", title="Input guard scores")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    clipped = int(((joined < low) | (joined > high)).sum())
    caption = (
        "0 is a typical validation image, 1 the threshold: an image scoring above 1 is flagged out of distribution."
        + (f" {clipped} scores outside [{low:.3g}, {high:.3g}] are drawn in the outermost bins." if clipped else "")
    )
    return Figure("Input guard scores", figure_uri(figure), caption)


def flagged_examples(result: EvaluationResult, class_names: Sequence[str], count: int) -> list[dict[str, str]]:
    """Thumbnails of up to ``count`` images the input guard flagged, highest ``ood_score`` first."""
    if result.ood_scores is None:
        return []
    scores = np.asarray(result.ood_scores)
    flagged = np.flatnonzero(scores > GUARD_THRESHOLD)
    tiles: list[dict[str, str]] = []
    for index in flagged[np.argsort(-scores[flagged], kind="stable")]:
        if len(tiles) >= count:
            break
        try:
            image = load_image_rgb(Path(result.paths[index]))
        except (ImageDecodeError, OSError):
            continue
        tiles.append(
            {
                "uri": image_uri(image, max_side=160),
                "score": f"{scores[index]:.2f}",
                "true": class_names[int(result.labels[index])],
                "file": str(result.paths[index]),
            }
        )
    return tiles
