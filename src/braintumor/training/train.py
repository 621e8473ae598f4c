"""Train one recipe end to end and write a model bundle.

Steps: check the layout, decode Training once, drop exact duplicates (optional), take a stratified
validation split, fit with Lightning (EarlyStopping + ReduceLROnPlateau on validation loss, best
checkpoint restored), then save the bundle, ``history.csv`` and ``training_curves.png``.
The official Testing split is never read here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from braintumor.bundle import save_bundle
from braintumor.config import Recipe
from braintumor.data.dataset import (
    ImageSet,
    ImageTensorDataset,
    drop_exact_duplicates,
    load_images,
    stratified_split,
)
from braintumor.data.images import SkippedFile
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, eval_transform, train_transform
from braintumor.errors import BrainTumorError
from braintumor.evaluation.metrics import classification_metrics
from braintumor.evaluation.plots import plot_training_curves
from braintumor.io import write_json_atomic
from braintumor.layout_constants import CLASS_NAMES
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.network import BrainTumorNet
from braintumor.training.callbacks import EpochHistory
from braintumor.training.features import FeatureViewDataset, FeatureViewScheduler, build_view_features
from braintumor.training.finetune import (
    FineTuneNet,
    interpolate_weights,
    prepare_stage,
    split_backbone,
)
from braintumor.training.losses import resolve_class_weights
from braintumor.training.manifest import build_manifest
from braintumor.training.module import ClassifierModule
from braintumor.training.tracking import (
    TrackerName,
    create_logger,
    describe_logger,
    flatten_params,
    log_artifacts,
    log_final_metrics,
)

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
FEATURE_CACHE_FILE = "feature_cache.safetensors"
PROBE_FILE = "probe-final.safetensors"


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


def _quiet_lightning() -> None:
    # Lightning's tips about workers and tensor cores are noise for our in-memory, CPU-first data.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    # A frozen backbone is in eval mode on purpose (fixed BatchNorm statistics).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


@torch.inference_mode()
def predict_probabilities(
    model: BrainTumorNet, image_set: ImageSet, prep: Preprocessing, batch_size: int = 64
) -> np.ndarray:
    """Softmax probabilities of ``model`` on pre-decoded images (eval mode, no augmentation)."""
    model.eval()
    transform = eval_transform(prep)
    chunks = [
        torch.softmax(model(transform(image_set.images[start : start + batch_size])), dim=1)
        for start in range(0, len(image_set), batch_size)
    ]
    return torch.cat(chunks).numpy()


def _restore_best(module: ClassifierModule, checkpoint: ModelCheckpoint) -> None:
    if not checkpoint.best_model_path:
        return
    # Our own checkpoint from this run; weights_only keeps even that from running pickled code.
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])


@dataclass
class RunOptions:
    """How to run a training (not what to train: that is the recipe)."""

    show_progress: bool = True
    tracker: TrackerName = "mlflow"
    tracking_uri: str | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fit(
    module: ClassifierModule,
    train_loader: DataLoader,
    val_loader: DataLoader,
    recipe: Recipe,
    run_dir: Path,
    history: EpochHistory,
    extra: list[L.Callback],
    options: RunOptions,
    logger: Logger | None,
    resume_from: Path | None,
    *,
    max_epochs: int | None = None,
    checkpoint_dir: Path | None = None,
) -> L.Trainer:
    """Lightning fit with early stopping and per-epoch checkpoints, then the best epoch's weights restored."""
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir or run_dir / "checkpoints",
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        every_n_epochs=1,
    )
    callbacks: list[L.Callback] = [
        history,
        checkpoint,
        EarlyStopping(monitor="val_loss", mode="min", patience=recipe.train.early_stopping_patience),
        *extra,
    ]
    trainer = L.Trainer(
        max_epochs=max_epochs or recipe.train.max_epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        precision=recipe.train.precision,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        log_every_n_steps=1,
        enable_progress_bar=options.show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from)
    _restore_best(module, checkpoint)
    return trainer


