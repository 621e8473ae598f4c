"""Typed results of the public API: every verb of :mod:`braintumor.api` returns one of these.

Each result is a dataclass with ``to_dict()`` (JSON-ready); the tabular ones also have ``to_pandas()``
(needs ``pandas``: ``pip install 'braintumor[pandas]'``). The records the stages write to disk
(``metrics.json``, ``audit.json``) keep their full content in ``raw``; :data:`METRICS_SCHEMA` and
:data:`AUDIT_SCHEMA` describe them as JSON Schema (published in the documentation).

Examples:
    >>> prediction = Prediction(
    ...     source="a.jpg", class_name="glioma", confidence=0.9,
    ...     probabilities={"glioma": 0.9, "meningioma": 0.05, "no_tumor": 0.03, "pituitary": 0.02},
    ... )
    >>> predictions = Predictions([prediction])
    >>> predictions[0].class_name, len(predictions), predictions.to_dict()[0]["confidence"]
    ('glioma', 1, 0.9)
    >>> Prediction(source="photo.jpg", class_name=None, confidence=0.99, probabilities={"glioma": 0.99},
    ...            flagged=True, flag_reason="not an MRI slice: a colour image").diagnosis
    'no diagnosis: not an MRI slice: a colour image'
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, overload

from pydantic import BaseModel, ConfigDict

from braintumor.errors import BrainTumorError


def _jsonable(value: Any) -> Any:
    """Paths as strings, tuples as lists, nested dataclasses as dicts: what ``json.dumps`` accepts."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "model_dump"):  # pydantic records (bundle configs, adaptation records)
        return value.model_dump(mode="json")
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    return value


class _Result:
    """``to_dict()`` for a dataclass result: every field, JSON-ready."""

    def to_dict(self) -> dict[str, Any]:
        return {item.name: _jsonable(getattr(self, item.name)) for item in fields(self)}  # type: ignore[arg-type]


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as error:
        raise BrainTumorError("to_pandas() needs pandas: pip install 'braintumor[pandas]'") from error
    return pandas


@dataclass(frozen=True)
class Prediction(_Result):
    """One image's answer.

    ``class_name`` is the diagnosis, or None when the input guard flagged the image (then ``flag_reason`` says
    why, and ``probabilities`` are the network's output for an input it should not read: not a diagnosis).
    ``referred`` is True when the confidence is below the bundle's referral threshold (None: no threshold).
    """

    source: str
    class_name: str | None
    confidence: float
    probabilities: dict[str, float]
    flagged: bool | None = None
    flag_reason: str | None = None
    ood_score: float | None = None
    referred: bool | None = None

    @property
    def diagnosis(self) -> str:
        """One line for a person: the class, or why there is none."""
        if self.class_name is None:
            return f"no diagnosis: {self.flag_reason or 'flagged by the input guard'}"
        return self.class_name


@dataclass(frozen=True)
class SkippedInput(_Result):
    """An input that could not be read, and why."""

    path: str
    reason: str


