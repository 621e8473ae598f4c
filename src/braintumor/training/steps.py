"""The steps of one training run, in the order :func:`~braintumor.workflows.train.train_recipe` takes them.

open the run folder -> build the model -> prepare the data (decode, deduplicate, split) -> start tracking
-> fit -> select the weights -> record -> save. The official Testing split is never read here.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from braintumor.bundle import TrainingRecord
from braintumor.config import Recipe
from braintumor.data.dataset import ImageSet, drop_exact_duplicates, scan_images, validation_split
from braintumor.data.layout import Sample
from braintumor.data.preprocessing import Preprocessing, eval_transform
from braintumor.errors import BrainTumorError
from braintumor.guard import InputGuard, fit_guard, head_outputs, model_outputs
from braintumor.io import write_json_atomic
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.network import BrainTumorNet
from braintumor.training.feature_cache import cached_features, clear_feature_cache, teacher_view_logits
from braintumor.training.fitting import (
    HEAD_PRECISION,
    FitContext,
    RunOptions,
    Say,
    classifier,
    fit_module,
    image_loaders,
    load_weights,
    save_weights,
    view_loaders,
)
from braintumor.training.resume import check_resumable, resume_key
from braintumor.training.stages import finetune
from braintumor.training.tracking import (
    create_logger,
    describe_logger,
    flatten_params,
)
from braintumor.training.validation import head_validation_metrics, validation_metrics

RUN_FILE = "run.json"
PROBE_FILE = "probe-final.safetensors"


def read_run_file(run_dir: Path | str) -> dict[str, Any]:
    """The ``run.json`` a training writes when it starts (recipe, data root, options, tracker run)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise BrainTumorError(f"{run_dir} is not a training run folder (no {RUN_FILE}); nothing to resume")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BrainTumorError(f"{path} is unreadable: {error}") from None


def open_run_folder(run_dir: Path, resume: bool, say: Say) -> tuple[dict[str, Any], Path | None]:
    """Create ``run_dir``; when resuming, return its ``run.json`` and ``last.ckpt``, else clear an older run's state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    last_checkpoint = run_dir / "checkpoints" / "last.ckpt"
    previous = read_run_file(run_dir) if resume else {}
    resume_from = last_checkpoint if resume and last_checkpoint.is_file() else None
    if resume and resume_from is None:
        say(f"no checkpoint in {run_dir / 'checkpoints'} yet: starting the run from the first epoch")
    if not resume and rank_zero_only.rank == 0:
        # A fresh run must not pick up an older run's checkpoints or features from the same folder.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        clear_feature_cache(run_dir)
    return previous, resume_from


def build_model(recipe: Recipe) -> tuple[BrainTumorNet, Preprocessing]:
    """The recipe's network and the preprocessing (size, crop) its images are decoded with."""
    model = create_model(recipe)
    return model, resolve_preprocessing(recipe, model)


@dataclass
class PreparedData:
    """Training checked once, exact duplicates dropped, and its stratified validation split (streamed from disk)."""

    images: ImageSet  # every image used (the manifest's files); its ``skipped`` lists the undecodable ones
    train_set: ImageSet
    val_set: ImageSet
    duplicates: dict[str, Any]


def prepare_data(
    recipe: Recipe, samples: list[Sample], prep: Preprocessing, show_progress: bool, say: Say
) -> PreparedData:
    """Check Training, drop exact duplicates (when the recipe asks) and split off the validation images."""
    # Read once to hash and check every file; the pixels are decoded again, batch by batch, where they are needed.
    image_set = scan_images(samples, prep, description="Checking Training", show_progress=show_progress)
    for skipped in image_set.skipped:
        say(f"skipped {skipped.path}: {skipped.reason}")
    if image_set.skipped:
        say(f"{len(image_set.skipped)} of {len(samples)} files could not be decoded and were skipped")
    duplicates: dict[str, Any] = {"enabled": recipe.data.drop_train_duplicates}
    if recipe.data.drop_train_duplicates:
        image_set, report = drop_exact_duplicates(image_set)
        duplicates.update(
            removed_copies=report.removed_copies,
            removed_label_conflicts=report.removed_conflicts,
            conflict_groups=report.conflict_groups,
        )
        say(
            f"dropped {report.removed_copies} byte-identical copies inside Training"
            + (f" and {report.removed_conflicts} files with conflicting labels" if report.removed_conflicts else "")
        )
    train_idx, val_idx = validation_split(recipe, image_set)
    train_set, val_set = image_set.subset(train_idx), image_set.subset(val_idx)
    how = f"stratified, seed {recipe.data.split_seed}" if recipe.data.val_split == "stratified" else "Keras' split"
    say(
        f"training on {len(train_set)} images, validating on {len(val_set)} ({how}); "
        f"class counts {train_set.class_counts()}"
    )
    return PreparedData(image_set, train_set, val_set, duplicates)


