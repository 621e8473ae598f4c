"""Train one recipe end to end and write a model bundle.

Steps: check the layout, decode Training once, drop exact duplicates (optional), take a stratified
validation split, fit with Lightning (EarlyStopping + ReduceLROnPlateau on validation loss, best
checkpoint restored), then save the bundle, ``history.csv`` and ``training_curves.png``.
The official Testing split is never read here.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

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
from braintumor.evaluation.metrics import classification_metrics
from braintumor.evaluation.plots import plot_training_curves
from braintumor.inference.bundle import save_bundle, write_json_atomic
from braintumor.layout_constants import CLASS_NAMES
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.network import BrainTumorNet
from braintumor.training.callbacks import EpochHistory
from braintumor.training.features import FeatureViewDataset, FeatureViewScheduler, build_view_features
from braintumor.training.module import ClassifierModule

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


def _make_trainer(
    recipe: Recipe, run_dir: Path, history: EpochHistory, extra: list[L.Callback], show_progress: bool
) -> tuple[L.Trainer, ModelCheckpoint]:
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_last=True,
    )
    callbacks: list[L.Callback] = [
        history,
        checkpoint,
        EarlyStopping(monitor="val_loss", mode="min", patience=recipe.train.early_stopping_patience),
        *extra,
    ]
    trainer = L.Trainer(
        max_epochs=recipe.train.max_epochs,
        accelerator="auto",
        devices=1,
        precision=recipe.train.precision,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
        default_root_dir=run_dir,
    )
    return trainer, checkpoint


def _fit_full(
    model: BrainTumorNet,
    recipe: Recipe,
    prep: Preprocessing,
    train_set: ImageSet,
    val_set: ImageSet,
    run_dir: Path,
    history: EpochHistory,
    show_progress: bool,
) -> ClassifierModule:
    generator = torch.Generator().manual_seed(recipe.train.seed)
    train_loader = DataLoader(
        ImageTensorDataset(train_set, train_transform(recipe.augment, prep)),
        batch_size=recipe.data.batch_size,
        shuffle=True,
        num_workers=recipe.data.num_workers,
        generator=generator,
        persistent_workers=recipe.data.num_workers > 0,
    )
    val_loader = DataLoader(
        ImageTensorDataset(val_set, eval_transform(prep)),
        batch_size=recipe.data.batch_size * 2,
        num_workers=recipe.data.num_workers,
        persistent_workers=recipe.data.num_workers > 0,
    )
    module = ClassifierModule(model, recipe.train, num_classes=len(CLASS_NAMES))
    trainer, checkpoint = _make_trainer(recipe, run_dir, history, [], show_progress)
    trainer.fit(module, train_loader, val_loader)
    _restore_best(module, checkpoint)
    return module


def _fit_head_on_features(
    model: BrainTumorNet,
    recipe: Recipe,
    prep: Preprocessing,
    train_set: ImageSet,
    val_set: ImageSet,
    run_dir: Path,
    history: EpochHistory,
    show_progress: bool,
) -> tuple[ClassifierModule, dict[str, float]]:
    started = time.perf_counter()
    views = recipe.train.cache_views if recipe.augment.enabled else 1
    train_features = build_view_features(
        model,
        train_set,
        eval_transform(prep),
        train_transform(recipe.augment, prep),
        views=views,
        seed=recipe.train.seed,
        show_progress=show_progress,
    )
    val_features = build_view_features(
        model,
        val_set,
        eval_transform(prep),
        eval_transform(prep),
        views=1,
        seed=recipe.train.seed,
        show_progress=show_progress,
    )
    feature_seconds = time.perf_counter() - started
    train_dataset = FeatureViewDataset(train_features, train_set.labels)
    generator = torch.Generator().manual_seed(recipe.train.seed)
    train_loader = DataLoader(train_dataset, batch_size=recipe.data.batch_size, shuffle=True, generator=generator)
    val_loader = DataLoader(FeatureViewDataset(val_features, val_set.labels), batch_size=512)
    module = ClassifierModule(model.head, recipe.train, num_classes=len(CLASS_NAMES))
    trainer, checkpoint = _make_trainer(recipe, run_dir, history, [FeatureViewScheduler(train_dataset)], show_progress)
    trainer.fit(module, train_loader, val_loader)
    _restore_best(module, checkpoint)
    timing = {
        "feature_extraction_s": round(feature_seconds, 2),
        "feature_views": views,
        "head_training_s": round(time.perf_counter() - started - feature_seconds, 2),
    }
    return module, timing


def train_recipe(
    recipe: Recipe,
    data_root: Path | str,
    run_dir: Path | str,
    *,
    show_progress: bool = True,
    console_log: Any = None,
) -> TrainResult:
    """Train ``recipe`` on ``<data_root>/Training`` and write ``<run_dir>/bundle``.

    ``console_log`` is any callable taking a string (``rich.console.Console.print``); messages about
    skipped files and duplicates go there so the person running it sees them.
    """
    say = console_log or log.info
    _quiet_lightning()
    started = time.perf_counter()
    data_root, run_dir = Path(data_root), Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # A fresh run must not pick up an older run's "best" checkpoint from the same folder.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    L.seed_everything(recipe.train.seed, workers=True, verbose=False)

    samples = discover_split(data_root, "Training")  # layout errors surface before any model is built
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    image_set = load_images(samples, prep, description="Decoding Training", show_progress=show_progress)
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

    history = EpochHistory(run_dir / "history.csv")
    timing: dict[str, Any] = {}
    use_cache = model.frozen_backbone and recipe.train.feature_cache
    fit_started = time.perf_counter()
    if use_cache:
        _, timing = _fit_head_on_features(model, recipe, prep, train_set, val_set, run_dir, history, show_progress)
    else:
        _fit_full(model, recipe, prep, train_set, val_set, run_dir, history, show_progress)
    timing["fit_s"] = round(time.perf_counter() - fit_started, 2)

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
        "timing": timing,
        "duration_s": round(duration, 2),
    }
    bundle_dir = save_bundle(run_dir / "bundle", model, recipe, prep, training=training_record)
    if history.rows:
        plot_training_curves(history.rows, run_dir / "training_curves.png", title=recipe.name)
    write_json_atomic(run_dir / "val_metrics.json", val_metrics)
    (run_dir / "recipe.json").write_text(json.dumps(recipe.model_dump(mode="json"), indent=2), encoding="utf-8")
    return TrainResult(run_dir, bundle_dir, history.rows, val_metrics, best_epoch, duration, image_set.skipped)