class Predictions(Sequence[Prediction]):
    """The predictions of one call, in input order, and the inputs that could not be read (``skipped``).

    ``class_names``, ``bundle_path``, ``refer_threshold`` and ``guard`` (the input guard's settings, None without
    one) describe the bundle that answered; :meth:`write_json` and :meth:`write_csv` write them all.
    """

    def __init__(
        self,
        items: Sequence[Prediction],
        skipped: Sequence[SkippedInput] = (),
        *,
        class_names: Sequence[str] = (),
        bundle_path: Path | None = None,
        refer_threshold: float | None = None,
        guard: dict[str, Any] | None = None,
    ) -> None:
        self._items = list(items)
        self.skipped = list(skipped)
        self.class_names = list(class_names or (items[0].probabilities if items else ()))
        self.bundle_path = bundle_path
        self.refer_threshold = refer_threshold
        self.guard = guard

    @overload
    def __getitem__(self, index: int) -> Prediction: ...
    @overload
    def __getitem__(self, index: slice) -> list[Prediction]: ...
    def __getitem__(self, index: int | slice) -> Prediction | list[Prediction]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"Predictions({len(self)} images, {len(self.skipped)} skipped)"

    def to_dict(self) -> list[dict[str, Any]]:
        return [item.to_dict() for item in self._items]

    def write_json(self, path: Path | str) -> Path:
        """The bundle, its referral threshold and guard, every prediction and every skipped file, as JSON.

        A flagged image's ``class_name`` is null (``out_of_distribution`` repeats ``flagged`` for older readers).
        """
        import json

        predictions = [item.to_dict() | {"out_of_distribution": item.flagged} for item in self._items]
        payload = {
            "bundle": None if self.bundle_path is None else str(self.bundle_path),
            "refer_threshold": self.refer_threshold,
            "guard": "none" if self.guard is None else self.guard,
            "predictions": predictions,
            "skipped": [item.to_dict() for item in self.skipped],
        }
        Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        return Path(path)

    def write_csv(self, path: Path | str) -> Path:
        """One row per image: path, class (empty when flagged), confidence, a probability column per class, and
        ``referred`` (with a referral threshold) and ``out_of_distribution``/``ood_score``/``flag_reason`` (with a
        guard)."""
        import csv

        with_referral, with_guard = self.refer_threshold is not None, self.guard is not None
        header = ["path", "class", "confidence", *[f"p_{name}" for name in self.class_names]]
        header += ["referred"] * with_referral + ["out_of_distribution", "ood_score", "flag_reason"] * with_guard
        with Path(path).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for item in self._items:
                row = [item.source, item.class_name or "", f"{item.confidence:.6f}"]
                row += [f"{item.probabilities[name]:.6f}" for name in self.class_names]
                row += [int(bool(item.referred))] if with_referral else []
                score = "" if item.ood_score is None else f"{item.ood_score:.4f}"
                row += [int(bool(item.flagged)), score, item.flag_reason or ""] if with_guard else []
                writer.writerow(row)
        return Path(path)

    def to_pandas(self) -> Any:
        """One row per image: source, class_name, confidence, flagged, flag_reason, referred, p_<class>..."""
        rows = []
        for item in self._items:
            row = {key: value for key, value in item.to_dict().items() if key != "probabilities"}
            row.update({f"p_{name}": value for name, value in item.probabilities.items()})
            rows.append(row)
        return _pandas().DataFrame(rows)


@dataclass(frozen=True)
class ClassScores(_Result):
    """Precision, recall, F1 and support of one class."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics(_Result):
    """Headline metrics of a model on a set of labelled images; ``raw`` keeps the full record."""

    n_images: int
    accuracy: float
    loss: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Metrics:
        """From a stage's metrics dictionary (``metrics.json``, a training run's validation metrics)."""
        per_class = {
            name: ClassScores(
                float(scores["precision"]), float(scores["recall"]), float(scores["f1"]), int(scores["support"])
            )
            for name, scores in record["per_class"].items()
        }
        return cls(
            n_images=int(record["n_images"]),
            accuracy=float(record["accuracy"]),
            loss=float(record["loss"]),
            macro_f1=float(record["macro_f1"]),
            per_class=per_class,
            confusion_matrix=[[int(value) for value in row] for row in record["confusion_matrix"]],
            class_names=list(record["class_names"]),
            raw=record,
        )

    def to_pandas(self) -> Any:
        """Per-class precision, recall, F1 and support, one row per class."""
        return _pandas().DataFrame({name: asdict(scores) for name, scores in self.per_class.items()}).T


@dataclass
class Evaluation(_Result):
    """A bundle's metrics on one split, and the files written (``metrics.json``, plots, ``predictions.csv``)."""

    split: str
    metrics: Metrics
    out_dir: Path
    bundle_path: Path
    report_path: Path | None = None
    skipped: list[SkippedInput] = field(default_factory=list)
    # Metrics on the images with no copy in Training (from the data audit), or why there are none.
    deduplicated: dict[str, Any] | None = None
    audit_note: str | None = None
    _stage: Any = field(default=None, repr=False)

    @property
    def accuracy(self) -> float:
        return self.metrics.accuracy

    @property
    def macro_f1(self) -> float:
        return self.metrics.macro_f1

    def per_class(self) -> Any:
        """Per-class scores as a pandas DataFrame."""
        return self.metrics.to_pandas()

    def report(self, path: Path | str | None = None, *, show_progress: bool = False) -> Path:
        """Write the self-contained HTML report (default ``<out_dir>/report.html``) and return its path."""
        from braintumor.evaluation.report import build_report

        self.report_path = build_report(self._stage, self.bundle_path, path, show_progress=show_progress)
        return self.report_path

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in super().to_dict().items() if not key.startswith("_")}


class _WithBundle(_Result):
    """A result that holds a :class:`braintumor.api.Bundle` in its ``bundle`` field."""

    bundle: Any

    @property
    def bundle_path(self) -> Path:
        return self.bundle.path


