"""The public Python API: a :class:`Bundle` object whose methods are the CLI's verbs, and a few functions.

Every ``braintumor`` command is a thin call of a function here; results are typed (:mod:`braintumor.results`).

Examples:
    >>> import tempfile, braintumor
    >>> work = tempfile.mkdtemp()
    >>> root = braintumor.demo_data(work + "/demo", per_class=12, size=48)
    >>> run = braintumor.train(
    ...     "demo-cnn", data=root, out=work + "/run", overrides={"train.max_epochs": 2}, show_progress=False
    ... )
    >>> model = run.bundle
    >>> predictions = model.predict(root / "Testing" / "glioma_tumor")
    >>> len(predictions), predictions[0].class_name in model.class_names + [None]
    (6, True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from braintumor.errors import BrainTumorError
from braintumor.guard.defaults import FLAG_REASON as _FLAG_REASON
from braintumor.results import (
    Adaptation,
    Audit,
    BatchRun,
    Calibration,
    Evaluation,
    ExplainedImage,
    Explanation,
    GuardFit,
    Metrics,
    Prediction,
    Predictions,
    RecipeInfo,
    SkippedInput,
    TrainRun,
)

if TYPE_CHECKING:
    from braintumor.bundle import Bundle as StoredBundle
    from braintumor.config import Recipe
    from braintumor.inference.predictor import Predictor
    from braintumor.inference.volume import VolumeResult


class NotRankZero(BrainTumorError):
    """Raised in the non-zero ranks of a multi-process (DDP) run: rank zero writes and reports."""


# What a flagged image says instead of a diagnosis when the guard gave no reason of its own (each flagged
# prediction normally carries the guard's reason: braintumor.guard.reasons).
FLAG_REASON = _FLAG_REASON
DATA_ENV = "BRAINTUMOR_DATA"


def demo_data(
    folder: Path | str = "demo",
    *,
    per_class: int = 40,
    test_per_class: int | None = None,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a small synthetic data set in the real data set's layout, to try everything without downloads.

    Each class puts a bright blob in its own place inside a grey head-like ellipse, so a small network learns it
    in seconds. These are not MRIs: use them to learn the tool, never to judge a model.

    Args:
        folder: Where to write ``Training/`` and ``Testing/`` (class folders ``glioma_tumor``, ...).
        per_class: Training images per class.
        test_per_class: Testing images per class (default: half of ``per_class``).
        size: Image side in pixels.
        seed: Random seed; the same seed writes the same images.

    Returns:
        ``folder`` as a Path.

    Examples:
        >>> import tempfile
        >>> root = demo_data(tempfile.mkdtemp() + "/demo", per_class=2, size=32)
        >>> sorted(path.name for path in (root / "Testing").iterdir())
        ['glioma_tumor', 'meningioma_tumor', 'no_tumor', 'pituitary_tumor']
    """
    from braintumor.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(folder, per_class=per_class, test_per_class=test_per_class, size=size, seed=seed)


def recipes() -> list[RecipeInfo]:
    """The built-in recipes (``braintumor train NAME``), sorted by name.

    Examples:
        >>> "demo-cnn" in [recipe.name for recipe in recipes()]
        True
    """
    from braintumor.config import builtin_recipes, load_recipe

    return [RecipeInfo(name, load_recipe(name).description) for name in builtin_recipes()]


def load(path: Path | str) -> Bundle:
    """Open a model bundle folder (read-only).

    Args:
        path: The bundle folder (``config.json``, ``model.safetensors``...), e.g. ``runs/demo/bundle``.

    Returns:
        A :class:`Bundle`.

    Raises:
        BundleError: the folder is missing, incomplete or written by a newer braintumor.

    Examples:
        >>> from braintumor.bundle.examples import tiny_bundle
        >>> model = load(tiny_bundle())
        >>> model.class_names
        ['glioma', 'meningioma', 'no_tumor', 'pituitary']
        >>> load("no/such/folder")
        Traceback (most recent call last):
        braintumor.errors.BundleError: model bundle no/such/folder does not exist or is not a folder
    """
    return Bundle(path)


