"""The numbers ``report.html`` is written from, computed once: intervals, the deduplicated subset, sanity checks,
and the input guard's scores of the validation split.

``metrics["deduplicated"]`` is read as a :func:`~braintumor.evaluation.metrics.classification_metrics`
dictionary; when it also lists which images it kept (``paths``/``kept_paths``) or dropped
(``excluded_paths``/``removed_paths``), its confidence intervals are computed too.

Example:
    >>> import numpy as np
    >>> intervals = report_intervals(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), ["a", "b"], None,
    ...                              n_bootstrap=50, seed=0)
    >>> interval_text(intervals["accuracy"], percent=True)[:5], sorted(intervals["f1"])
    ('75.0%', ['a', 'b'])
    >>> sample_for_sanity(np.array([0, 0, 0, 1, 1, 1]), 4, seed=0)  # two of each class
    [1, 2, 3, 5]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from braintumor.bundle import Bundle
from braintumor.bundle.validation import validation_samples
from braintumor.data.dataset import scan_images
from braintumor.errors import BrainTumorError
from braintumor.evaluation.evaluate import EvaluationResult
from braintumor.evaluation.metrics import PER_CLASS_STATISTICS, bootstrap_confidence_intervals, classification_metrics
from braintumor.evaluation.report_figures import load_model_sized
from braintumor.inference.predictor import Predictor

if TYPE_CHECKING:
    from braintumor.explain.explainer import Explainer

_KEPT_KEYS = ("paths", "kept_paths", "image_paths")
# Validation images whose shuffled labels the report's label randomisation test fits (fewer than explain's: the
# report must stay quick on a CPU).
REPORT_LABELLED_IMAGES = 64
_DROPPED_KEYS = ("excluded_paths", "removed_paths", "dropped_paths")


def interval_text(interval: Mapping[str, float], percent: bool = False) -> str:
    """``value [low, high]`` of one bootstrap interval."""
    value, low, high = interval["value"], interval["low"], interval["high"]
    if percent:
        return f"{value:.1%} [{low:.1%}, {high:.1%}]"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def number_text(value: Any, percent: bool = False) -> str:
    """A metric as text, ``-`` when it is missing or not a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.1%}" if percent else f"{value:.4f}"
    return "-"


@dataclass(frozen=True)
class Deduplicated:
    """The metrics on the audit's clean subset, with intervals (and support) when the audit names its images."""

    metrics: dict[str, Any]
    intervals: dict[str, Any] | None = None
    support: np.ndarray | None = None

    def cell(self, key: str, percent: bool = True) -> str:
        """The subset's ``key`` with its interval where there is one."""
        if self.intervals is not None and key in self.intervals:
            return interval_text(self.intervals[key], percent)
        return number_text(self.metrics.get(key), percent)

    def recall_cell(self, index: int, name: str) -> str:
        """Recall of class ``name`` (index ``index``) in the subset; ``no images`` when it has none."""
        if self.intervals is not None and self.support is not None:
            return interval_text(self.intervals["recall"][name], True) if self.support[index] else "no images"
        per_class = self.metrics.get("per_class", {}).get(name, {})
        return number_text(per_class.get("recall"), True) if per_class.get("support", 1) != 0 else "no images"


@dataclass(frozen=True)
class ReportData:
    """What every section of the report reads."""

    result: EvaluationResult
    bundle: Bundle
    split: str
    labels: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray
    official: dict[str, Any]
    dedup: Deduplicated | None
    confusion: list[list[int]]
    sanity: dict[str, Any] | None
    n_bootstrap: int

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result.metrics

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names)

    def dedup_cell(self, key: str, percent: bool = True) -> str:
        """The deduplicated column's ``key``, or why there is none."""
        return self.dedup.cell(key, percent) if self.dedup is not None else "no audit run"


