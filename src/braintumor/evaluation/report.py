"""``report.html``: every result of one evaluation in a single self-contained file a person can read offline.

The report holds the official and the deduplicated metrics side by side (the latter from
``metrics["deduplicated"]`` when a data audit ran), bootstrap 95% confidence intervals, training
curves, the confusion matrix, per-class and ROC numbers, a reliability diagram (calibrated bundles),
a risk-coverage curve (bundles with a referral threshold), the most confident mistakes with their
Grad-CAM maps, the maps' sanity checks and a model card. Figures are PNG data URIs; there is no
script and no link to anything outside the file.

``metrics["deduplicated"]`` is read as a :func:`~braintumor.evaluation.metrics.classification_metrics`
dictionary; when it also lists which images it kept (``paths``/``kept_paths``) or dropped
(``excluded_paths``/``removed_paths``), its confidence intervals are computed too.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from braintumor.config import Recipe
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> from braintumor.evaluation.evaluate import evaluate_bundle
    >>> from braintumor.bundle import load_bundle, save_bundle
    >>> from braintumor.models import create_model, resolve_preprocessing
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe)
    >>> work = Path(tempfile.mkdtemp())
    >>> bundle = load_bundle(save_bundle(work / "b", model, recipe, resolve_preprocessing(recipe, model)))
    >>> root = make_synthetic_dataset(work / "data", per_class=2, test_per_class=3, size=32)
    >>> result = evaluate_bundle(bundle, root, "Testing", work / "eval", show_progress=False)
    >>> build_report(result, bundle, n_bootstrap=50, sanity_images=2).name
    'report.html'
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import jinja2
import matplotlib.pyplot as plt
import numpy as np
import torch
import yaml
from PIL import Image
from scipy.stats import bootstrap
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, roc_curve

from braintumor.bundle import Bundle, library_versions, load_bundle
from braintumor.config import Recipe
from braintumor.data.images import load_image_rgb
from braintumor.data.preprocessing import Preprocessing
from braintumor.errors import BrainTumorError, ImageDecodeError
from braintumor.evaluation.calibration import expected_calibration_error, risk_coverage
from braintumor.evaluation.evaluate import EvaluationResult
from braintumor.evaluation.metrics import classification_metrics
from braintumor.evaluation.plots import plot_confusion_matrix, plot_training_curves
from braintumor.evaluation.report_template import REPORT_TEMPLATE
from braintumor.progress import progress_bar

REPORT_FILE = "report.html"
CONFIDENT_MISTAKE = 0.9  # a wrong answer at or above this probability is the most harmful kind
_EXTRA_LIBRARIES = ("captum", "scikit-learn", "scipy", "torchmetrics", "matplotlib")
_KEPT_KEYS = ("paths", "kept_paths", "image_paths")
_DROPPED_KEYS = ("excluded_paths", "removed_paths", "dropped_paths")


@dataclass
class Figure:
    """An inline image of the report."""

    title: str
    uri: str
    caption: str


@dataclass
class Interval:
    """A point estimate with its bootstrap 95% confidence interval."""

    value: float
    low: float
    high: float

    def text(self, percent: bool = False) -> str:
        if percent:
            return f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}]"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


# --- numbers ---------------------------------------------------------------------------------------


def bootstrap_intervals(
    labels: np.ndarray, predicted: np.ndarray, n_classes: int, *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 with percentile bootstrap 95% CIs (scipy).

    Images are resampled with replacement, keeping each label with its prediction (paired).
    """
    classes = list(range(n_classes))

    def statistic(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
        return np.concatenate([[np.mean(y_true == y_pred), np.mean(f1)], precision, recall, f1])

    point = statistic(labels, predicted)
    if len(labels) < 2 or n_resamples < 1:
        low = high = point
    else:
        result = bootstrap(
            (labels, predicted),
            statistic,
            paired=True,
            vectorized=False,
            n_resamples=n_resamples,
            confidence_level=0.95,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval.low, result.confidence_interval.high
    intervals = [Interval(float(v), float(lo), float(hi)) for v, lo, hi in zip(point, low, high, strict=True)]
    return {
        "accuracy": intervals[0],
        "macro_f1": intervals[1],
        "precision": intervals[2 : 2 + n_classes],
        "recall": intervals[2 + n_classes : 2 + 2 * n_classes],
        "f1": intervals[2 + 2 * n_classes :],
    }


def adopt_recorded_intervals(intervals: dict[str, Any], recorded: Any, class_names: Sequence[str]) -> None:
    """Use the intervals ``evaluate`` already stored (``metrics["confidence_intervals"]``) where they exist.

    The terminal, ``metrics.json`` and the report then show the same accuracy, macro-F1 and recall intervals;
    precision and F1 per class keep this module's bootstrap.
    """
    if not isinstance(recorded, dict):
        return

    def read(entry: Any) -> Interval | None:
        if isinstance(entry, dict) and all(isinstance(entry.get(k), int | float) for k in ("value", "low", "high")):
            return Interval(float(entry["value"]), float(entry["low"]), float(entry["high"]))
        return None

    for key in ("accuracy", "macro_f1"):
        interval = read(recorded.get(key))
        if interval is not None:
            intervals[key] = interval
    recalls = recorded.get("recall") if isinstance(recorded.get("recall"), dict) else {}
    for index, name in enumerate(class_names):
        interval = read(recalls.get(name))
        if interval is not None:
            intervals["recall"][index] = interval


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Undo temperature scaling: ``softmax(T * log p)`` equals ``softmax(logits)`` for ``p = softmax(logits / T)``."""
    scaled = temperature * np.log(np.clip(probabilities, 1e-12, 1.0))
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def dedup_mask(result: EvaluationResult, dedup: dict[str, Any]) -> np.ndarray | None:
    """Which evaluated images the deduplicated metrics cover, when the audit says so by path."""
    resolved = [str(Path(p).resolve()) for p in result.paths]
    for key in _KEPT_KEYS:
        if isinstance(dedup.get(key), list):
            kept = {str(Path(p).resolve()) for p in dedup[key]}
            return np.array([p in kept for p in resolved])
    for key in _DROPPED_KEYS:
        if isinstance(dedup.get(key), list):
            dropped = {str(Path(p).resolve()) for p in dedup[key]}
            return np.array([p not in dropped for p in resolved])
    return None


# --- figures ---------------------------------------------------------------------------------------


def figure_uri(figure: plt.Figure, dpi: int = 100) -> str:
    """A matplotlib figure as a PNG data URI (and closes it)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_uri(image: Image.Image, max_side: int = 256) -> str:
    """A PIL image as a PNG data URI, no larger than ``max_side``."""
    copy = image.convert("RGB")
    copy.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _plot_to_uri(plot: Callable[[Path], Path]) -> str:
    # The shared plot helpers write files; render them into a private temporary folder and inline the bytes.
    with tempfile.TemporaryDirectory() as folder:
        return file_uri(plot(Path(folder) / "figure.png"))


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


def risk_coverage_figure(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[Figure, str]:
    """Risk against coverage when answering only the most confident images, with the referral threshold marked."""
    coverage, risk, confidence = risk_coverage(probabilities, labels)
    answered = confidence >= threshold
    figure, axis = plt.subplots(figsize=(5.5, 4.8))
    axis.plot(coverage, risk, label="answer the most confident first")
    text = f"threshold {threshold:.3f}: nothing answered"
    if answered.any():
        k = int(answered.sum())
        axis.scatter(
            [coverage[k - 1]], [risk[k - 1]], color="C3", zorder=3, label=f"referral threshold {threshold:.3f}"
        )
        text = (
            f"at the referral threshold {threshold:.3f} the model answers {coverage[k - 1]:.1%} of images "
            f"with an error rate of {risk[k - 1]:.1%} and refers {1 - coverage[k - 1]:.1%} to a person "
            f"(error rate when answering all: {risk[-1]:.1%})"
        )
    axis.set(
        xlabel="coverage (share of images answered)", ylabel="risk (error rate among answered)", title="Risk-coverage"
    )
    axis.set_xlim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return Figure("Risk-coverage curve", figure_uri(figure), "Selective prediction: " + text + "."), text


# --- explanations ----------------------------------------------------------------------------------


def _load_model_sized(path: Path, explainer: Any) -> tuple[Image.Image, torch.Tensor] | None:
    try:
        image = load_image_rgb(path)
    except (ImageDecodeError, OSError):
        return None
    return image, explainer.to_uint8([image])[0]


def confident_mistakes(
    result: EvaluationResult, explainer: Any, class_names: Sequence[str], count: int
) -> tuple[list[dict[str, str]], int]:
    """Tiles for the ``count`` most confident wrong answers: Grad-CAM for the predicted and for the true class."""
    from braintumor.explain.overlay import overlay_heatmap

    predicted = result.probabilities.argmax(axis=1)
    confidence = result.probabilities.max(axis=1)
    wrong = np.flatnonzero(predicted != result.labels)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")]
    tiles: list[dict[str, str]] = []
    for index in order:
        if len(tiles) >= count:
            break
        loaded = _load_model_sized(Path(result.paths[index]), explainer)
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


def sample_for_sanity(labels: np.ndarray, count: int, seed: int) -> list[int]:
    """Up to ``count`` indices spread over the classes (seeded)."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    classes = np.unique(labels)
    for position, label in enumerate(classes):
        share = count // len(classes) + (1 if position < count % len(classes) else 0)
        members = np.flatnonzero(labels == label)
        chosen.extend(rng.choice(members, size=min(share, len(members)), replace=False).tolist())
    return sorted(chosen)


# --- the report ------------------------------------------------------------------------------------


def _versions_table(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    trained = config.get("versions", {}) if isinstance(config.get("versions"), dict) else {}
    now = library_versions()
    for name in _EXTRA_LIBRARIES:
        try:
            now[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            now[name] = "not installed"
    names = list(dict.fromkeys([*trained, *now]))
    return [(name, str(trained.get(name, "-")), str(now.get(name, "-"))) for name in names]


def _fmt(value: Any, percent: bool = False) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1%}" if percent else f"{value:.4f}"
    return "-"


def _framing(prep: Preprocessing) -> str:
    framing = "cropped to the head, padded to square" if prep.crop == "head" else "squashed to square"
    intensity = {
        "none": "",
        "equalize": ", histogram-equalised",
        "clahe": ", CLAHE-equalised",
        "window": ", contrast-windowed (head's 1st-99th percentiles)",
    }[prep.intensity]
    return framing + intensity


def _architecture(recipe: Recipe, training: dict[str, Any]) -> str:
    """One line on the network and how it was trained (probe, fine-tuning stages, WiSE-FT)."""
    if recipe.model.architecture == "custom_cnn":
        return f"custom CNN, conv channels {recipe.model.conv_channels}"
    head = "a linear probe head" if recipe.model.head == "linear" else "the seed's head"
    stages = recipe.train.finetune_stages
    if stages:
        tuning = "head trained on the frozen backbone, then " + "; ".join(
            f"top {stage.unfreeze} layer groups fine-tuned for {stage.epochs} epoch(s) at LR {stage.learning_rate:g}"
            + (" on cached activations of the frozen layers" if stage.cache_frozen_layers else "")
            for stage in stages
        )
        wise = (training.get("finetuning") or {}).get("wise_ft")
        if wise:
            tuning += f"; WiSE-FT alpha {wise['alpha']:g} (chosen on validation loss)"
    else:
        tuning = "frozen" if recipe.model.freeze_backbone else "fine-tuned"
    weights = "pretrained" if recipe.model.pretrained else "random init"
    return f"timm {recipe.model.backbone} ({weights}; {tuning}) + {head}"


def build_report(
    result: EvaluationResult,
    bundle: Bundle | Path | str,
    out_path: Path | str | None = None,
    *,
    n_mistakes: int = 8,
    sanity_images: int = 8,
    n_bootstrap: int = 1000,
    seed: int = 0,
    show_progress: bool = False,
) -> Path:
    """Write the self-contained HTML report of ``result`` (default ``<result.out_dir>/report.html``)."""
    from braintumor.explain.explainer import Explainer
    from braintumor.explain.run import plot_deletion_curves, sanity_checks

    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out_path = Path(out_path) if out_path is not None else Path(result.out_dir) / REPORT_FILE
    if len(result.labels) == 0:
        raise BrainTumorError("the evaluation holds no images: nothing to report")
    metrics = result.metrics
    class_names = list(bundle.class_names)
    n_classes = len(class_names)
    labels, probabilities = np.asarray(result.labels), np.asarray(result.probabilities)
    predicted = probabilities.argmax(axis=1)
    split = str(metrics.get("split", "test"))
    # TEMPORARY (being replaced by typed field access): the typed config as plain dicts.
    config = bundle.config.to_json_dict()
    training = config["training"]
    extras = {key: value for key, value in config["extras"].items() if value is not None}

    with progress_bar(show_progress) as progress:
        task = progress.add_task("Writing report", total=6)

        # Official and deduplicated numbers with confidence intervals.
        official = bootstrap_intervals(labels, predicted, n_classes, n_resamples=n_bootstrap, seed=seed)
        adopt_recorded_intervals(official, metrics.get("confidence_intervals"), class_names)
        dedup = metrics.get("deduplicated") or getattr(result, "deduplicated", None)
        dedup = dedup if isinstance(dedup, dict) else None
        dedup_intervals = None
        mask: np.ndarray | None = None
        dedup_note = str(getattr(result, "audit_note", None) or "No data audit was run for this evaluation.")
        dedup_note = f"No deduplicated metrics: {dedup_note} (braintumor audit ROOT, then evaluate again)."
        if dedup is not None:
            mask = dedup_mask(result, dedup)
            if mask is not None and mask.any():
                dedup_intervals = bootstrap_intervals(
                    labels[mask], predicted[mask], n_classes, n_resamples=n_bootstrap, seed=seed
                )
                adopt_recorded_intervals(dedup_intervals, dedup.get("confidence_intervals"), class_names)
            excluded = ""
            if "excluded_exact_copies" in dedup or "excluded_near_copies" in dedup:
                excluded = (
                    f": {dedup.get('excluded_exact_copies', 0)} byte-identical and "
                    f"{dedup.get('excluded_near_copies', 0)} near copies left out"
                )
            dedup_note = (
                f"The deduplicated split keeps only test images with no exact or near copy in Training"
                f"{excluded} ({dedup.get('n_images', '?')} of {metrics.get('n_images', '?')} images kept; "
                f"audit {dedup.get('audit', 'not named')})."
            )
        progress.advance(task)

        def dedup_cell(key: str, percent: bool = True) -> str:
            if dedup is None:
                return "no audit run"
            if dedup_intervals is not None and key in dedup_intervals:
                return dedup_intervals[key].text(percent)
            return _fmt(dedup.get(key), percent)

        headline = [
            {
                "name": "images",
                "official": str(metrics.get("n_images", len(labels))),
                "dedup": str(dedup.get("n_images", "-")) if dedup else "no audit run",
            },
            {"name": "accuracy", "official": official["accuracy"].text(True), "dedup": dedup_cell("accuracy")},
            {"name": "macro-F1", "official": official["macro_f1"].text(), "dedup": dedup_cell("macro_f1", False)},
            {
                "name": "cross-entropy",
                "official": _fmt(metrics.get("loss")),
                "dedup": _fmt(dedup.get("loss")) if dedup else "no audit run",
            },
        ]
        official_support = np.bincount(labels, minlength=n_classes)
        dedup_support = np.bincount(labels[mask], minlength=n_classes) if mask is not None and dedup_intervals else None
        for index, name in enumerate(class_names):
            # Recall of a class with no image is undefined, not 0%.
            official_recall = official["recall"][index].text(True) if official_support[index] else "no images"
            dedup_recall = "no audit run"
            if dedup is not None:
                if dedup_support is not None:
                    has_images = bool(dedup_support[index])
                    dedup_recall = dedup_intervals["recall"][index].text(True) if has_images else "no images"
                else:
                    per_class = dedup.get("per_class", {}).get(name, {})
                    has_images = per_class.get("support", 1) != 0
                    dedup_recall = _fmt(per_class.get("recall"), True) if has_images else "no images"
            headline.append({"name": f"recall {name}", "official": official_recall, "dedup": dedup_recall})

        # Figures of the metrics.
        roc, aucs = roc_figure(labels, probabilities, class_names)
        per_class = [
            {
                "name": name,
                "precision": official["precision"][i].text(),
                "recall": official["recall"][i].text(),
                "f1": official["f1"][i].text(),
                "auc": aucs[i],
                "support": int((labels == i).sum()),
            }
            for i, name in enumerate(class_names)
        ]
        confusion = (
            metrics.get("confusion_matrix")
            or classification_metrics(labels, probabilities, class_names)["confusion_matrix"]
        )
        confusion_uri = _plot_to_uri(
            lambda path: plot_confusion_matrix(confusion, class_names, path, title=f"{bundle.name} on {split}")
        )
        metric_figures = [
            Figure("Confusion matrix", confusion_uri, "Counts; colour is the share of each true class (recall)."),
            roc,
        ]
        progress.advance(task)

        # Calibration and selective prediction.
        calibration_figures: list[Figure] = []
        calibration_notes: list[str] = []
        temperature = extras.get("temperature")
        if isinstance(temperature, int | float):
            calibration_figures.append(reliability_figure(probabilities, labels, float(temperature)))
        else:
            calibration_notes.append(
                "The bundle is not calibrated (no temperature in its extras): no reliability diagram. "
                f"Top-label ECE of the raw probabilities here: {expected_calibration_error(probabilities, labels):.3f}."
            )
        threshold = extras.get("refer_threshold")
        selective_text = None
        if threshold is not None:
            figure, selective_text = risk_coverage_figure(probabilities, labels, threshold)
            calibration_figures.append(figure)
        elif "refer_threshold" in extras:
            calibration_notes.append(f"The bundle's refer_threshold {extras['refer_threshold']!r} is not a number.")
        else:
            calibration_notes.append(
                "The bundle has no referral threshold (selective prediction): no risk-coverage curve."
            )
        progress.advance(task)

        # Training curves.
        training_figures: list[Figure] = []
        training_notes: list[str] = []
        history = training.get("history") or []
        if history:
            uri = _plot_to_uri(lambda path: plot_training_curves(history, path, title=bundle.name))
            training_figures.append(
                Figure(
                    "Training curves",
                    uri,
                    f"Loss and accuracy per epoch on the training and validation splits; best epoch "
                    f"{training.get('best_epoch', '?')} of {training.get('epochs_run', len(history))} (restored).",
                )
            )
        else:
            training_notes.append("The bundle records no training history.")
        progress.advance(task)

        # Explanations: confident mistakes and sanity checks.
        explainer = Explainer(bundle)
        mistakes, n_wrong = confident_mistakes(result, explainer, class_names, n_mistakes)
        mistakes_note = (
            f"{len(mistakes)} of the {n_wrong} wrong answers, most confident first. Left: Grad-CAM "
            f"({explainer.layer_name}) for the predicted class; right: for the true class."
            if n_wrong
            else "The model made no mistakes on this split."
        )
        progress.advance(task)
        sanity_rows: list[dict[str, Any]] = []
        sanity_figures: list[Figure] = []
        sanity: dict[str, Any] | None = None
        sanity_note = ""
        loaded = []
        for index in sample_for_sanity(labels, sanity_images, seed):
            item = _load_model_sized(Path(result.paths[index]), explainer)
            if item is not None:
                loaded.append((item[1], int(predicted[index])))
        if loaded:
            inputs = explainer.to_inputs(torch.stack([uint8 for uint8, _ in loaded]))
            # Fewer deletion steps and random orders than the explain command: the report must stay quick on a CPU.
            sanity = sanity_checks(
                explainer,
                inputs,
                [t for _, t in loaded],
                ("gradcam", "gradcam++"),
                steps=10,
                random_orders=2,
                seed=seed,
            )
            for method, values in sanity["methods"].items():
                rand, deletion = values["randomisation"], values["deletion"]
                sanity_rows.append(
                    {
                        "method": method,
                        "rho": f"{rand['mean_abs_rank_correlation']:.3f}",
                        "threshold": rand["threshold"],
                        "rand_pass": rand["passed"],
                        "constant": rand["constant_maps"],
                        "auc_attr": f"{deletion['auc_attributed']:.3f}",
                        "auc_random": f"{deletion['auc_random']:.3f}",
                        "del_pass": deletion["passed"],
                        "wins": f"{deletion['images_faster_than_random']} of {len(deletion['per_image_auc_random'])}",
                    }
                )
            sanity_figures.append(
                Figure(
                    "Deletion curves",
                    _plot_to_uri(lambda path: plot_deletion_curves(sanity, path)),
                    "Probability of the predicted class as pixels are set to black, most attributed first "
                    "(solid) or in a random order (dashed: the ranking of random maps on the Grad-CAM layer's grid, "
                    "upsampled the same way, mean of 2). A faithful map falls faster.",
                )
            )
            sanity_note = (
                f"On {sanity['n_images']} {split} images spread over the classes, explaining the predicted class. "
                "Model randomisation: every layer re-initialised; the maps must stop agreeing with the trained "
                "model's (Adebayo et al., 2018). SHAP sanity checks: braintumor explain --method shap --sanity."
            )
        progress.advance(task)

    # Model card text, from the numbers above.
    recipe = bundle.recipe
    architecture = _architecture(recipe, training)
    ensemble = config.get("ensemble")
    if ensemble:
        members = ", ".join(member.get("name", "?") for member in ensemble.get("members", []))
        architecture = f"ensemble (mean probability, weights {ensemble.get('weights')}) of {members}; first: " + (
            architecture
        )
    prep = bundle.preprocessing
    card_details = [
        ("Model", f"{bundle.name}: {recipe.description}" if recipe.description else bundle.name),
        ("Architecture", architecture),
        ("Input", f"{prep.image_size}x{prep.image_size} RGB, {_framing(prep)}, mean {prep.mean}, std {prep.std}"),
        ("Classes", ", ".join(class_names)),
        ("Bundle", f"{bundle.path} (created {config.get('created_utc', '?')})"),
        ("Evaluated on", f"{metrics.get('data_root', '?')} / {split} ({len(labels)} images)"),
    ]
    intended_use = [
        "Research and teaching: comparing methods for classifying single axial, coronal or sagittal brain MRI "
        "slices of public data sets into glioma, meningioma, pituitary tumour or no tumour.",
        "Not a medical device. Not for diagnosis, screening, triage or any decision about a patient; it has not "
        "been validated clinically, on any scanner, hospital or population.",
        "Any other input (other pathologies, other body parts, other modalities, non-MRI images) is still forced "
        "into one of the four classes: the model cannot say 'none of these'.",
    ]
    duplicates = training.get("duplicates", {}) if isinstance(training.get("duplicates"), dict) else {}
    training_data = [
        f"Training folder: {training.get('data_root', 'not recorded')}; {training.get('n_train', '?')} images for "
        f"fitting and {training.get('n_val', '?')} for validation (stratified split of Training); class counts "
        f"{training.get('train_class_counts', 'not recorded')}.",
        "Byte-identical copies inside Training: "
        + (
            f"{duplicates.get('removed_copies', 0)} removed before splitting"
            + (
                f", {duplicates.get('removed_label_conflicts')} with conflicting labels dropped"
                if duplicates.get("removed_label_conflicts")
                else ""
            )
            if duplicates.get("enabled")
            else "not removed"
        )
        + ".",
        "Known leakage: the project's default data (Sartaj Bhuvaji's public Brain Tumor MRI set) holds byte-identical "
        "copies of images across its Training and Testing folders, nearly all no_tumor, and many more near copies "
        "(re-encoded, resized, mirrored), so accuracy on the official Testing split overstates accuracy on unseen "
        "images; the deduplicated column leaves them out.",
        "Known shift: that Testing folder is distribution-shifted from Training (glioma recall on it is low for every "
        "published model), and the data set has no patient identifiers, so slices of one patient may sit on both "
        "sides of the validation split.",
    ]
    card_metrics = [
        f"Official {split}: accuracy {official['accuracy'].text(True)}, macro-F1 {official['macro_f1'].text()} "
        f"({len(labels)} images, {n_bootstrap} bootstrap resamples).",
    ]
    if dedup is not None:
        card_metrics.append(
            f"Deduplicated {split}: accuracy {dedup_cell('accuracy')}, macro-F1 {dedup_cell('macro_f1', False)} "
            f"({dedup.get('n_images', '?')} images)."
        )
    else:
        card_metrics.append("Deduplicated split: no audit run for this evaluation.")
    card_metrics.append(
        "Recall per class: "
        + "; ".join(f"{name} {official['recall'][i].text(True)}" for i, name in enumerate(class_names))
        + "."
    )
    if isinstance(training.get("val_metrics"), dict) and "accuracy" in training["val_metrics"]:
        card_metrics.append(f"Validation split (from Training) accuracy: {training['val_metrics']['accuracy']:.1%}.")
    limits = [
        "One public data set of 2D JPEG slices: no 3D volumes, no MRI sequence (T1/T2/FLAIR) information, "
        "no clinical data.",
        "Images are cropped to the head and padded to a square before resizing."
        if prep.crop == "head"
        else "Images are squashed to a square without keeping the aspect ratio, as the seed project did.",
        "Confidence intervals cover the resampling of these test images only, not other hospitals or scanners.",
        "Saliency maps show where the score is sensitive, not why; they can look plausible and still be wrong.",
    ]
    if not isinstance(temperature, int | float):
        limits.append(
            "Probabilities are not calibrated: a probability of 0.9 does not mean 90% of such answers are right."
        )
    failure_modes: list[str] = []
    recalls = [official["recall"][i].value for i in range(n_classes)]
    worst = int(np.argmin(recalls))
    failure_modes.append(f"Lowest recall: {class_names[worst]} at {recalls[worst]:.1%}.")
    matrix = np.asarray(confusion, dtype=int)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    if off_diagonal.sum():
        true_index, guess_index = np.unravel_index(int(off_diagonal.argmax()), off_diagonal.shape)
        failure_modes.append(
            f"Most frequent confusion: {class_names[true_index]} predicted as {class_names[guess_index]} "
            f"({off_diagonal[true_index, guess_index]} of {matrix[true_index].sum()} {class_names[true_index]} images)."
        )
    confident_wrong = int(((predicted != labels) & (probabilities.max(axis=1) >= CONFIDENT_MISTAKE)).sum())
    failure_modes.append(
        f"{confident_wrong} wrong answers were given with at least {CONFIDENT_MISTAKE:.0%} confidence "
        f"(of {int((predicted != labels).sum())} wrong answers)."
    )
    if dedup is not None and isinstance(dedup.get("accuracy"), int | float):
        failure_modes.append(
            f"Accuracy is {official['accuracy'].value:.1%} on the official split and {dedup['accuracy']:.1%} "
            "without the images that have copies in Training."
        )
    if selective_text:
        failure_modes.append("Selective prediction: " + selective_text + ".")
    if sanity:
        for method, values in sanity["methods"].items():
            if not values["randomisation"]["passed"] or not values["deletion"]["passed"]:
                failure_modes.append(f"The {method} maps failed a sanity check (see Explanations): do not trust them.")

    data_rows = [
        ("evaluated split", f"{metrics.get('data_root', '?')} / {split}"),
        ("images evaluated", str(len(labels))),
        ("files skipped (undecodable)", str(len(result.skipped))),
        ("training data root", str(training.get("data_root", "not recorded"))),
        ("training / validation images", f"{training.get('n_train', '?')} / {training.get('n_val', '?')}"),
        ("evaluation files", str(result.out_dir)),
    ]
    bundle_rows = [
        ("path", str(bundle.path)),
        ("recipe", bundle.name),
        ("created (UTC)", str(config.get("created_utc", "?"))),
        ("format", f"{config.get('format', '?')} v{config.get('format_version', '?')}"),
        ("preprocessing", str(prep.model_dump(mode="json"))),
        ("extras", str({k: v for k, v in extras.items()} or "none")),
        ("training time", f"{training.get('duration_s', '?')} s"),
    ]
    context = {
        "title": f"Evaluation report: {bundle.name} on {split}",
        "subtitle": f"{len(labels)} images from {metrics.get('data_root', '?')}; bundle {bundle.path}",
        "split": split,
        "headline": headline,
        "ci_note": "Brackets: 95% percentile bootstrap confidence intervals over the images (accuracy, macro-F1 and "
        "recall as evaluate recorded them in metrics.json when it did; precision and F1 per class from "
        f"scipy.stats.bootstrap with {n_bootstrap} resamples).",
        "dedup_note": dedup_note,
        "card_details": card_details,
        "intended_use": intended_use,
        "training_data": training_data,
        "card_metrics": card_metrics,
        "limits": limits,
        "failure_modes": failure_modes,
        "per_class": per_class,
        "metric_figures": metric_figures,
        "calibration_figures": calibration_figures,
        "calibration_notes": calibration_notes,
        "training_figures": training_figures,
        "training_notes": training_notes,
        "mistakes": mistakes,
        "mistakes_note": mistakes_note,
        "sanity_rows": sanity_rows,
        "sanity_figures": sanity_figures,
        "sanity_note": sanity_note or "No test image could be read back for the sanity checks.",
        "data_rows": data_rows,
        "bundle_rows": bundle_rows,
        "versions": _versions_table(config),
        "recipe_yaml": yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "braintumor_version": metadata.version("braintumor"),
    }
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.from_string(REPORT_TEMPLATE).render(**context)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_path.with_name(f".{out_path.name}.tmp")
    temporary.write_text(html, encoding="utf-8")
    os.replace(temporary, out_path)
    if sanity is not None:
        from braintumor.io import write_json_atomic

        write_json_atomic(out_path.with_name("sanity.json"), sanity)
    return out_path