def _data_root(data: Path | str | None) -> Path | None:
    if data is not None:
        return Path(data)
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def _bundle_data_root(data: Path | str | None, bundle: Path | str) -> Path | None:
    """The data root for work on ``bundle``'s own split: ``data``, else the one it recorded (when it is on this
    machine), else ``$BRAINTUMOR_DATA``. The recorded root comes before the variable, which may name another set."""
    if data is not None:
        return Path(data)
    from braintumor.bundle.store import read_bundle_config

    recorded = read_bundle_config(bundle).training.data_root
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return _data_root(None)


def _require_data(data: Path | str | None) -> Path:
    root = _data_root(data)
    if root is None:
        raise BrainTumorError(f"no data folder: pass data=ROOT (the folder holding Training/) or set ${DATA_ENV}")
    return root


def _skipped(items: Sequence[Any]) -> list[SkippedInput]:
    return [SkippedInput(str(item.path), str(item.reason)) for item in items]


def _recipe(recipe: str | Path | Recipe, overrides: dict[str, Any] | Sequence[str] | None, **extra: Any) -> Recipe:
    """A recipe by name, YAML path or object, with ``section.field`` overrides applied."""
    from braintumor.config import Recipe, apply_overrides, load_recipe

    pairs = [f"{key}={value}" for key, value in overrides.items()] if isinstance(overrides, dict) else overrides
    pairs = list(pairs or []) + [f"{key}={value}" for key, value in extra.items() if value is not None]
    if isinstance(recipe, Recipe):
        return apply_overrides(recipe, pairs) if pairs else recipe
    return load_recipe(str(recipe), pairs)