def _image_loaders(
    recipe: Recipe, prep: Preprocessing, train_set: ImageSet, val_set: ImageSet
) -> tuple[DataLoader, DataLoader]:
    workers = recipe.data.num_workers
    train_loader = DataLoader(
        ImageTensorDataset(train_set, train_transform(recipe.augment, prep)),
        batch_size=recipe.data.batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(recipe.train.seed),
        persistent_workers=workers > 0,
    )
    val_loader = DataLoader(
        ImageTensorDataset(val_set, eval_transform(prep)),
        batch_size=recipe.data.batch_size * 2,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    return train_loader, val_loader


def _cache_views(recipe: Recipe) -> int:
    """Views per training image in a cache: the recipe's ``cache_views``, or the clean one without augmentation."""
    return recipe.train.cache_views if recipe.augment.enabled else 1


def _encode_views(
    encoder: nn.Module,
    recipe: Recipe,
    prep: Preprocessing,
    train_set: ImageSet,
    val_set: ImageSet,
    show_progress: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder``'s outputs ``[views, N, ...]`` for the training views and ``[1, N, ...]`` for the clean validation."""
    clean = eval_transform(prep)
    seed = recipe.train.seed
    train = build_view_features(
        encoder,
        train_set,
        clean,
        train_transform(recipe.augment, prep),
        views=_cache_views(recipe),
        seed=seed,
        show_progress=show_progress,
    )
    val = build_view_features(encoder, val_set, clean, clean, views=1, seed=seed, show_progress=show_progress)
    return train, val


def _view_loaders(
    train_views: torch.Tensor,
    val_views: torch.Tensor,
    train_set: ImageSet,
    val_set: ImageSet,
    recipe: Recipe,
    val_batch_size: int,
) -> tuple[DataLoader, DataLoader, FeatureViewScheduler]:
    """Loaders over cached views (the image path's shuffle order) and the callback that switches the view."""
    train_dataset = FeatureViewDataset(train_views, train_set.labels)
    train_loader = DataLoader(
        train_dataset,
        batch_size=recipe.data.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(recipe.train.seed),
    )
    val_loader = DataLoader(FeatureViewDataset(val_views, val_set.labels), batch_size=val_batch_size)
    return train_loader, val_loader, FeatureViewScheduler(train_dataset)


def _cached_features(
    model: BrainTumorNet,
    recipe: Recipe,
    prep: Preprocessing,
    train_set: ImageSet,
    val_set: ImageSet,
    run_dir: Path,
    show_progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Backbone features for every view, read from ``feature_cache.safetensors`` when it matches this run."""
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                recipe.model.model_dump(mode="json"),
                recipe.augment.model_dump(mode="json"),
                prep.model_dump(mode="json"),
                _cache_views(recipe),
                recipe.train.seed,
                train_set.hashes,
                val_set.hashes,
            ]
        ).encode()
    ).hexdigest()
    cache_file = run_dir / FEATURE_CACHE_FILE
    if cache_file.is_file():
        try:
            with safe_open(str(cache_file), framework="pt") as handle:
                if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                    return handle.get_tensor("train"), handle.get_tensor("val"), True
        except (SafetensorError, OSError):
            pass  # an unreadable cache is recomputed
    train_features, val_views = _encode_views(model.backbone, recipe, prep, train_set, val_set, show_progress)
    val_features = val_views[0]
    if rank_zero_only.rank == 0:
        temporary = cache_file.with_suffix(".tmp")
        save_file(
            {"train": train_features.contiguous(), "val": val_features.contiguous()},
            str(temporary),
            metadata={"fingerprint": fingerprint},
        )
        temporary.replace(cache_file)
    return train_features, val_features, False


def _cached_stage(
    model: BrainTumorNet,
    recipe: Recipe,
    prep: Preprocessing,
    train_set: ImageSet,
    val_set: ImageSet,
    index: int,
    show_progress: bool,
) -> tuple[FineTuneNet, DataLoader, DataLoader, list[L.Callback]]:
    """A stage that trains on the frozen bottom's activations, computed once per cached view."""
    split = split_backbone(model.backbone)
    if split is None:
        raise BrainTumorError(
            f"finetune_stages[{index}].cache_frozen_layers: backbone {recipe.model.backbone} cannot be split at its "
            "trainable layer groups (supported: timm EfficientNet and ResNet families); set cache_frozen_layers: false"
        )
    bottom, top = split
    train_activations, val_activations = _encode_views(bottom, recipe, prep, train_set, val_set, show_progress)
    train_loader, val_loader, scheduler = _view_loaders(
        train_activations, val_activations, train_set, val_set, recipe, recipe.data.batch_size * 2
    )
    frozen = recipe.train.finetune_batchnorm == "frozen"
    wrapper = FineTuneNet(nn.Sequential(top, model.head), top if frozen else None)
    return wrapper, train_loader, val_loader, [scheduler]


def _finetune(
    model: BrainTumorNet,
    recipe: Recipe,
    prep: Preprocessing,
    train_set: ImageSet,
    val_set: ImageSet,
    run_dir: Path,
    history: EpochHistory,
    options: RunOptions,
    logger: Logger | None,
    class_weights: torch.Tensor | None,
    resume: bool,
    say: Any,
) -> tuple[dict[str, Any], L.Trainer | None]:
    """Run the recipe's fine-tuning stages after the probe, then WiSE-FT; returns what was done, for the bundle.

    Each stage's final weights go to ``checkpoints/stage-N/final.safetensors``; a resumed run skips the
    stages that have one and continues an unfinished stage from its ``last.ckpt``.
    """
    probe_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    record: dict[str, Any] = {"stages": []}
    trainer: L.Trainer | None = None
    for index, stage in enumerate(recipe.train.finetune_stages, start=1):
        stage_dir = run_dir / "checkpoints" / f"stage-{index}"
        final_file = stage_dir / "final.safetensors"
        optimizer_groups = prepare_stage(model, stage, recipe.train.weight_decay)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if resume and final_file.is_file():
            model.load_state_dict(load_file(str(final_file)))
            record["stages"].append({"stage": index, "reused": True, "trainable_parameters": trainable})
            continue
        say(
            f"fine-tuning stage {index}/{len(recipe.train.finetune_stages)}: {stage.epochs} epoch(s), top "
            f"{stage.unfreeze} layer group(s), LR {stage.learning_rate:g}, layer decay {stage.layer_decay:g}, "
            f"{trainable:,} trainable parameters"
        )
        last = stage_dir / "last.ckpt"
        started = time.perf_counter()
        extra: list[L.Callback] = []
        if stage.cache_frozen_layers:
            wrapper, train_loader, val_loader, extra = _cached_stage(
                model, recipe, prep, train_set, val_set, index, options.show_progress
            )
        else:
            frozen = recipe.train.finetune_batchnorm == "frozen"
            wrapper = FineTuneNet(model, model.backbone if frozen else None)
            train_loader, val_loader = _image_loaders(recipe, prep, train_set, val_set)
        module = ClassifierModule(
            wrapper,
            recipe.train,
            num_classes=len(CLASS_NAMES),
            class_weights=class_weights,
            optimizer_groups=optimizer_groups,
        )
        history.stage = f"finetune-{index}"
        trainer = _fit(
            module,
            train_loader,
            val_loader,
            recipe,
            run_dir,
            history,
            extra,
            options,
            logger,
            last if resume and last.is_file() else None,
            max_epochs=stage.epochs,
            checkpoint_dir=stage_dir,
        )
        if rank_zero_only.rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(final_file))
        record["stages"].append(
            {"stage": index, "trainable_parameters": trainable, "seconds": round(time.perf_counter() - started, 2)}
        )
    if recipe.train.wise_alphas:
        record["wise_ft"] = _choose_wise_alpha(model, probe_state, recipe.train.wise_alphas, prep, val_set, say)
    model.requires_grad_(False)
    return record, trainer


def _choose_wise_alpha(
    model: BrainTumorNet,
    probe_state: dict[str, torch.Tensor],
    alphas: list[float],
    prep: Preprocessing,
    val_set: ImageSet,
    say: Any,
) -> dict[str, Any]:
    """WiSE-FT: keep the interpolation of probed and fine-tuned weights with the lowest validation loss."""
    tuned_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    labels = val_set.labels.numpy()
    losses: dict[str, float] = {}
    for alpha in sorted(set(alphas)):
        model.load_state_dict(interpolate_weights(probe_state, tuned_state, alpha))
        probabilities = predict_probabilities(model, val_set, prep)
        # The same validation cross-entropy as the rest of the run reports (classification_metrics).
        losses[f"{alpha:g}"] = classification_metrics(labels, probabilities, list(CLASS_NAMES))["loss"]
    best = min(losses, key=losses.__getitem__)
    model.load_state_dict(interpolate_weights(probe_state, tuned_state, float(best)))
    say(f"WiSE-FT: validation loss per alpha {losses}; keeping alpha {best}")
    return {"alpha": float(best), "val_loss_per_alpha": losses}


def read_run_file(run_dir: Path | str) -> dict[str, Any]:
    """The ``run.json`` a training writes when it starts (recipe, data root, options, tracker run)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise BrainTumorError(f"{run_dir} is not a training run folder (no {RUN_FILE}); nothing to resume")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise BrainTumorError(f"{path} is unreadable: {error}") from None


def train_recipe(
    recipe: Recipe,
    data_root: Path | str,
    run_dir: Path | str,
    *,
    show_progress: bool | None = None,
    console_log: Any = None,
    options: RunOptions | None = None,
    resume: bool = False,
) -> TrainResult | None:
    """Train ``recipe`` on ``<data_root>/Training`` and write ``<run_dir>/bundle``.

    ``console_log`` is any callable taking a string (``rich.console.Console.print``); messages about
    skipped files and duplicates go there so the person running it sees them. With ``resume=True`` the
    run continues from ``<run_dir>/checkpoints/last.ckpt`` (same recipe, same split, same tracker run).
    Returns ``None`` in the non-zero ranks of a multi-process run; rank zero writes every file.
    """
    options = options or RunOptions()
    if show_progress is not None:
        options.show_progress = show_progress
    say = console_log or log.info
    if rank_zero_only.rank != 0:
        say = log.debug
    _quiet_lightning()
    started = time.perf_counter()
    data_root, run_dir = Path(data_root), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last_checkpoint = run_dir / "checkpoints" / "last.ckpt"
    previous = read_run_file(run_dir) if resume else {}
    resume_from = last_checkpoint if resume and last_checkpoint.is_file() else None
    if resume and resume_from is None:
        say(f"no checkpoint in {run_dir / 'checkpoints'} yet: starting the run from the first epoch")
    if not resume and rank_zero_only.rank == 0:
        # A fresh run must not pick up an older run's checkpoints or features from the same folder.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / FEATURE_CACHE_FILE).unlink(missing_ok=True)
    L.seed_everything(recipe.train.seed, workers=True, verbose=False)

    samples = discover_split(data_root, "Training")  # layout errors surface before any model is built
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    image_set = load_images(samples, prep, description="Decoding Training", show_progress=options.show_progress)
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
    train_idx, val_idx = stratified_split(image_set.labels, recipe.data.val_fraction, recipe.data.split_seed)
    train_set, val_set = image_set.subset(train_idx), image_set.subset(val_idx)
    say(
        f"training on {len(train_set)} images, validating on {len(val_set)} (stratified, seed "
        f"{recipe.data.split_seed}); class counts {train_set.class_counts()}"
    )

    tracking = dict(previous.get("tracking") or {})
    logger = None
    if rank_zero_only.rank == 0:
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
            },
        )

    class_weights = resolve_class_weights(recipe.train, train_set.labels, len(CLASS_NAMES))
    history = EpochHistory(run_dir / "history.csv")
    timing: dict[str, Any] = {}
    finetuning: dict[str, Any] | None = None
    trainer: L.Trainer | None = None
    use_cache = model.frozen_backbone and recipe.train.feature_cache
    fit_started = time.perf_counter()
    if use_cache:
        train_features, val_features, reused = _cached_features(
            model, recipe, prep, train_set, val_set, run_dir, options.show_progress
        )
        timing.update(
            feature_views=int(train_features.shape[0]),
            feature_cache_reused=reused,
            feature_extraction_s=round(time.perf_counter() - fit_started, 2),
        )
        train_loader, val_loader, scheduler = _view_loaders(
            train_features, val_features, train_set, val_set, recipe, 512
        )
        module = ClassifierModule(model.head, recipe.train, num_classes=len(CLASS_NAMES), class_weights=class_weights)
        probe_file = run_dir / "checkpoints" / PROBE_FILE
        if resume and probe_file.is_file():
            # The probe finished before the interruption: its weights are final, go on to fine-tuning.
            model.head.load_state_dict(load_file(str(probe_file)))
        else:
            history.stage = "probe" if recipe.train.finetune_stages else "train"
            trainer = _fit(
                module,
                train_loader,
                val_loader,
                recipe,
                run_dir,
                history,
                [scheduler],
                options,
                logger,
                resume_from,
            )
            if recipe.train.finetune_stages and rank_zero_only.rank == 0:
                save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(probe_file))
        timing["probe_fit_s"] = round(time.perf_counter() - fit_started, 2)
        if recipe.train.finetune_stages:
            finetuning, stage_trainer = _finetune(
                model,
                recipe,
                prep,
                train_set,
                val_set,
                run_dir,
                history,
                options,
                logger,
                class_weights,
                resume,
                say,
            )
            trainer = stage_trainer or trainer
    else:
        train_loader, val_loader = _image_loaders(recipe, prep, train_set, val_set)
        module = ClassifierModule(model, recipe.train, num_classes=len(CLASS_NAMES), class_weights=class_weights)
        trainer = _fit(module, train_loader, val_loader, recipe, run_dir, history, [], options, logger, resume_from)
    timing["fit_s"] = round(time.perf_counter() - fit_started, 2)
    if rank_zero_only.rank != 0:
        return None

    val_probabilities = predict_probabilities(model, val_set, prep)
    val_metrics = classification_metrics(val_set.labels.numpy(), val_probabilities, list(CLASS_NAMES))
    val_losses = [row.get("val_loss", float("inf")) for row in history.rows]
    best_epoch = int(np.argmin(val_losses)) + 1 if val_losses else 0
    duration = time.perf_counter() - started
    training_record = {
        "data_root": str(data_root.resolve()),
        "n_train": len(train_set),
        "n_val": len(val_set),
        "train_class_counts": train_set.class_counts(),
        "val_paths": [str(p) for p in val_set.paths],
        "skipped_files": [vars(s) for s in image_set.skipped],
        "duplicates": duplicates,
        "epochs_run": len(history.rows),
        "best_epoch": best_epoch,
        "history": history.rows,
        "val_metrics": val_metrics,
        "feature_cache": use_cache,
        "finetuning": finetuning,
        "class_weights": None if class_weights is None else class_weights.tolist(),
        "timing": timing,
        "duration_s": round(duration, 2),
        "resumed": resume_from is not None,
        "devices": {
            "accelerator": options.accelerator,
            "devices": options.devices,
            "num_nodes": options.num_nodes,
            "strategy": options.strategy,
            "world_size": trainer.world_size if trainer is not None else None,
        },
        "tracking": tracking,
    }
    manifest = build_manifest(recipe, data_root, image_set.paths, image_set.hashes)
    bundle_dir = save_bundle(run_dir / "bundle", model, recipe, prep, training=training_record, manifest=manifest)
    if history.rows:
        plot_training_curves(history.rows, run_dir / "training_curves.png", title=recipe.name)
    write_json_atomic(run_dir / "val_metrics.json", val_metrics)
    write_json_atomic(run_dir / "run_manifest.json", manifest)
    if logger is not None:
        log_final_metrics(
            logger,
            {
                "best_val_loss": val_metrics["loss"],
                "best_val_accuracy": val_metrics["accuracy"],
                "best_val_macro_f1": val_metrics["macro_f1"],
                "best_epoch": best_epoch,
            },
        )
        log_artifacts(
            logger,
            [bundle_dir, run_dir / "training_curves.png", run_dir / "history.csv", run_dir / "run_manifest.json"],
        )
    return TrainResult(
        run_dir,
        bundle_dir,
        history.rows,
        val_metrics,
        best_epoch,
        duration,
        image_set.skipped,
        logger=logger,
        tracking=tracking,
    )


def resume_run(
    run_dir: Path | str,
    *,
    options: RunOptions | None = None,
    console_log: Any = None,
    show_progress: bool | None = None,
) -> TrainResult | None:
    """Continue an interrupted run from its last checkpoint, with the recipe and data it started with."""
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
    )
