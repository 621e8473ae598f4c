"""A 2D model over a volume: per-slice probabilities and guard verdicts, and one study-level finding.

Every axial slice of a :class:`~braintumor.data.volume_core.Volume` goes through the predictor as a 2D slice
would (the bundle's own preprocessing, temperature and input guard). The study-level rule
(:class:`StudyRule`, its parameters fixed a priori, not tuned: no volumes with labels exist here, and the
Testing split is never used to choose anything):

- a slice *counts* for a tumour class when the input guard does not flag it and the class's probability is
  at least ``threshold`` (0.5);
- the study is positive for a tumour class when at least ``min_consecutive`` (3) neighbouring slices count
  for it (a run never bridges a gap in the slice positions); when several classes qualify, the one with the
  highest probability inside its qualifying runs wins; its *peak slice* is where that probability is highest;
- otherwise the finding is ``no_tumor`` (with the most tumour-like slice as the peak), or ``indeterminate``
  when fewer than ``min_consecutive`` slices pass the input guard.

Example:
    >>> p = np.array([[0.1, 0.1, 0.8, 0.0], [0.7, 0.1, 0.2, 0.0], [0.9, 0.0, 0.1, 0.0], [0.6, 0.2, 0.2, 0.0]])
    >>> names = ["glioma", "meningioma", "no_tumor", "pituitary"]
    >>> finding = study_finding(p, names, flagged=[False] * 4, gaps_after=[])
    >>> finding.finding, finding.peak_slice, finding.run
    ('glioma', 2, [1, 3])
    >>> study_finding(p, names, flagged=[False] * 4, gaps_after=[1]).finding  # a gap splits the run
    'no_tumor'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from braintumor.bundle import WEIGHTS_FILE, Bundle
from braintumor.data.dicom import HEADER_FLAG_KEY
from braintumor.data.volume_core import Volume
from braintumor.errors import BrainTumorError
from braintumor.inference.predictor import with_header_flags
from braintumor.inference.volume_defaults import DEFAULT_MIN_CONSECUTIVE, DEFAULT_SLICE_THRESHOLD

NO_TUMOUR_CLASS = "no_tumor"


@dataclass(frozen=True)
class StudyRule:
    """The study-level rule's two parameters (see the module docstring)."""

    threshold: float = DEFAULT_SLICE_THRESHOLD
    min_consecutive: int = DEFAULT_MIN_CONSECUTIVE

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0 or self.min_consecutive < 1:
            raise BrainTumorError(
                "study rule needs 0 < threshold <= 1 and at least 1 slice "
                f"(got {self.threshold}, {self.min_consecutive})"
            )

    def describe(self) -> str:
        """The rule in one sentence, for reports and the API."""
        return (
            f"a tumour class is reported when its probability is >= {self.threshold:g} on >= {self.min_consecutive} "
            "consecutive slices that the input guard does not flag (runs do not bridge gaps); the highest "
            "probability inside the qualifying runs decides between classes and marks the peak slice; parameters "
            "fixed a priori, not tuned"
        )


@dataclass
class SliceResult:
    """One axial slice's prediction."""

    index: int
    position_mm: float | None
    class_name: str
    probabilities: dict[str, float]
    out_of_distribution: bool | None
    ood_score: float | None
    sop_instance_uid: str | None = None
    frame_number: int | None = None
    # Why the slice was flagged (the input guard's reason, or the volume's DICOM header); None when it was not.
    flag_reason: str | None = None


@dataclass
class StudyFinding:
    """The study-level result and how it was reached."""

    finding: str
    reason: str
    rule: str
    threshold: float
    min_consecutive: int
    peak_slice: int | None
    peak_probability: float | None
    run: list[int] | None
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class VolumeResult:
    """Everything a volume prediction produced: the input, per-slice results, the study finding, the model."""

    volume: Volume
    slices: list[SliceResult]
    study: StudyFinding
    model_name: str
    model_version: str
    class_names: list[str]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (no pixels, no DICOM headers)."""
        return {
            "volume": self.volume.describe(),
            "model": {"name": self.model_name, "version": self.model_version},
            "class_names": self.class_names,
            "study": asdict(self.study),
            "slices": [asdict(item) for item in self.slices],
        }


def model_version(bundle: Bundle) -> str:
    """The first 12 hex digits of the BLAKE2b hash of ``model.safetensors`` (as the service reports it)."""
    digest = hashlib.blake2b(digest_size=16)
    with (bundle.path / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _runs(mask: np.ndarray, breaks: set[int]) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` of the runs of True; a run ends at an index in ``breaks``."""
    runs, start = [], None
    for index, value in enumerate(mask):
        if value and start is None:
            start = index
        if start is not None and (not value or (index - 1 in breaks and index > start)):
            runs.append((start, index - 1))
            start = index if value else None
    if start is not None:
        runs.append((start, len(mask) - 1))
    return runs


def _class_summary(column: np.ndarray, counted: np.ndarray, breaks: set[int], rule: StudyRule) -> dict[str, Any]:
    runs = _runs(counted, breaks)
    longest = max((end - start + 1 for start, end in runs), default=0)
    qualifying = [(s, e) for s, e in runs if e - s + 1 >= rule.min_consecutive]
    best = max(qualifying, key=lambda run: float(column[run[0] : run[1] + 1].max()), default=None)
    peak = None if best is None else best[0] + int(np.argmax(column[best[0] : best[1] + 1]))
    return {
        "slices_counted": int(counted.sum()),
        "longest_run": longest,
        "qualifies": best is not None,
        "run": None if best is None else [best[0], best[1]],
        "peak_slice": peak,
        "peak_probability": None if peak is None else round(float(column[peak]), 6),
    }


