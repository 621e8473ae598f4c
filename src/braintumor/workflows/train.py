"""Train one recipe end to end and write a model bundle: the steps of :mod:`braintumor.training.steps`, in order.

Open the run folder and seed, build the model, decode Training once (exact duplicates dropped, optional)
and take a stratified validation split, start tracking, fit with Lightning (EarlyStopping +
ReduceLROnPlateau on validation loss, best checkpoint restored; cached features and fine-tuning
stages where the recipe asks), then record and save the bundle, ``history.csv`` and ``training_curves.png``.
The official Testing split is never read here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from braintumor.bundle import TrainingRecord, save_bundle
from braintumor.classes import CLASS_NAMES
from braintumor.config import Recipe
from braintumor.data.images import SkippedFile
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing
from braintumor.evaluation.plots import plot_training_curves
from braintumor.guard.guard import InputGuard
from braintumor.io import write_json_atomic
from braintumor.models.network import BrainTumorNet
from braintumor.runtime import precision_note, tune_cpu_runtime
from braintumor.training.callbacks import EpochHistory
from braintumor.training.determinism import kill_point
from braintumor.training.distill import Teacher, load_teacher
from braintumor.training.fitting import FitContext, RunOptions, Say, quiet_lightning
from braintumor.training.losses import resolve_class_weights
from braintumor.training.manifest import build_manifest
from braintumor.training.steps import (
    PreparedData,
    Selection,
    build_model,
    check_run_folder,
    fit,
    fit_run_guard,
    open_run_folder,
    prepare_data,
    read_run_file,
    select_best,
    start_tracking,
    training_record,
)
from braintumor.training.tracking import log_artifacts, log_bundle_model, log_final_metrics
from braintumor.workflows.export import ensure_onnx

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a run's outputs are and what it measured on the validation split."""

    run_dir: Path
    bundle_dir: Path
    history: list[dict[str, Any]]
    val_metrics: dict[str, Any]
    best_epoch: int
    duration_s: float
    skipped: list[SkippedFile] = field(default_factory=list)
    logger: Any = None
    tracking: dict[str, Any] = field(default_factory=dict)


def train_recipe(
    recipe: Recipe,
    data_root: Path | str,
    run_dir: Path | str,
    *,
    show_progress: bool | None = None,
    console_log: Say | None = None,
    options: RunOptions | None = None,
    resume: bool = False,
    force: bool = False,
) -> TrainResult | None:
    """Train ``recipe`` on ``<data_root>/Training`` and write ``<run_dir>/bundle``.

    ``console_log`` is any callable taking a string (``rich.console.Console.print``); messages about
    skipped files and duplicates go there so the person running it sees them. With ``resume=True`` the run
    continues from ``<run_dir>/checkpoints/last.ckpt`` to the model the uninterrupted run gives (docs/train.md);
    another recipe, data set or code version is refused unless ``force`` (recorded in the manifest).
    Returns ``None`` in the non-zero ranks of a multi-process run; rank zero writes every file.
    """
    options = options or RunOptions()
    if show_progress is not None:
        options.show_progress = show_progress
    # Only rank zero talks to the person running it; the other ranks' messages are debug logs.
    say = (console_log or log.info) if rank_zero_only.rank == 0 else log.debug
    quiet_lightning()
    tune_cpu_runtime()
    if note := precision_note(recipe.train.precision):
        say(note)
    started = time.perf_counter()
    data_root, run_dir = Path(data_root), Path(run_dir)
    samples = discover_split(data_root, "Training")  # layout errors first: before the run folder or a model
    say(f"training {recipe.name} on {data_root} -> {run_dir}")
    previous, resume_from = open_run_folder(run_dir, resume, say)
    # The weights and every augmentation draw follow from this seed in step order: reordering changes the model.
    L.seed_everything(recipe.train.seed, workers=True, verbose=False)
    model, prep = build_model(recipe)
    data = prepare_data(recipe, samples, prep, options.show_progress, say)
    resume_record = check_run_folder(recipe, data_root, data, previous, resume=resume, force=force, say=say)
    logger, tracking = start_tracking(recipe, data_root, run_dir, options, previous, resume, resume_record)
    context = FitContext(
        recipe=recipe,
        prep=prep,
        train_set=data.train_set,
        val_set=data.val_set,
        run_dir=run_dir,
        options=options,
        class_weights=resolve_class_weights(recipe.train, data.train_set.labels, len(CLASS_NAMES)),
        history=EpochHistory(run_dir / "history.csv"),
        logger=logger,
        resume=resume,
        resume_from=resume_from,
        say=say,
        resume_warnings=resume_record["resume_warnings"],
        teacher=_teacher(recipe, prep, data, say),
    )
    outcome = fit(model, context)
    if rank_zero_only.rank != 0:
        return None
    selection = select_best(model, context, outcome)
    duration = time.perf_counter() - started
    record = training_record(
        context, data, outcome, selection, data_root=data_root, duration=duration, tracking=tracking
    )
    guard = fit_run_guard(model, context, outcome)
    bundle_dir = save_run(model, context, data, selection, record, data_root, guard)
    if options.export_onnx:
        say(f"onnx: {ensure_onnx(bundle_dir).note}")
    # After the ONNX export: the logged model then carries model.onnx and serves with onnxruntime.
    _log_model(logger, bundle_dir, tracking, say)
    return TrainResult(
        run_dir,
        bundle_dir,
        context.history.rows,
        selection.val_metrics,
        selection.best_epoch,
        duration,
        data.images.skipped,
        logger=logger,
        tracking=tracking,
    )