@dataclass
class TrainRun(_WithBundle):
    """A finished training run: where it wrote, what it measured on validation, and its bundle."""

    run_dir: Path
    bundle: Any  # braintumor.api.Bundle
    recipe: str
    val_metrics: Metrics
    best_epoch: int
    duration_s: float
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    skipped: list[SkippedInput] = field(default_factory=list)
    evaluation: Evaluation | None = None
    tracking: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Calibration(_Result):
    """Temperature and referral threshold fitted on the validation split (written into the bundle)."""

    temperature: float
    refer_threshold: float
    target_coverage: float
    out_dir: Path
    files: list[Path]
    onnx_note: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class GuardFit(_Result):
    """The input guard fitted into a bundle: its detector and how much of validation it flags."""

    detector: str
    quantile: float
    validation_flag_rate: float
    n_train: int
    n_val: int


@dataclass(frozen=True)
class ExplainedImage(_Result):
    """One explained image: the predicted class and the figure (image, heat maps, overlay) written for it.

    ``class_name`` is None for a flagged image drawn on request (``explain_flagged``): its figure is titled as
    not a diagnosis, and ``flag_reason`` says why.
    """

    source: str
    class_name: str | None
    probabilities: dict[str, float]
    figure: Path
    methods: list[str]
    flagged: bool = False
    flag_reason: str | None = None


@dataclass(frozen=True)
class Explanation(_Result):
    """What ``explain`` wrote: one figure per image, optional sanity checks, skipped inputs and notes."""

    out_dir: Path
    images: list[ExplainedImage]
    sanity: dict[str, Any] | None = None
    skipped: list[SkippedInput] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Images the input guard flagged and that were not drawn (no diagnosis): path, flag_reason, ood_score.
    flagged: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Audit(_Result):
    """The data audit: ``raw`` is ``audit.json``; ``outputs`` names every file written (report, plots)."""

    out_dir: Path
    outputs: dict[str, Path]
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        """Images per split, and the exact-copy, near-copy and leakage sections of ``audit.json``."""
        keys = ("splits", "exact_duplicates", "near_duplicates", "leakage", "training_drop")
        return {key: self.raw[key] for key in keys if key in self.raw}


@dataclass(frozen=True)
class Adaptation(_WithBundle):
    """A bundle adapted to a site's unlabelled images: the new bundle, what was applied and why."""

    bundle: Any  # braintumor.api.Bundle: the adapted bundle
    applied: list[str]
    warnings: list[str]
    record: Any  # braintumor.bundle.AdaptationRecord: method, images, settings, what the guard rejected
    evidence: Any  # braintumor.adaptation.ShiftEvidence: whether the site looks shifted, and why
    onnx_note: str = ""


@dataclass(frozen=True)
class RecipeInfo(_Result):
    """A built-in recipe: its name and what it trains."""

    name: str
    description: str


@dataclass(frozen=True)
class BatchRun(_Result):
    """What one call of a batch prediction did (``braintumor predict ... --out-dir``).

    ``shards_written`` were scored by this call, ``shards_reused`` were already in ``out_dir`` (a run that
    continues a killed one). ``images`` counts the images (volume slices each) this call scored, ``errors`` its
    unreadable inputs. ``complete`` is True once every shard of every part is written; ``summary`` is then
    ``summary.json`` (counts, study findings, and the check that every input has rows exactly once).
    """

    out_dir: Path
    engine: str
    parts: list[int]
    num_parts: int
    shards_written: int
    shards_reused: int
    images: int
    errors: int
    seconds: float
    images_per_s: float
    complete: bool
    summary: dict[str, Any] = field(default_factory=dict)


class _OpenRecord(BaseModel):
    model_config = ConfigDict(extra="allow")


class ClassScoresRecord(_OpenRecord):
    precision: float
    recall: float
    f1: float
    support: int


class MetricsRecord(_OpenRecord):
    """``metrics.json`` written by ``evaluate`` (further keys: guard, calibration, confidence intervals...)."""

    bundle: str
    recipe: str
    split: str
    data_root: str
    n_images: int
    accuracy: float
    loss: float
    macro_f1: float
    per_class: dict[str, ClassScoresRecord]
    confusion_matrix: list[list[int]]
    class_names: list[str]


class AuditRecord(_OpenRecord):
    """``audit.json`` written by ``audit`` (further keys: per-split summaries, copy groups, shortcuts...)."""

    format: str
    version: int
    created: str
    data_root: str
    reference_split: str
    splits: dict[str, Any]
    exact_duplicates: dict[str, Any]
    near_duplicates: dict[str, Any]
    leakage: dict[str, Any]
    files: list[Any]


METRICS_SCHEMA: dict[str, Any] = MetricsRecord.model_json_schema()
AUDIT_SCHEMA: dict[str, Any] = AuditRecord.model_json_schema()