def train(
    recipe: str | Path | Recipe = "lite2-probe",
    data: Path | str | None = None,
    out: Path | str | None = None,
    *,
    overrides: dict[str, Any] | Sequence[str] | None = None,
    epochs: int | None = None,
    weights: Path | str | None = None,
    evaluate: bool = False,
    report: bool = False,
    tracker: str = "none",
    tracking_uri: str | None = None,
    register_model: str | None = None,
    export_onnx: bool = True,
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    cache_dir: Path | str | None = None,
    show_progress: bool = True,
    say: Any = None,
) -> TrainRun:
    """Train a recipe on ``<data>/Training`` (with a stratified validation split) and write a bundle.

    Args:
        recipe: A built-in recipe name (:func:`recipes`), a YAML file, or a :class:`~braintumor.config.Recipe`.
        data: The data root holding ``Training/`` (and ``Testing/`` for ``evaluate``); default ``$BRAINTUMOR_DATA``.
        out: The run folder (default ``runs/<recipe>``); the bundle is ``<out>/bundle``.
        overrides: Recipe fields to change, ``{"train.max_epochs": 5}`` or ``["train.max_epochs=5"]``.
        epochs: Shorthand for ``train.max_epochs``.
        weights: A local pretrained backbone weights file (``model.weights``).
        evaluate: Afterwards evaluate on the official ``Testing`` split (reported, never used to choose).
        report: With ``evaluate``: also write the HTML report.
        tracker: ``none``, ``mlflow`` or ``clearml``.
        tracking_uri: The MLflow store (default ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
        register_model: With MLflow: register the logged model under this name (``run.tracking["registered"]``).
        export_onnx: Write ``model.onnx`` into the bundle for fast serving.
        accelerator: ``cpu``, ``gpu`` or ``auto`` (Lightning).
        devices: Devices (processes) per node, or ``auto``.
        num_nodes: Machines taking part (multi-node DDP).
        strategy: Lightning strategy, e.g. ``ddp``.
        cache_dir: Where cached features too large for memory go, memory-mapped (default ``<out>/feature_cache``).
        show_progress: Progress bars.
        say: A callable for one-line messages (default: logging).

    Returns:
        A :class:`~braintumor.results.TrainRun`; its ``bundle`` is the trained model.

    Raises:
        BrainTumorError: an unknown recipe or field, a data folder without the expected layout, no weights.
    """
    from braintumor.workflows.train import RunOptions, train_recipe

    chosen = _recipe(recipe, overrides, **{"train.max_epochs": epochs, "model.weights": weights})
    root = _require_data(data)
    run_dir = Path(out) if out is not None else Path("runs") / chosen.name
    options = RunOptions(
        show_progress=show_progress,
        tracker=tracker,  # type: ignore[arg-type]
        tracking_uri=tracking_uri,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        export_onnx=export_onnx,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    result = train_recipe(chosen, root, run_dir, options=options, console_log=say)
    if result is None:  # a non-zero rank of a multi-process run
        raise NotRankZero("this process is not rank zero of a multi-process run: rank zero reports")
    if register_model:
        from braintumor.training.tracking import register_model as register

        model_uri, version = register(result.tracking, register_model)
        result.tracking["registered"] = {"model_uri": model_uri, "name": register_model, "version": version}
    return _finish_run(result, chosen.name, root, evaluate=evaluate, report=report, show_progress=show_progress)


def resume(
    run_dir: Path | str,
    *,
    force: bool = False,
    evaluate: bool = False,
    report: bool = False,
    show_progress: bool = True,
    say: Any = None,
    **run_options: Any,
) -> TrainRun:
    """Continue an interrupted training run to the model the uninterrupted run gives.

    ``run_options`` are those of :func:`train` that say how to run (``tracker``, ``accelerator``, ``devices``...).

    Raises:
        BrainTumorError: no run there, or its recipe, data or code changed (pass ``force=True`` to go on anyway).
    """
    from braintumor.workflows.train import RunOptions, read_run_file, resume_run

    record = read_run_file(run_dir)
    # The run's own feature cache folder unless another is given (its features are read back from there).
    run_options.setdefault("cache_dir", record.get("options", {}).get("cache_dir"))
    if run_options["cache_dir"] is not None:
        run_options["cache_dir"] = str(run_options["cache_dir"])
    options = RunOptions(show_progress=show_progress, **run_options)
    result = resume_run(run_dir, options=options, console_log=say, force=force)
    if result is None:
        raise NotRankZero("this process is not rank zero of a multi-process run: rank zero reports")
    root = Path(record["data_root"])
    return _finish_run(
        result, record["recipe"]["name"], root, evaluate=evaluate, report=report, show_progress=show_progress
    )


def _finish_run(
    result: Any, name: str, root: Path, *, evaluate: bool = False, report: bool = False, show_progress: bool = True
) -> TrainRun:
    """A training stage's result as a :class:`TrainRun`, evaluated on Testing (and tracked) when asked."""
    run = TrainRun(
        run_dir=Path(result.run_dir),
        bundle=Bundle(result.bundle_dir),
        recipe=name,
        val_metrics=Metrics.from_record(result.val_metrics),
        best_epoch=int(result.best_epoch),
        duration_s=float(result.duration_s),
        history=list(result.history),
        skipped=_skipped(result.skipped),
        tracking=dict(result.tracking),
    )
    if evaluate:
        from braintumor.training.tracking import log_artifacts, log_final_metrics

        run.evaluation = run.bundle.evaluate(
            root, "Testing", run.run_dir / "eval-Testing", report=report, show_progress=show_progress
        )  # the official split: reported with the run, never used to choose anything
        metrics = run.evaluation.metrics
        log_final_metrics(
            result.logger,
            {"test_accuracy": metrics.accuracy, "test_loss": metrics.loss, "test_macro_f1": metrics.macro_f1},
        )
        log_artifacts(result.logger, [run.evaluation.out_dir])
    return run


def runs(tracking_uri: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """Recent training runs in the MLflow store with their headline metrics, newest first.

    Each row has ``run_id``, ``name``, ``status``, ``started`` (ms since the epoch), ``recipe``,
    ``best_val_accuracy``, ``best_val_loss``, ``test_accuracy``, ``test_macro_f1``, ``epochs`` and ``model_uri``.
    An empty list when nothing was recorded yet.
    """
    from braintumor.training.tracking import list_runs

    return list_runs(tracking_uri, limit=limit)


def audit(
    data: Path | str | None = None,
    out: Path | str | None = None,
    *,
    near: bool = True,
    report: bool = True,
    cache_dir: Path | str | None = None,
    show_progress: bool = True,
    say: Any = None,
    **settings: Any,
) -> Audit:
    """Audit a data set: exact and near copies within and across splits, leakage, label conflicts, shortcuts.

    Args:
        data: The data root (``Training/``, ``Testing/``); default ``$BRAINTUMOR_DATA``.
        out: Where to write ``audit.json``, ``audit.html`` and the plots (default ``<data>/../audit``).
        near: Also look for near copies (perceptual hashes and embeddings); exact copies only when False.
        report: Write the HTML report.
        cache_dir: Where to keep the per-file cache that makes a second audit fast.
        show_progress: Progress bars.
        say: A callable for one-line messages.
        **settings: Further options of :func:`braintumor.auditing.run.run_audit` (``near_threshold``, ``workers``...).

    Returns:
        An :class:`~braintumor.results.Audit` (``raw`` is ``audit.json``).
    """
    from braintumor.auditing.run import run_audit

    result = run_audit(
        _require_data(data),
        out,
        near=near,
        write_report=report,
        cache_dir=cache_dir,
        show_progress=show_progress,
        console_log=say,
        **settings,
    )
    return Audit(out_dir=Path(result.out_dir), outputs=dict(result.outputs), raw=result.audit)


def adapt(
    bundle: Path | str | Bundle,
    images: Path | str,
    out: Path | str,
    *,
    method: str | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> Adaptation:
    """Adapt a bundle to a site's unlabelled images and write the adapted bundle to ``out``.

    Args:
        bundle: The source bundle (left unchanged).
        images: A folder (or archive) of the site's images; no labels are read.
        out: The adapted bundle's folder.
        method: The adaptation method(s), e.g. ``"standardize"``; default: the recipe's choice.
        force: Adapt even when the evidence says the site is not shifted.
        show_progress: Progress bars.

    Returns:
        An :class:`~braintumor.results.Adaptation`; ``applied`` is empty when the evidence gate left it alone.
    """
    from braintumor.workflows.adapt import adapt_bundle

    path = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
    result = adapt_bundle(path, images, out, method=method, force=force, show_progress=show_progress)
    return Adaptation(
        bundle=Bundle(result.out),
        onnx_note=result.onnx_note,
        applied=list(result.applied),
        warnings=list(result.warnings),
        record=result.record,
        evidence=result.evidence,
    )


def ensemble(
    bundles: Sequence[Path | str | Bundle],
    out: Path | str,
    *,
    weights: Sequence[float] | None = None,
    name: str | None = None,
    data: Path | str | None = None,
    guard: bool = True,
    show_progress: bool = True,
    say: Any = None,
) -> Bundle:
    """Combine trained bundles into one whose probabilities are the members' (weighted) average.

    Args:
        bundles: Two or more bundles with the same preprocessing and split.
        out: The ensemble bundle's folder.
        weights: Member weights (default equal); choose them on validation, never on Testing.
        name: The ensemble's name (default: the members' names).
        data: The members' data root, for the ensemble's input guard (default: the recorded one).
        guard: Fit the ensemble's input guard.
        show_progress: Progress bars.
        say: A callable for one-line notes (a guard that could not be fitted, the ONNX export).

    Returns:
        The ensemble as a :class:`Bundle`.
    """
    from braintumor.workflows.ensemble import build_ensemble

    paths = [item.path if isinstance(item, Bundle) else Path(item) for item in bundles]
    result = build_ensemble(
        paths,
        out,
        weights=weights,
        name=name,
        data_root=_bundle_data_root(data, paths[0]),
        guard=guard,
        show_progress=show_progress,
    )
    for note in (result.guard_note, result.onnx_note):
        if note and say is not None:
            say(note)
    return Bundle(result.folder)


def export(bundle: Path | str | Bundle, out: Path | str | None = None, **settings: Any) -> Any:
    """Export a bundle's network to ONNX, checked against PyTorch; returns the export's record (``path``, parity).

    Without ``out`` the graph is written into the bundle (``model.onnx``), which then serves with onnxruntime.
    """
    from braintumor.workflows.export import export_bundle_onnx

    return export_bundle_onnx(bundle.path if isinstance(bundle, Bundle) else Path(bundle), out, **settings)


def save_volume_outputs(
    result: VolumeResult,
    *,
    csv_out: Path | None,
    json_out: Path | None,
    dicom_sr: Path | None,
    sr_in_source: bool,
    extra: dict[str, Any] | None = None,
) -> list[str]:
    """Write a volume prediction's per-slice CSV, JSON and DICOM SR where asked; returns a line per file written.

    The SR's place is checked (and the report built) before any file is written, so a report that cannot be made
    leaves nothing half-done; ``extra`` is added to the JSON (e.g. the montage's slices).
    """
    from braintumor.inference.dicom_sr import build_report, check_report_path, save_report
    from braintumor.inference.volume_outputs import write_volume_csv, write_volume_json

    written = []
    report_path, report = None, None
    if dicom_sr is not None:  # a report that cannot be made stops the command before any file is written
        report = build_report(result)
        report_path = check_report_path(dicom_sr, result.volume.source, allow_in_source=sr_in_source)
    if csv_out is not None:
        write_volume_csv(csv_out, result)
        written.append(f"per-slice CSV: {csv_out}")
    if json_out is not None:
        write_volume_json(json_out, result, extra)
        written.append(f"JSON: {json_out}")
    if report_path is not None:
        written.append(f"DICOM SR: {save_report(report, report_path)}")
    return written


class Bundle:
    """A trained model bundle: its methods are the CLI's verbs.

    Reading methods (``predict``, ``explain``, ``evaluate``, ``export(out=...)``, ``serve``) never change the
    folder; ``calibrate`` and ``fit_guard`` update it in place (as ``braintumor calibrate`` and ``guard`` do).
    """

    def __init__(self, path: Path | str) -> None:
        from braintumor.bundle import read_bundle_config

        self.path = Path(path)
        self.config = read_bundle_config(self.path)  # fails early and clearly on a bad folder
        self._stored: StoredBundle | None = None
        self._predictors: dict[bool, Predictor] = {}

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, recipe={self.name!r})"

    def to_dict(self) -> dict[str, Any]:
        """The bundle's folder, recipe and classes (JSON-ready)."""
        return {"path": str(self.path), "recipe": self.name, "class_names": self.class_names}

    @property
    def name(self) -> str:
        return self.config.recipe.name

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def stored(self) -> StoredBundle:
        """The loaded network, preprocessing and guard (loaded on first use)."""
        if self._stored is None:
            from braintumor.bundle import load_bundle

            self._stored = load_bundle(self.path)
        return self._stored

    def _reload(self) -> None:
        """After a method that updated the folder: read it again."""
        from braintumor.bundle import read_bundle_config

        self.config = read_bundle_config(self.path)
        self._stored = None
        self._predictors.clear()

    def predictor(self, *, tta: bool = False, backend: str = "auto") -> Predictor:
        """The low-level predictor (uint8 batches, PIL images); ONNX Runtime when the bundle has ``model.onnx``."""
        if tta not in self._predictors:
            from braintumor.inference.onnx_export import make_predictor
            from braintumor.inference.predictor import Predictor

            self._predictors[tta] = Predictor(self.stored, tta=True) if tta else make_predictor(self.stored, backend)
        return self._predictors[tta]

    def predict(self, inputs: Any, *, tta: bool = False) -> Predictions:
        """Class and probabilities for each image.

        Args:
            inputs: A path (file or folder, expanded recursively), a PIL image, a numpy array (H x W or
                H x W x 3, uint8), or a list of them.
            tta: Average over the test-time augmentation views.

        Returns:
            :class:`~braintumor.results.Predictions`, in input order; unreadable files are in ``.skipped``.
            A flagged image (input guard) has ``class_name`` None and a ``flag_reason``.

        Raises:
            BrainTumorError: a folder with no file in it, or an input that is neither a path nor an image.

        Examples:
            >>> import numpy as np
            >>> from braintumor.bundle.examples import tiny_bundle
            >>> predictions = load(tiny_bundle()).predict([np.zeros((40, 50), dtype=np.uint8)])
            >>> len(predictions), sorted(predictions[0].probabilities)
            (1, ['glioma', 'meningioma', 'no_tumor', 'pituitary'])
        """
        predictor = self.predictor(tta=tta)
        items = list(inputs) if isinstance(inputs, list | tuple) else [inputs]
        paths = [item for item in items if isinstance(item, str | Path)]
        images = [item for item in items if not isinstance(item, str | Path)]
        predictions: list[Prediction] = []
        skipped: list[SkippedInput] = []
        if paths:
            from braintumor.inference.predictor import expand_inputs

            files = expand_inputs(paths)
            if not files and not images:
                raise BrainTumorError(f"no files to predict in {', '.join(map(str, paths))}")
            found, unread = predictor.predict_paths(files)
            predictions += [_typed(item) for item in found]
            skipped += _skipped(unread)
        if images:
            predictions += _predict_images(predictor, images)
        guard = predictor.guard
        return Predictions(
            predictions,
            skipped,
            class_names=predictor.class_names,
            bundle_path=self.path,
            refer_threshold=predictor.refer_threshold,
            guard=None if guard is None else guard.spec.model_dump(mode="json"),
        )

    def predict_batch(
        self,
        sources: Path | str | Sequence[Path | str],
        out_dir: Path | str,
        *,
        engine: str = "local",
        num_parts: int = 1,
        part_id: int | None = None,
        address: str | None = None,
        tta: bool = False,
        show_progress: bool = False,
        **settings: Any,
    ) -> BatchRun:
        """Predict a large tree of images, DICOM series and volumes into resumable Parquet and CSV shards.

        Rows are those of :meth:`predict` (a flagged image has no class; an unreadable file has a row with its
        ``error``), a volume's slices each; the slices of one series get a study-level finding once every part is
        done. A shard already in ``out_dir`` is never scored again, so calling this again after a crash finishes
        the batch. ``docs/batch.md`` has the layout, job arrays and Ray clusters.

        Args:
            sources: Files and folders (folders are expanded recursively, in sorted order).
            out_dir: The output folder (new, empty, or holding this same batch to continue).
            engine: ``local`` (this process) or ``ray`` (Ray Data; ``pip install 'braintumor[ray]'``).
            num_parts: Parts the inputs are split into (one per job of a job array).
            part_id: The part this call runs (0 to ``num_parts - 1``); None runs every part.
            address: With ``engine="ray"``: the cluster (``auto``, ``HOST:PORT``; default ``$RAY_ADDRESS`` or a
                local cluster started for this call).
            tta: Average over the test-time augmentation views.
            show_progress: A progress bar with images/s and the ETA on standard error.
            **settings: ``shard_size``, ``backend`` (``auto``, ``onnx``, ``torch``), ``device`` (``auto``,
                ``cpu``, ``cuda``), ``rule`` (a :class:`braintumor.inference.volume.StudyRule`).

        Returns:
            A :class:`~braintumor.results.BatchRun`; read the rows with :func:`braintumor.batch.read_shards`.

        Examples:
            >>> import tempfile
            >>> from PIL import Image
            >>> from braintumor.bundle.examples import tiny_bundle
            >>> folder = Path(tempfile.mkdtemp())
            >>> Image.new("RGB", (40, 40)).save(folder / "scan.png")
            >>> run = load(tiny_bundle()).predict_batch(folder, folder / "out")
            >>> run.images, run.complete, run.summary["rows_repeated"]
            (1, True, 0)
        """
        from braintumor.batch.run import run_batch

        items = [sources] if isinstance(sources, str | Path) else list(sources)
        return run_batch(
            self.path,
            items,
            out_dir,
            engine=engine,
            num_parts=num_parts,
            part_id=part_id,
            address=address,
            tta=tta,
            show_progress=show_progress,
            **settings,
        )

    def predict_volume(self, source: Path | str, *, tta: bool = False, **options: Any) -> Any:
        """Per-slice predictions and a study-level finding for a volume (NIfTI, DICOM series, zip, multi-frame).

        ``options``: ``series_uid`` and ``volume_index`` (which volume of an input holding several), ``threshold``
        and ``min_consecutive`` (the study rule). Returns a :class:`braintumor.inference.volume.VolumeResult`.
        """
        from braintumor.data.volumes import VolumeRequest, load_volume
        from braintumor.inference.predictor import Predictor
        from braintumor.inference.volume import StudyRule, predict_volume

        rule_options = {key: options.pop(key) for key in ("threshold", "min_consecutive") if key in options}
        volume = load_volume(source, VolumeRequest(**options))
        # PyTorch in NHWC order: on batches of slices it runs faster than onnxruntime, which serves single images.
        predictor = Predictor(self.stored, tta=tta)
        return predict_volume(predictor, volume, StudyRule(**rule_options))

    def volume_montage(self, result: Any, path: Path | str, count: int) -> list[dict[str, Any]]:
        """A PNG of the ``count`` most tumour-like slices of a volume prediction with Grad-CAM and the slice curve."""
        from braintumor.explain.volume_montage import save_volume_montage

        return save_volume_montage(self.stored, result, Path(path), count)

    def explain(
        self,
        inputs: Path | str | Sequence[Path | str],
        out: Path | str = "explain",
        *,
        method: str = "gradcam",
        target: str | None = None,
        sanity: bool = False,
        show_progress: bool = False,
        **settings: Any,
    ) -> Explanation:
        """Heat maps of what the model looked at, one figure per image (PNG), optional sanity checks.

        Args:
            inputs: Image files or folders.
            out: Folder for the figures (and ``sanity.json`` with ``sanity=True``).
            method: ``gradcam``, ``gradcam++``, ``shap``, ``rollout`` (vision transformers only), a comma list of
                them, or ``all`` (every method that applies to the network).
            target: Explain this class instead of the predicted one.
            sanity: Run the model and label randomisation sanity checks and the deletion curves.
            show_progress: Progress bars.
            **settings: Further options of :func:`braintumor.explain.run.explain_paths` (``layer``...).

        Returns:
            An :class:`~braintumor.results.Explanation`.
        """
        from braintumor.explain.run import explain_paths, parse_methods

        items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
        run = explain_paths(
            self.stored,
            items,
            out,
            methods=parse_methods(method),
            target=target,
            sanity=sanity,
            show_progress=show_progress,
            **settings,
        )
        images = [
            ExplainedImage(
                source=record["path"],
                class_name=record["predicted_class"],
                probabilities=record["probabilities"],
                figure=Path(record["figure"]),
                methods=list(record["methods"]),
                flagged=bool(record.get("flagged")),
                flag_reason=record.get("flag_reason"),
            )
            for record in run.images
        ]
        return Explanation(
            Path(run.out_dir), images, run.sanity, _skipped(run.skipped), list(run.notes), list(run.flagged)
        )

    def evaluate(
        self,
        data: Path | str | None = None,
        split: str = "Testing",
        out: Path | str | None = None,
        *,
        report: bool = False,
        tta: bool = False,
        audit: Path | str | None = None,
        show_progress: bool = False,
        **settings: Any,
    ) -> Evaluation:
        """Metrics on a labelled split, with plots, ``metrics.json`` and ``predictions.csv``.

        Args:
            data: The data root (default ``$BRAINTUMOR_DATA``).
            split: The split folder, ``Testing`` (the official one: report on it, never choose on it) or another.
            out: Where to write (default ``<bundle>/../eval-<split>``).
            report: Also write the self-contained HTML report.
            tta: Test-time augmentation.
            audit: An ``audit.json`` whose clean subset gets its own metrics.
            show_progress: Progress bars.
            **settings: ``n_bootstrap``, ``precision``.

        Returns:
            An :class:`~braintumor.results.Evaluation`.
        """
        from braintumor.evaluation.evaluate import evaluate_bundle

        out_dir = Path(out) if out is not None else self.path.parent / f"eval-{split}"
        stage = evaluate_bundle(
            self.stored,
            _require_data(data),
            split,
            out_dir,
            show_progress=show_progress,
            tta=tta,
            audit=audit,
            **settings,
        )
        evaluation = Evaluation(
            split,
            Metrics.from_record(stage.metrics),
            Path(stage.out_dir),
            self.path,
            skipped=_skipped(stage.skipped),
            deduplicated=stage.deduplicated,
            audit_note=stage.audit_note,
            _stage=stage,
        )
        if report:
            evaluation.report(show_progress=show_progress)
        return evaluation

    def calibrate(
        self,
        data: Path | str | None = None,
        out: Path | str | None = None,
        *,
        target_coverage: float | None = None,
        tta: bool = False,
        show_progress: bool = False,
    ) -> Calibration:
        """Fit temperature scaling and a referral threshold on the bundle's validation split; update the bundle.

        Returns:
            A :class:`~braintumor.results.Calibration`.
        """
        from braintumor.evaluation.defaults import DEFAULT_TARGET_COVERAGE
        from braintumor.workflows.calibrate import calibrate_bundle

        coverage = DEFAULT_TARGET_COVERAGE if target_coverage is None else target_coverage
        result = calibrate_bundle(
            self.path,
            _bundle_data_root(data, self.path),
            out,
            target_coverage=coverage,
            tta=tta,
            show_progress=show_progress,
        )
        self._reload()
        return Calibration(
            temperature=float(result.temperature),
            refer_threshold=float(result.refer_threshold),
            target_coverage=coverage,
            out_dir=Path(result.out_dir),
            files=list(result.files),
            onnx_note=result.onnx_note,
            raw=result.record,
        )

    def fit_guard(
        self,
        data: Path | str | None = None,
        *,
        detector: str | None = None,
        quantile: float | None = None,
        show_progress: bool = False,
    ) -> GuardFit:
        """Fit (or refit) the input guard on the bundle's own training and validation split; update the bundle."""
        from braintumor.guard.defaults import DEFAULT_DETECTOR, DEFAULT_QUANTILE
        from braintumor.workflows.guard import fit_bundle_guard

        guard = fit_bundle_guard(
            self.path,
            _bundle_data_root(data, self.path),
            detector=detector or DEFAULT_DETECTOR,
            quantile=DEFAULT_QUANTILE if quantile is None else quantile,
            show_progress=show_progress,
        )
        self._reload()
        spec = guard.spec
        return GuardFit(spec.detector, spec.quantile, spec.validation_flag_rate, spec.n_train, spec.n_val)

    def export(self, format: str = "onnx", out: Path | str | None = None, **settings: Any) -> Path:
        """Export the network (ONNX, checked against PyTorch) and return the file's path.

        Args:
            format: ``onnx``.
            out: The file to write; default ``model.onnx`` inside the bundle (then the bundle serves with it).
            **settings: ``opset``, ``check`` of :func:`braintumor.inference.onnx_export.export_onnx`.

        Raises:
            BrainTumorError: another format, a missing ``onnx`` install, or a parity check that failed.

        Examples:
            >>> import tempfile
            >>> from braintumor.bundle.examples import tiny_bundle
            >>> load(tiny_bundle()).export(out=tempfile.mkdtemp() + "/model.onnx").suffix
            '.onnx'
        """
        if format != "onnx":
            raise BrainTumorError(f"unknown export format {format!r}: use onnx")
        return export(self, out, **settings).path

    def serve(self, host: str = "127.0.0.1", port: int = 8000, **settings: Any) -> None:
        """Serve the HTTP API and web page for this bundle until interrupted (needs ``braintumor[serve]``)."""
        from braintumor.serving import run_server

        run_server(self.path, host=host, port=port, **settings)


def _typed(item: Any) -> Prediction:
    """The inference layer's prediction under the public rule: a flagged image has no class."""
    flagged = item.out_of_distribution
    return Prediction(
        source=item.source,
        class_name=None if flagged else item.class_name,
        confidence=item.confidence,
        probabilities=dict(item.probabilities),
        flagged=flagged,
        flag_reason=(getattr(item, "flag_reason", None) or FLAG_REASON) if flagged else None,
        ood_score=item.ood_score,
        referred=item.referred,
    )


def _predict_images(predictor: Predictor, images: Sequence[Any]) -> list[Prediction]:
    """Predictions for in-memory PIL images or numpy arrays (grey or RGB, uint8)."""
    import numpy as np
    from PIL import Image

    decoded = []
    for image in images:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        if not isinstance(image, Image.Image):
            raise BrainTumorError(f"cannot predict a {type(image).__name__}: pass a path, a PIL image or an array")
        decoded.append(image.convert("RGB"))
    probabilities, verdicts = predictor.predict_images_checked(decoded)
    sources = [f"<image {index}>" for index in range(len(decoded))]
    return [_typed(item) for item in predictor.to_predictions(sources, probabilities, verdicts)]
