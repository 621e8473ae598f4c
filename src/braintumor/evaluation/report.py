"""``report.html``: every result of one evaluation in a single self-contained file a person can read offline.

The report holds the official and the deduplicated metrics side by side (the latter from
``metrics["deduplicated"]`` when a data audit ran), bootstrap 95% confidence intervals, training
curves, the confusion matrix, per-class and ROC numbers, a reliability diagram (calibrated bundles),
a risk-coverage curve (bundles with a referral threshold), the input guard's scores on the validation
and the evaluated split with the images it flagged, the most confident mistakes with their
Grad-CAM maps, the maps' sanity checks and a model card. Figures are PNG data URIs; there is no
script and no link to anything outside the file.

The numbers come from :mod:`~braintumor.evaluation.report_data` and the images from
:mod:`~braintumor.evaluation.report_figures`; each ``*_section`` function here returns the part of
the template's context (:data:`~braintumor.evaluation.report_template.REPORT_TEMPLATE`) for one part of the page.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> from braintumor.evaluation.evaluate import evaluate_bundle
    >>> from braintumor.bundle import load_bundle
    >>> from braintumor.bundle.examples import tiny_bundle
    >>> work = Path(tempfile.mkdtemp())
    >>> bundle = load_bundle(tiny_bundle(work / "b"))
    >>> root = make_synthetic_dataset(work / "data", per_class=2, test_per_class=3, size=32)
    >>> result = evaluate_bundle(bundle, root, "Testing", work / "eval", show_progress=False)
    >>> build_report(result, bundle, n_bootstrap=50, sanity_images=2).name
    'report.html'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
import numpy as np
import yaml

from braintumor.bundle import Bundle, TrainingRecord, library_versions, load_bundle
from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing
from braintumor.errors import BrainTumorError
from braintumor.evaluation.adaptation_info import adaptation_text
from braintumor.evaluation.calibration import expected_calibration_error
from braintumor.evaluation.evaluate import EvaluationResult
from braintumor.evaluation.plots import plot_confusion_matrix, plot_training_curves
from braintumor.evaluation.report_data import (
    ReportData,
    interval_text,
    number_text,
    report_data,
    validation_ood_scores,
)
from braintumor.evaluation.report_figures import (
    Figure,
    confident_mistakes,
    flagged_examples,
    guard_histogram_figure,
    plot_to_uri,
    reliability_figure,
    risk_coverage_figure,
    roc_figure,
    selective_text,
)
from braintumor.evaluation.report_template import REPORT_TEMPLATE
from braintumor.io import write_json_atomic
from braintumor.progress import progress_bar

if TYPE_CHECKING:
    from braintumor.explain.explainer import Explainer

REPORT_FILE = "report.html"
CONFIDENT_MISTAKE = 0.9  # a wrong answer at or above this probability is the most harmful kind
FLAGGED_EXAMPLES = 8  # thumbnails of the images the input guard flagged, highest score first
_EXTRA_LIBRARIES = ("captum", "scikit-learn", "scipy", "torchmetrics", "matplotlib")

Section = Callable[[ReportData], dict[str, Any]]

# What the template shows for a part of the page whose data the bundle or the evaluation lacks.
_ABSENT_SECTIONS: dict[str, Any] = {
    "training_figures": [],
    "training_notes": ["The bundle records no training history."],
    "sanity_rows": [],
    "sanity_figures": [],
    "sanity_note": "No test image could be read back for the sanity checks.",
}

INTENDED_USE = [
    "Research and teaching: comparing methods for classifying single axial, coronal or sagittal brain MRI "
    "slices of public data sets into glioma, meningioma, pituitary tumour or no tumour.",
    "Not a medical device. Not for diagnosis, screening, triage or any decision about a patient; it has not "
    "been validated clinically, on any scanner, hospital or population.",
    "Any other input (other pathologies, other body parts, other modalities, non-MRI images) is still forced "
    "into one of the four classes: the model cannot say 'none of these'.",
]
NO_GUARD_TEXT = (
    "The bundle has no input guard (it was trained before the guard existed): every input, whatever it is, gets "
    "one of the four classes. Add one with `braintumor guard BUNDLE --data ROOT`."
)
KNOWN_DATA_PROBLEMS = [
    "Known leakage: the project's default data (Sartaj Bhuvaji's public Brain Tumor MRI set) holds byte-identical "
    "copies of images across its Training and Testing folders, nearly all no_tumor, and many more near copies "
    "(re-encoded, resized, mirrored), so accuracy on the official Testing split overstates accuracy on unseen "
    "images; the deduplicated column leaves them out.",
    "Known shift: that Testing folder is distribution-shifted from Training (glioma recall on it is low for every "
    "published model), and the data set has no patient identifiers, so slices of one patient may sit on both "
    "sides of the validation split.",
]


# --- small texts -----------------------------------------------------------------------------------


def _known(value: object, unknown: str = "?") -> str:
    return unknown if value is None else str(value)


def _versions_table(trained: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(library, version when trained, version now)`` rows."""
    now = library_versions()
    for name in _EXTRA_LIBRARIES:
        try:
            now[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            now[name] = "not installed"
    names = list(dict.fromkeys([*trained, *now]))
    return [(name, str(trained.get(name, "-")), str(now.get(name, "-"))) for name in names]


def _framing(prep: Preprocessing) -> str:
    framing = "cropped to the head, padded to square" if prep.crop == "head" else "squashed to square"
    intensity = {
        "none": "",
        "equalize": ", histogram-equalised",
        "clahe": ", CLAHE-equalised",
        "window": ", contrast-windowed (head's 1st-99th percentiles)",
    }[prep.intensity]
    return framing + intensity


def _architecture(recipe: Recipe, training: TrainingRecord) -> str:
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
        # The fine-tuning record has a WiSE-FT entry only when the recipe asked for weight interpolation.
        if training.finetuning and "wise_ft" in training.finetuning:
            tuning += f"; WiSE-FT alpha {training.finetuning['wise_ft']['alpha']:g} (chosen on validation loss)"
    else:
        tuning = "frozen" if recipe.model.freeze_backbone else "fine-tuned"
    weights = "pretrained" if recipe.model.pretrained else "random init"
    return f"timm {recipe.model.backbone} ({weights}; {tuning}) + {head}"


def _duplicates_text(duplicates: Mapping[str, Any]) -> str:
    """What training did with byte-identical copies inside Training (its ``duplicates`` record)."""
    # Training always records "enabled", and the counts when it is; bundles older than the record have {}.
    if not duplicates or not duplicates["enabled"]:
        return "not removed"
    conflicts = duplicates["removed_label_conflicts"]
    dropped = f", {conflicts} with conflicting labels dropped" if conflicts else ""
    return f"{duplicates['removed_copies']} removed before splitting{dropped}"


# --- summary ---------------------------------------------------------------------------------------


def _headline(data: ReportData) -> list[dict[str, str]]:
    """Official and deduplicated images, accuracy, macro-F1, cross-entropy and recall per class."""
    official, metrics, dedup = data.official, data.metrics, data.dedup
    rows = [
        {
            "name": "images",
            "official": str(metrics.get("n_images", len(data.labels))),
            "dedup": str(dedup.metrics.get("n_images", "-")) if dedup is not None else "no audit run",
        },
        {
            "name": "accuracy",
            "official": interval_text(official["accuracy"], True),
            "dedup": data.dedup_cell("accuracy"),
        },
        {
            "name": "macro-F1",
            "official": interval_text(official["macro_f1"]),
            "dedup": data.dedup_cell("macro_f1", False),
        },
        {
            "name": "cross-entropy",
            "official": number_text(metrics.get("loss")),
            "dedup": data.dedup_cell("loss", False),
        },
    ]
    support = np.bincount(data.labels, minlength=len(data.class_names))
    for index, name in enumerate(data.class_names):
        # Recall of a class with no image is undefined, not 0%.
        official_recall = interval_text(official["recall"][name], True) if support[index] else "no images"
        dedup_recall = dedup.recall_cell(index, name) if dedup is not None else "no audit run"
        rows.append({"name": f"recall {name}", "official": official_recall, "dedup": dedup_recall})
    return rows


def _dedup_note(data: ReportData) -> str:
    """Which images the deduplicated column keeps, or why there is no such column."""
    if data.dedup is None:
        why = data.result.audit_note or "No data audit was run for this evaluation."
        return f"No deduplicated metrics: {why} (braintumor audit ROOT, then evaluate again)."
    dedup = data.dedup.metrics
    excluded = ""
    if "excluded_exact_copies" in dedup or "excluded_near_copies" in dedup:
        excluded = (
            f": {dedup.get('excluded_exact_copies', 0)} byte-identical and "
            f"{dedup.get('excluded_near_copies', 0)} near copies left out"
        )
    return (
        f"The deduplicated split keeps only test images with no exact or near copy in Training"
        f"{excluded} ({dedup.get('n_images', '?')} of {data.metrics.get('n_images', '?')} images kept; "
        f"audit {dedup.get('audit', 'not named')})."
    )


def summary_section(data: ReportData) -> dict[str, Any]:
    """Title, the headline table and the notes on its intervals and on the deduplicated column."""
    root = data.metrics.get("data_root", "?")
    return {
        "title": f"Evaluation report: {data.bundle.name} on {data.split}",
        "subtitle": f"{len(data.labels)} images from {root}; bundle {data.bundle.path}",
        "split": data.split,
        "headline": _headline(data),
        "ci_note": "Brackets: 95% percentile bootstrap confidence intervals over the images (accuracy, macro-F1 and "
        "recall as evaluate recorded them in metrics.json when it did; precision and F1 per class from the same "
        f"bootstrap with {data.n_bootstrap} resamples).",
        "dedup_note": _dedup_note(data),
    }


# --- model card ------------------------------------------------------------------------------------


def _intended_use(data: ReportData) -> list[str]:
    """:data:`INTENDED_USE`, whose last line (no 'none of these') holds only for a bundle without an input guard."""
    guard = data.bundle.guard
    if guard is None:
        return INTENDED_USE
    spec = guard.spec
    return [
        *INTENDED_USE[:-1],
        f"An input guard ({spec.detector} distance on the model's penultimate features, plus grey-level image "
        "evidence on its input) flags inputs unlike the Training images as out of distribution (ood_score > 1) "
        f"instead of only diagnosing them; its thresholds sit at the {spec.quantile:g} quantile of the validation "
        f"scores and flag {spec.validation_flag_rate:.1%} of the {spec.n_val} validation images. It is a screen, "
        "not a guarantee: an MRI slice close to Training in these features (another pathology, another scanner) "
        "can pass it and is still forced into one of the four classes.",
    ]


def _card_details(data: ReportData) -> list[tuple[str, str]]:
    bundle, config, prep = data.bundle, data.bundle.config, data.bundle.preprocessing
    recipe = bundle.recipe
    architecture = _architecture(recipe, config.training)
    if config.ensemble is not None:
        members = ", ".join(member.name for member in config.ensemble.members)
        weights = config.ensemble.member_weights()
        architecture = f"ensemble (mean probability, weights {weights}) of {members}; first: {architecture}"
    return [
        ("Model", f"{bundle.name}: {recipe.description}" if recipe.description else bundle.name),
        ("Architecture", architecture),
        ("Input", f"{prep.image_size}x{prep.image_size} RGB, {_framing(prep)}, mean {prep.mean}, std {prep.std}"),
        ("Classes", ", ".join(data.class_names)),
        ("Bundle", f"{bundle.path} (created {_known(config.created_utc)})"),
        ("Evaluated on", f"{data.metrics.get('data_root', '?')} / {data.split} ({len(data.labels)} images)"),
        *_adaptation_details(data.metrics.get("adaptation")),
    ]


def _adaptation_details(summary: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The model card's rows for an adapted bundle: what it was adapted on and any overlap with the evaluation."""
    if summary is None:
        return []
    rows = [("Adaptation", adaptation_text(summary) or "")]
    if summary.get("warning"):
        rows.append(("Adaptation overlap", f"WARNING: {summary['warning']}"))
    return rows


def _training_data(training: TrainingRecord) -> list[str]:
    return [
        f"Training folder: {_known(training.data_root, 'not recorded')}; {_known(training.n_train)} images for "
        f"fitting and {_known(training.n_val)} for validation (stratified split of Training); class counts "
        f"{training.train_class_counts or 'not recorded'}.",
        f"Byte-identical copies inside Training: {_duplicates_text(training.duplicates)}.",
        *KNOWN_DATA_PROBLEMS,
    ]


def _card_metrics(data: ReportData) -> list[str]:
    official, split = data.official, data.split
    lines = [
        f"Official {split}: accuracy {interval_text(official['accuracy'], True)}, macro-F1 "
        f"{interval_text(official['macro_f1'])} ({len(data.labels)} images, {data.n_bootstrap} bootstrap resamples).",
    ]
    if data.dedup is not None:
        lines.append(
            f"Deduplicated {split}: accuracy {data.dedup_cell('accuracy')}, macro-F1 "
            f"{data.dedup_cell('macro_f1', False)} ({data.dedup.metrics.get('n_images', '?')} images)."
        )
    else:
        lines.append("Deduplicated split: no audit run for this evaluation.")
    recalls = "; ".join(f"{name} {interval_text(official['recall'][name], True)}" for name in data.class_names)
    lines.append(f"Recall per class: {recalls}.")
    guard = data.metrics.get("guard")
    if isinstance(guard, dict):
        accepted = guard["accepted"]
        lines.append(
            f"Input guard on {split}: {guard['n_flagged']} of {guard['n_images']} images flagged "
            f"({number_text(guard['flagged_share'], True)}); accuracy on the accepted images "
            f"{number_text(accepted['accuracy'] if accepted else None, True)}."
        )
    val_metrics = data.bundle.config.training.val_metrics
    if "accuracy" in val_metrics:
        lines.append(f"Validation split (from Training) accuracy: {val_metrics['accuracy']:.1%}.")
    return lines


def _limits(data: ReportData) -> list[str]:
    lines = [
        "One public data set of 2D JPEG slices: no 3D volumes, no MRI sequence (T1/T2/FLAIR) information, "
        "no clinical data.",
        "Images are cropped to the head and padded to a square before resizing."
        if data.bundle.preprocessing.crop == "head"
        else "Images are squashed to a square without keeping the aspect ratio, as the seed project did.",
        "Confidence intervals cover the resampling of these test images only, not other hospitals or scanners.",
        "Saliency maps show where the score is sensitive, not why; they can look plausible and still be wrong.",
    ]
    if data.bundle.config.extras.temperature is None:
        lines.append(
            "Probabilities are not calibrated: a probability of 0.9 does not mean 90% of such answers are right."
        )
    return lines


def _failure_modes(data: ReportData) -> list[str]:
    names = data.class_names
    recalls = [data.official["recall"][name]["value"] for name in names]
    worst = int(np.argmin(recalls))
    lines = [f"Lowest recall: {names[worst]} at {recalls[worst]:.1%}."]
    matrix = np.asarray(data.confusion, dtype=int)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    if off_diagonal.sum():
        true_index, guess_index = np.unravel_index(int(off_diagonal.argmax()), off_diagonal.shape)
        lines.append(
            f"Most frequent confusion: {names[true_index]} predicted as {names[guess_index]} "
            f"({off_diagonal[true_index, guess_index]} of {matrix[true_index].sum()} {names[true_index]} images)."
        )
    wrong = data.predicted != data.labels
    confident_wrong = int((wrong & (data.probabilities.max(axis=1) >= CONFIDENT_MISTAKE)).sum())
    lines.append(
        f"{confident_wrong} wrong answers were given with at least {CONFIDENT_MISTAKE:.0%} confidence "
        f"(of {int(wrong.sum())} wrong answers)."
    )
    dedup_accuracy = data.dedup.metrics.get("accuracy") if data.dedup is not None else None
    if isinstance(dedup_accuracy, int | float):
        lines.append(
            f"Accuracy is {data.official['accuracy']['value']:.1%} on the official split and {dedup_accuracy:.1%} "
            "without the images that have copies in Training."
        )
    threshold = data.bundle.config.extras.refer_threshold
    if threshold is not None:
        lines.append("Selective prediction: " + selective_text(data.probabilities, data.labels, threshold) + ".")
    if data.sanity is not None:
        for method, values in data.sanity["methods"].items():
            labels = values.get("label_randomisation", {"passed": True})
            if not (values["randomisation"]["passed"] and labels["passed"] and values["deletion"]["passed"]):
                lines.append(f"The {method} maps failed a sanity check (see Explanations): do not trust them.")
    return lines


def model_card_section(data: ReportData) -> dict[str, Any]:
    """The model card: details, intended use, training data, metrics, limits and the failure modes seen here."""
    return {
        "card_details": _card_details(data),
        "intended_use": _intended_use(data),
        "training_data": _training_data(data.bundle.config.training),
        "card_metrics": _card_metrics(data),
        "limits": _limits(data),
        "failure_modes": _failure_modes(data),
    }


# --- metrics, calibration, training ----------------------------------------------------------------


def metrics_section(data: ReportData) -> dict[str, Any]:
    """Per-class precision/recall/F1 with intervals and ROC AUC; the confusion matrix and ROC curves."""
    names, official = data.class_names, data.official
    roc, aucs = roc_figure(data.labels, data.probabilities, names)
    per_class = [
        {
            "name": name,
            "precision": interval_text(official["precision"][name]),
            "recall": interval_text(official["recall"][name]),
            "f1": interval_text(official["f1"][name]),
            "auc": aucs[index],
            "support": int((data.labels == index).sum()),
        }
        for index, name in enumerate(names)
    ]
    title = f"{data.bundle.name} on {data.split}"
    confusion_uri = plot_to_uri(lambda path: plot_confusion_matrix(data.confusion, names, path, title=title))
    confusion = Figure("Confusion matrix", confusion_uri, "Counts; colour is the share of each true class (recall).")
    return {"per_class": per_class, "metric_figures": [confusion, roc]}


def calibration_section(data: ReportData) -> dict[str, Any]:
    """The reliability diagram (calibrated bundles) and the risk-coverage curve (bundles with a threshold)."""
    extras = data.bundle.config.extras
    figures: list[Figure] = []
    notes: list[str] = []
    if extras.temperature is not None:
        figures.append(reliability_figure(data.probabilities, data.labels, extras.temperature))
    else:
        ece = expected_calibration_error(data.probabilities, data.labels)
        notes.append(
            "The bundle is not calibrated (no temperature in its extras): no reliability diagram. "
            f"Top-label ECE of the raw probabilities here: {ece:.3f}."
        )
    if extras.refer_threshold is not None:
        figures.append(risk_coverage_figure(data.probabilities, data.labels, extras.refer_threshold))
    else:
        notes.append("The bundle has no referral threshold (selective prediction): no risk-coverage curve.")
    return {"calibration_figures": figures, "calibration_notes": notes}


def _guard_rows(
    class_names: list[str], split: str, scores: np.ndarray, labels: np.ndarray, validation: np.ndarray | None
) -> list[tuple[str, str, str, str]]:
    """``(images, count, flagged, share)`` rows: the validation split, the evaluated split and each true class."""

    def row(name: str, values: np.ndarray) -> tuple[str, str, str, str]:
        """One row: the images' name, their count, how many are flagged and that share."""
        flagged = int((values > 1.0).sum())
        return (name, str(len(values)), str(flagged), number_text(flagged / len(values), True) if len(values) else "-")

    rows = [row("validation (from Training)", validation)] if validation is not None else []
    rows.append(row(f"{split}, all images", scores))
    rows += [row(f"{split}, true {name}", scores[labels == index]) for index, name in enumerate(class_names)]
    return rows


def _accepted_rows(guard: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """``(metric, all images, accepted images)`` rows from ``metrics.json["guard"]``."""
    if not isinstance(guard, Mapping) or guard.get("all_images") is None:
        return []
    everything, accepted = guard["all_images"], guard["accepted"] or {}
    return [
        ("images", str(everything["n_images"]), str(guard["n_accepted"])),
        ("accuracy", number_text(everything["accuracy"], True), number_text(accepted.get("accuracy"), True)),
        ("macro-F1", number_text(everything["macro_f1"]), number_text(accepted.get("macro_f1"))),
        ("cross-entropy", number_text(everything["loss"]), number_text(accepted.get("loss"))),
    ]


def guard_section(data: ReportData, *, count: int = FLAGGED_EXAMPLES) -> dict[str, Any]:
    """The input guard: score histograms (validation and this split), flag shares, accepted metrics, flagged images."""
    empty: dict[str, Any] = {"guard_rows": [], "guard_accepted": [], "guard_figures": [], "guard_examples": []}
    guard, scores = data.bundle.guard, data.result.ood_scores
    if guard is None:
        return {**empty, "guard_notes": [NO_GUARD_TEXT]}
    if scores is None:
        return {**empty, "guard_notes": ["This evaluation recorded no input guard scores: evaluate again."]}
    spec = guard.spec
    notes = [
        f"{spec.definition} Detector: {spec.detector}; thresholds at the {spec.quantile:g} quantile of the "
        f"validation scores, flagging {spec.validation_flag_rate:.1%} of the {spec.n_val} validation images at fitting."
    ]
    validation, problem = validation_ood_scores(data.bundle, data.metrics.get("data_root"))
    if problem is not None:
        notes.append(f"No validation histogram: {problem}.")
    scores = np.asarray(scores)
    histograms = {"validation": validation} if validation is not None else {}
    histograms[data.split] = scores
    examples = flagged_examples(data.result, data.class_names, count)
    n_flagged = int((scores > 1.0).sum())
    notes.append(
        f"{len(examples)} of the {n_flagged} flagged {data.split} images, highest score first."
        if n_flagged
        else f"The guard flagged none of the {data.split} images."
    )
    return {
        "guard_rows": _guard_rows(data.class_names, data.split, scores, data.labels, validation),
        "guard_accepted": _accepted_rows(data.metrics.get("guard")),
        "guard_figures": [guard_histogram_figure(histograms)],
        "guard_examples": examples,
        "guard_notes": notes,
    }


def training_section(data: ReportData) -> dict[str, Any]:
    """The training curves of the bundle's recorded history."""
    training = data.bundle.config.training
    uri = plot_to_uri(lambda path: plot_training_curves(training.history, path, title=data.bundle.name))
    epochs_run = len(training.history) if training.epochs_run is None else training.epochs_run
    caption = (
        "Loss and accuracy per epoch on the training and validation splits; best epoch "
        f"{_known(training.best_epoch)} of {epochs_run} (restored)."
    )
    return {"training_figures": [Figure("Training curves", uri, caption)], "training_notes": []}


# --- explanations ----------------------------------------------------------------------------------


def mistakes_section(data: ReportData, *, explainer: Explainer, count: int) -> dict[str, Any]:
    """Grad-CAM tiles of the ``count`` most confident mistakes."""
    mistakes, n_wrong = confident_mistakes(data.result, explainer, data.class_names, count)
    note = (
        f"{len(mistakes)} of the {n_wrong} wrong answers on images the input guard accepted, most confident first. "
        f"Left: Grad-CAM ({explainer.layer_name}) for the predicted class; right: for the true class. Flagged images "
        "have no diagnosis and are shown in the input guard section."
        if n_wrong
        else "The model made no mistakes on the images the input guard accepted."
    )
    return {"mistakes": mistakes, "mistakes_note": note}


def _label_test_cells(labels: dict[str, Any] | None) -> dict[str, Any]:
    """The label randomisation test's text and verdict (None: not run) for the sanity table."""
    if labels is None:
        return {"labels_text": "not run: no labelled validation images here", "labels_pass": None}
    text = (
        f"mean |Spearman rho| {labels['mean_abs_rank_correlation']:.3f} (threshold < {labels['threshold']}; "
        f"re-fitted: {labels['scope']})"
    )
    return {"labels_text": text, "labels_pass": labels["passed"]}


def sanity_section(data: ReportData, *, sanity: dict[str, Any]) -> dict[str, Any]:
    """The sanity checks of the maps: a table per method and the deletion curves."""
    from braintumor.explain.run import plot_deletion_curves

    rows = []
    for method, values in sanity["methods"].items():
        rand, deletion = values["randomisation"], values["deletion"]
        rows.append(
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
                **_label_test_cells(values.get("label_randomisation")),
            }
        )
    deletion_curves = Figure(
        "Deletion curves",
        plot_to_uri(lambda path: plot_deletion_curves(sanity, path)),
        "Probability of the predicted class as pixels are set to black, most attributed first "
        "(solid) or in a random order (dashed: the ranking of random maps on the Grad-CAM layer's grid, "
        "upsampled the same way, mean of 2). A faithful map falls faster.",
    )
    note = (
        f"On {sanity['n_images']} {data.split} images spread over the classes, explaining the predicted class. "
        "Model randomisation: every layer re-initialised; the maps must stop agreeing with the trained "
        "model's (Adebayo et al., 2018). Label randomisation: the head fitted again to shuffled labels of "
        "validation images; the maps must stop agreeing too. SHAP sanity checks: braintumor explain --method "
        "shap --sanity."
    )
    return {"sanity_rows": rows, "sanity_figures": [deletion_curves], "sanity_note": note}


# --- reproducibility -------------------------------------------------------------------------------


def reproducibility_section(data: ReportData) -> dict[str, Any]:
    """The evaluated data, the bundle, library versions then and now, and the recipe."""
    bundle, config = data.bundle, data.bundle.config
    training = config.training
    extras = {key: value for key, value in config.extras.model_dump(mode="json").items() if value is not None}
    return {
        "data_rows": [
            ("evaluated split", f"{data.metrics.get('data_root', '?')} / {data.split}"),
            ("images evaluated", str(len(data.labels))),
            ("files skipped (undecodable)", str(len(data.result.skipped))),
            ("training data root", _known(training.data_root, "not recorded")),
            ("training / validation images", f"{_known(training.n_train)} / {_known(training.n_val)}"),
            ("evaluation files", str(data.result.out_dir)),
        ],
        "bundle_rows": [
            ("path", str(bundle.path)),
            ("recipe", bundle.name),
            ("created (UTC)", _known(config.created_utc)),
            ("format", f"{config.format} v{config.format_version}"),
            ("preprocessing", str(bundle.preprocessing.model_dump(mode="json"))),
            ("extras", str(extras or "none")),
            ("training time", f"{_known(training.duration_s)} s"),
        ],
        "versions": _versions_table(config.versions),
        "recipe_yaml": yaml.safe_dump(bundle.recipe.model_dump(mode="json"), sort_keys=False),
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "braintumor_version": metadata.version("braintumor"),
    }


# --- the report ------------------------------------------------------------------------------------


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
    """Write the self-contained HTML report of ``result`` (default ``<result.out_dir>/report.html``).

    The sanity checks also go to ``sanity.json`` next to the report.
    """
    from braintumor.explain.explainer import Explainer

    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    out_path = Path(out_path) if out_path is not None else Path(result.out_dir) / REPORT_FILE
    if len(result.labels) == 0:
        raise BrainTumorError("the evaluation holds no images: nothing to report")
    with progress_bar(show_progress) as progress:
        task = progress.add_task("Writing report", total=None)
        explainer = Explainer(bundle)
        data = report_data(result, bundle, explainer, sanity_images=sanity_images, n_bootstrap=n_bootstrap, seed=seed)
        sections: list[Section] = [
            summary_section,
            model_card_section,
            metrics_section,
            calibration_section,
            guard_section,
        ]
        if bundle.config.training.history:
            sections.append(training_section)
        sections.append(partial(mistakes_section, explainer=explainer, count=n_mistakes))
        if data.sanity is not None:
            sections.append(partial(sanity_section, sanity=data.sanity))
        sections.append(reproducibility_section)
        progress.update(task, total=len(sections) + 1, completed=1)
        context = dict(_ABSENT_SECTIONS)
        for section in sections:
            context.update(section(data))
            progress.advance(task)
    _write_atomic(out_path, _render(context))
    if data.sanity is not None:
        write_json_atomic(out_path.with_name("sanity.json"), data.sanity)
    return out_path


def _render(context: dict[str, Any]) -> str:
    # StrictUndefined: a section that forgets a key the template reads fails instead of printing nothing.
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(REPORT_TEMPLATE).render(**context)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