def check_run_folder(
    recipe: Recipe,
    data_root: Path,
    data: PreparedData,
    previous: dict[str, Any],
    *,
    resume: bool,
    force: bool,
    say: Say,
) -> dict[str, Any]:
    """The run's resume record for ``run.json``; a resume of a folder from another recipe, data set or code
    version raises :class:`~braintumor.training.resume.ResumeMismatchError` unless ``force``."""
    key = resume_key(recipe, data_root, data.images.paths, data.images.hashes)
    if not resume:
        return {"resume_key": key, "resume_warnings": []}
    forced = check_resumable(previous, key, force=force)
    for problem in forced:
        say(f"warning: resuming anyway (--force): {problem}")
    return {"resume_key": key, "resume_warnings": [*previous.get("resume_warnings", []), *forced]}


def start_tracking(
    recipe: Recipe,
    data_root: Path,
    run_dir: Path,
    options: RunOptions,
    previous: dict[str, Any],
    resume: bool,
    resume_record: dict[str, Any] | None = None,
) -> tuple[Logger | None, dict[str, Any]]:
    """The tracker's logger (rank zero only; a resumed run continues its tracker run) and ``run.json``."""
    tracking = dict(previous.get("tracking") or {})
    if rank_zero_only.rank != 0:
        return None, tracking
    logger = create_logger(
        options.tracker,
        run_name=f"{recipe.name}-{run_dir.name}",
        tracking_uri=options.tracking_uri or tracking.get("tracking_uri"),
        run_id=tracking.get("run_id") if resume else None,
    )
    tracking = describe_logger(options.tracker, logger)
    if logger is not None and not resume:
        logger.log_hyperparams(flatten_params(recipe.model_dump(mode="json")))
    write_json_atomic(
        run_dir / RUN_FILE,
        {
            "recipe": recipe.model_dump(mode="json"),
            "data_root": str(data_root.resolve()),
            "options": options.to_json(),
            "tracking": tracking,
            **(resume_record or {}),
        },
    )
    return logger, tracking


@dataclass
class FitOutcome:
    """What fitting did, for the training record."""

    feature_cache: bool
    finetuning: dict[str, Any] | None
    timing: dict[str, Any]
    # The last fit's trainer (its world size goes in the record); None when a resumed run had nothing left to fit.
    trainer: L.Trainer | None
    # Clean-view backbone features (train, validation) while they still match the backbone: the input guard reuses them.
    clean_features: tuple[torch.Tensor, torch.Tensor] | None = None


def fit(model: BrainTumorNet, context: FitContext) -> FitOutcome:
    """The plain Lightning fit, or the head on cached features then the fine-tuning stages (LP-FT, WiSE-FT)."""
    started = time.perf_counter()
    if not (model.frozen_backbone and context.recipe.train.feature_cache):
        loaders = image_loaders(context)
        trainer = fit_module(classifier(model, context), loaders, context, resume_from=context.resume_from)
        return FitOutcome(False, None, {"fit_s": round(time.perf_counter() - started, 2)}, trainer)
    trainer, timing, clean_features = _fit_probe(model, context, started)
    finetuning = None
    if context.recipe.train.finetune_stages:
        finetuning, stage_trainer = finetune(model, context)
        trainer = stage_trainer or trainer
        clean_features = None  # the fine-tuned backbone no longer gives these features
    timing["fit_s"] = round(time.perf_counter() - started, 2)
    return FitOutcome(True, finetuning, timing, trainer, clean_features)