def _teacher(recipe: Recipe, prep: Preprocessing, data: PreparedData, say: Say) -> Teacher | None:
    """The recipe's distillation teacher, checked against the student's validation split; None without one."""
    if recipe.train.distill is None:
        return None
    teacher = load_teacher(recipe.train.distill, prep, [str(p) for p in data.val_set.paths])
    record = teacher.record
    say(
        f"distilling from {record['recipe']} ({record['bundle']}; validation accuracy "
        f"{record['val_metrics']['accuracy']:.2%}), {record['loss']} loss, weight {record['weight']:g}"
        + (f", temperature {record['temperature']:g}" if record["temperature"] is not None else "")
    )
    return teacher


def _log_model(logger: Any, bundle_dir: Path, tracking: dict[str, Any], say: Say) -> None:
    """The bundle as the run's MLflow pyfunc model; a failure is said, never fatal (the bundle is saved)."""
    try:
        uri = log_bundle_model(logger, bundle_dir)
    except Exception as error:  # MLflow raises many types (store, network, environment)
        say(f"MLflow model not logged: {error}")
        return
    if uri is not None:
        tracking["model_uri"] = uri
        say(f"MLflow model: {uri}")


def resume_run(
    run_dir: Path | str,
    *,
    options: RunOptions | None = None,
    console_log: Say | None = None,
    show_progress: bool | None = None,
    force: bool = False,
) -> TrainResult | None:
    """Continue an interrupted run from its last checkpoint, with the recipe and data it started with.

    ``force`` resumes a folder whose data set or code version changed since (see :func:`train_recipe`).
    """
    record = read_run_file(run_dir)
    recipe = Recipe.model_validate(record["recipe"])
    if options is None:
        saved = record.get("options", {})
        options = RunOptions(**{k: v for k, v in saved.items() if k in RunOptions.__dataclass_fields__})
    return train_recipe(
        recipe,
        record["data_root"],
        run_dir,
        options=options,
        console_log=console_log,
        show_progress=show_progress,
        resume=True,
        force=force,
    )


def save_run(
    model: BrainTumorNet,
    context: FitContext,
    data: PreparedData,
    selection: Selection,
    record: TrainingRecord,
    data_root: Path,
    guard: InputGuard | None = None,
) -> Path:
    """The bundle, ``training_curves.png``, ``val_metrics.json`` and ``run_manifest.json``, also sent to the tracker."""
    recipe, run_dir, history = context.recipe, context.run_dir, context.history.rows
    extra = {"resume_warnings": context.resume_warnings} if context.resume_warnings else None
    manifest = build_manifest(recipe, data_root, data.images.paths, data.images.hashes, extra)
    bundle_dir = save_bundle(
        run_dir / "bundle", model, recipe, context.prep, training=record, manifest=manifest, guard=guard
    )
    kill_point("bundle")
    if history:
        plot_training_curves(history, run_dir / "training_curves.png", title=recipe.name)
    write_json_atomic(run_dir / "val_metrics.json", selection.val_metrics)
    write_json_atomic(run_dir / "run_manifest.json", manifest)
    log_final_metrics(
        context.logger,
        {
            "best_val_loss": selection.val_metrics["loss"],
            "best_val_accuracy": selection.val_metrics["accuracy"],
            "best_val_macro_f1": selection.val_metrics["macro_f1"],
            "best_epoch": selection.best_epoch,
        },
    )
    log_artifacts(
        context.logger,
        [bundle_dir, run_dir / "training_curves.png", run_dir / "history.csv", run_dir / "run_manifest.json"],
    )
    return bundle_dir