def study_finding(
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    flagged: Sequence[bool],
    gaps_after: Sequence[int],
    rule: StudyRule | None = None,
) -> StudyFinding:
    """The study-level finding for per-slice ``probabilities`` ``[N, C]`` (see the module docstring)."""
    rule = rule or StudyRule()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    accepted = ~np.asarray(flagged, dtype=bool)
    breaks = set(int(i) for i in gaps_after)
    tumours = [i for i, name in enumerate(class_names) if name != NO_TUMOUR_CLASS]
    per_class = {
        class_names[i]: _class_summary(
            probabilities[:, i], accepted & (probabilities[:, i] >= rule.threshold), breaks, rule
        )
        for i in tumours
    }
    common = {"rule": rule.describe(), "threshold": rule.threshold, "min_consecutive": rule.min_consecutive}
    winners = [name for name, summary in per_class.items() if summary["qualifies"]]
    if winners:
        name = max(winners, key=lambda n: (per_class[n]["peak_probability"], per_class[n]["longest_run"]))
        summary = per_class[name]
        reason = f"{name} >= {rule.threshold:g} on slices {summary['run'][0]}-{summary['run'][1]}"
        return StudyFinding(
            name,
            reason,
            **common,
            peak_slice=summary["peak_slice"],
            peak_probability=summary["peak_probability"],
            run=summary["run"],
            per_class=per_class,
        )
    if int(accepted.sum()) < rule.min_consecutive:
        reason = f"only {int(accepted.sum())} of {len(accepted)} slices pass the input guard"
        return StudyFinding(
            "indeterminate", reason, **common, peak_slice=None, peak_probability=None, run=None, per_class=per_class
        )
    tumour_like = np.where(accepted, probabilities[:, tumours].max(axis=1), -1.0)
    peak = int(np.argmax(tumour_like))
    reason = f"no tumour class reaches {rule.threshold:g} on {rule.min_consecutive} consecutive slices"
    return StudyFinding(
        NO_TUMOUR_CLASS,
        reason,
        **common,
        peak_slice=peak,
        peak_probability=round(float(tumour_like[peak]), 6),
        run=None,
        per_class=per_class,
    )


def slice_results(predictor: Any, volume: Volume, probabilities: np.ndarray, verdicts: Any) -> list[SliceResult]:
    """Per-slice records from the predictor's probabilities and the guard's verdicts (None without a guard)."""
    results = []
    refs = volume.slice_refs or [None] * len(volume.slices)
    predictions = predictor.to_predictions([str(i) for i in range(len(probabilities))], probabilities, verdicts)
    for index, prediction in enumerate(predictions):
        ref = refs[index]
        results.append(
            SliceResult(
                index=index,
                position_mm=volume.positions_mm[index],
                class_name=prediction.class_name,
                probabilities={k: round(v, 6) for k, v in prediction.probabilities.items()},
                out_of_distribution=prediction.out_of_distribution,
                ood_score=None if prediction.ood_score is None else round(prediction.ood_score, 4),
                sop_instance_uid=None if ref is None else ref.sop_instance_uid,
                frame_number=None if ref is None else ref.frame_number,
                flag_reason=prediction.flag_reason,
            )
        )
    return results


def predict_volume(predictor: Any, volume: Volume, rule: StudyRule | None = None) -> VolumeResult:
    """Run ``predictor`` (a :class:`~braintumor.inference.predictor.Predictor` or its ONNX subclass) on every
    slice and apply the study rule."""
    if not volume.slices:
        raise BrainTumorError(f"{volume.source}: the volume has no slices")
    probabilities, verdicts = predictor.predict_images_checked(volume.slices)
    if volume.header_flag:  # the series' header names another body region: no slice is read as a brain MRI
        for image in volume.slices:
            image.info[HEADER_FLAG_KEY] = volume.header_flag
        verdicts = with_header_flags(verdicts, volume.slices)
    slices = slice_results(predictor, volume, probabilities, verdicts)
    flagged = [bool(item.out_of_distribution) for item in slices]
    study = study_finding(
        probabilities, predictor.class_names, flagged=flagged, gaps_after=volume.gaps_after, rule=rule
    )
    bundle = predictor.bundle
    return VolumeResult(volume, slices, study, bundle.name, model_version(bundle), list(predictor.class_names))


def most_tumour_like(result: VolumeResult, count: int) -> list[int]:
    """The ``count`` slices with the highest tumour-class probability (unflagged first), the peak slice included."""
    tumours = [name for name in result.class_names if name != NO_TUMOUR_CLASS]
    score = [
        (not bool(item.out_of_distribution), max(item.probabilities[name] for name in tumours), -item.index)
        for item in result.slices
    ]
    ranked = sorted(range(len(score)), key=lambda i: score[i], reverse=True)
    peak = result.study.peak_slice
    chosen = ([peak] if peak is not None else []) + [i for i in ranked if i != peak]
    return sorted(chosen[:count])