def _fit_probe(
    model: BrainTumorNet, context: FitContext, started: float
) -> tuple[L.Trainer | None, dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
    """The head on cached backbone features (kept as it is when a resumed run's probe had finished), its timing
    and the clean view's features."""
    train_features, val_features, reused = cached_features(model, context)
    timing: dict[str, Any] = {
        "feature_views": int(train_features.shape[0]),
        "feature_cache_reused": reused,
        "feature_extraction_s": round(time.perf_counter() - started, 2),
    }
    module = classifier(model.head, context)
    stages = context.recipe.train.finetune_stages
    probe_file = context.run_dir / "checkpoints" / PROBE_FILE
    trainer = None
    if context.resume and probe_file.is_file():
        # The probe finished before the interruption: its weights are final, go on to fine-tuning.
        load_weights(model.head, probe_file, context.history)
    else:
        context.history.stage = "probe" if stages else "train"
        # The teacher's outputs only when the probe is fitted (a resumed run with a finished probe needs none).
        loaders = view_loaders(train_features, val_features, context, 512, teacher_view_logits(context))
        trainer = fit_module(module, loaders, context, resume_from=context.resume_from, precision=HEAD_PRECISION)
        if stages:
            save_weights(model.head, probe_file, context.history)
    timing["probe_fit_s"] = round(time.perf_counter() - started, 2)
    return trainer, timing, (train_features[0], val_features)


@dataclass
class Selection:
    """The weights kept (the fits restored their best epochs) and how they do on the validation split."""

    best_epoch: int  # 1-based row of the run's history with the lowest validation loss; 0 without history
    val_metrics: dict[str, Any]


def select_best(model: BrainTumorNet, context: FitContext, outcome: FitOutcome | None = None) -> Selection:
    """The best epoch over the whole history and the kept weights' validation metrics.

    With the frozen backbone's cached clean features in ``outcome`` only the head runs: the same numbers as a
    pass over the validation images, without decoding them and running the backbone again.
    """
    precision = context.recipe.precision()
    if outcome is not None and outcome.clean_features is not None:
        val_metrics = head_validation_metrics(model, context.val_set, outcome.clean_features[1], precision)
    else:
        val_metrics = validation_metrics(model, context.val_set, context.prep, precision)
    val_losses = [row.get("val_loss", float("inf")) for row in context.history.rows]
    return Selection(int(np.argmin(val_losses)) + 1 if val_losses else 0, val_metrics)


def fit_run_guard(model: BrainTumorNet, context: FitContext, outcome: FitOutcome) -> InputGuard:
    """The input guard of the trained model, fitted on its training split and thresholded on validation.

    With a frozen backbone the cached clean features are reused (only the head runs); otherwise the whole
    network runs once over the training and validation images.
    """
    train_images, val_images = context.train_set, context.val_set
    if outcome.clean_features is not None:
        train_features, val_features = outcome.clean_features
        train = head_outputs(model, train_features, train_images)
        val = head_outputs(model, val_features, val_images)
    else:
        normalise = eval_transform(context.prep)
        precision = context.recipe.precision()
        train = model_outputs(model, normalise, train_images, precision=precision)
        val = model_outputs(model, normalise, val_images, precision=precision)
    guard = fit_guard(train, context.train_set.labels, val)
    context.say(
        f"input guard ({guard.spec.detector} + image evidence): {guard.spec.validation_flag_rate:.1%} of validation "
        "images flagged at the thresholds"
    )
    return guard


def training_record(
    context: FitContext,
    data: PreparedData,
    outcome: FitOutcome,
    selection: Selection,
    *,
    data_root: Path,
    duration: float,
    tracking: dict[str, Any],
) -> TrainingRecord:
    """What the run did and measured, as the bundle's ``training`` section."""
    options, history, class_weights = context.options, context.history.rows, context.class_weights
    return TrainingRecord(
        data_root=str(data_root.resolve()),
        n_train=len(data.train_set),
        n_val=len(data.val_set),
        train_class_counts=data.train_set.class_counts(),
        val_paths=[str(p.resolve()) for p in data.val_set.paths],  # absolute: read back from any folder
        skipped_files=[vars(s) for s in data.images.skipped],
        duplicates=data.duplicates,
        epochs_run=len(history),
        best_epoch=selection.best_epoch,
        history=history,
        val_metrics=selection.val_metrics,
        feature_cache=outcome.feature_cache,
        finetuning=outcome.finetuning,
        class_weights=None if class_weights is None else class_weights.tolist(),
        timing=outcome.timing,
        duration_s=round(duration, 2),
        resumed=context.resume_from is not None,
        devices={
            "accelerator": options.accelerator,
            "devices": options.devices,
            "num_nodes": options.num_nodes,
            "strategy": options.strategy,
            "world_size": outcome.trainer.world_size if outcome.trainer is not None else None,
        },
        tracking=tracking,
        distillation=None if context.teacher is None else context.teacher.record,
    )