def report_intervals(
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: list[str],
    recorded: dict[str, Any] | None,
    *,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 intervals, preferring those evaluate ``recorded``.

    ``recorded`` (``metrics["confidence_intervals"]``) holds accuracy, macro-F1 and recall: using them makes
    the terminal, ``metrics.json`` and the report show the same intervals whatever ``n_bootstrap`` is.
    """
    computed = bootstrap_confidence_intervals(
        labels,
        predicted,
        len(class_names),
        n_resamples=n_bootstrap,
        seed=seed,
        class_names=class_names,
        per_class=PER_CLASS_STATISTICS,
    )
    if recorded is None:
        return computed
    return {
        **computed,
        "accuracy": recorded["accuracy"],
        "macro_f1": recorded["macro_f1"],
        "recall": {**computed["recall"], **recorded["recall"]},
    }


def dedup_mask(paths: Sequence[Path], dedup: dict[str, Any]) -> np.ndarray | None:
    """Which evaluated images the deduplicated metrics cover, when the audit says so by path."""
    resolved = [str(Path(p).resolve()) for p in paths]
    for key in _KEPT_KEYS:
        if key in dedup:
            kept = {str(Path(p).resolve()) for p in dedup[key]}
            return np.array([p in kept for p in resolved])
    for key in _DROPPED_KEYS:
        if key in dedup:
            dropped = {str(Path(p).resolve()) for p in dedup[key]}
            return np.array([p not in dropped for p in resolved])
    return None


def _deduplicated(
    result: EvaluationResult, class_names: list[str], predicted: np.ndarray, *, n_bootstrap: int, seed: int
) -> Deduplicated | None:
    metrics = result.metrics.get("deduplicated") or result.deduplicated
    if metrics is None:
        return None
    mask = dedup_mask(result.paths, metrics)
    if mask is None or not mask.any():
        return Deduplicated(metrics)
    labels = np.asarray(result.labels)[mask]
    intervals = report_intervals(
        labels,
        predicted[mask],
        class_names,
        metrics.get("confidence_intervals"),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    return Deduplicated(metrics, intervals, np.bincount(labels, minlength=len(class_names)))


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


def report_sanity_checks(
    result: EvaluationResult, explainer: Explainer, predicted: np.ndarray, count: int, seed: int
) -> dict[str, Any] | None:
    """Randomisation and deletion checks of Grad-CAM and Grad-CAM++ on ``count`` images; ``None`` if none decodes."""
    from braintumor.explain.attributions import labelled_images
    from braintumor.explain.run import sanity_checks

    loaded: list[tuple[torch.Tensor, int]] = []
    for index in sample_for_sanity(np.asarray(result.labels), count, seed):
        item = load_model_sized(Path(result.paths[index]), explainer)
        if item is not None:
            loaded.append((item[1], int(predicted[index])))
    if not loaded:
        return None
    inputs = explainer.to_inputs(torch.stack([uint8 for uint8, _ in loaded]))
    # Fewer deletion steps and random orders than the explain command: the report must stay quick on a CPU.
    return sanity_checks(
        explainer,
        inputs,
        [target for _, target in loaded],
        ("gradcam", "gradcam++"),
        steps=10,
        random_orders=2,
        seed=seed,
        labelled=labelled_images(explainer.bundle, count=REPORT_LABELLED_IMAGES, seed=seed),
    )


def report_data(
    result: EvaluationResult,
    bundle: Bundle,
    explainer: Explainer,
    *,
    sanity_images: int,
    n_bootstrap: int,
    seed: int,
) -> ReportData:
    """Everything the sections need, computed once from the evaluation and the bundle."""
    class_names = list(bundle.class_names)
    labels, probabilities = np.asarray(result.labels), np.asarray(result.probabilities)
    predicted = probabilities.argmax(axis=1)
    metrics = result.metrics
    official = report_intervals(
        labels,
        predicted,
        class_names,
        metrics.get("confidence_intervals"),
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    confusion = (
        metrics.get("confusion_matrix")
        or classification_metrics(labels, probabilities, class_names)["confusion_matrix"]
    )
    return ReportData(
        result=result,
        bundle=bundle,
        split=str(metrics.get("split", "test")),
        labels=labels,
        probabilities=probabilities,
        predicted=predicted,
        official=official,
        dedup=_deduplicated(result, class_names, predicted, n_bootstrap=n_bootstrap, seed=seed),
        confusion=confusion,
        sanity=report_sanity_checks(result, explainer, predicted, sanity_images, seed),
        n_bootstrap=n_bootstrap,
    )


def validation_ood_scores(bundle: Bundle, data_root: Path | str | None = None) -> tuple[np.ndarray | None, str | None]:
    """The input guard's ``ood_score`` of every validation image the bundle recorded, or ``(None, why not)``.

    The files are found as ``braintumor calibrate`` finds them (:func:`~braintumor.workflows.calibrate.
    validation_samples`): at their recorded paths, else re-rooted under ``data_root`` (the evaluated data root).
    """
    if bundle.guard is None:
        return None, "the bundle has no input guard"
    problem = ""
    for root in dict.fromkeys([None, None if data_root is None else Path(data_root)]):
        try:
            image_set = scan_images(
                validation_samples(bundle, root),
                bundle.preprocessing,
                description="Checking validation",
                show_progress=False,
            )
        except BrainTumorError as error:
            problem = str(error)
            continue
        # The guard judges the clean image only, so test-time augmentation would not change the scores.
        return Predictor(bundle).run_uint8(image_set)[1], None
    return None, problem
