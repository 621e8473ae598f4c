"""The Lightning fits of one run: what they share, their loaders (images or cached views), the trainer.

Every fit of a run (the plain fit, the probe, each fine-tuning stage) writes into the same history and
logger and stops early on validation loss; :class:`FitContext` carries what they share so that each
step takes one argument instead of ten.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from braintumor.config import Recipe
from braintumor.data.dataset import ImageSet, ImageTensorDataset
from braintumor.data.preprocessing import Preprocessing, eval_transform, train_transform
from braintumor.layout_constants import CLASS_NAMES
from braintumor.runtime import resolve_precision
from braintumor.training.callbacks import EpochHistory
from braintumor.training.features import FeatureViewDataset, FeatureViewScheduler
from braintumor.training.module import ClassifierModule
from braintumor.training.tracking import TrackerName

# Where a run's messages for the person running it go (``rich.console.Console.print``, ``logging.info``).
Say = Callable[[str], object]


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
    # Write model.onnx (checked against PyTorch) into the bundle, so `serve` uses onnxruntime without a manual step.
    export_onnx: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitContext:
    """What every fit of one run shares: recipe, split, run folder, options, history, logger, loss weights."""

    recipe: Recipe
    prep: Preprocessing
    train_set: ImageSet
    val_set: ImageSet
    run_dir: Path
    options: RunOptions
    history: EpochHistory
    logger: Logger | None
    class_weights: torch.Tensor | None
    resume: bool
    # The run's last.ckpt when resuming, looked up once when the run started (a fit writes a new one).
    resume_from: Path | None
    say: Say


def quiet_lightning() -> None:
    """Silence Lightning's tips about workers and tensor cores: noise for our in-memory, CPU-first data."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    # A frozen backbone is in eval mode on purpose (fixed BatchNorm statistics).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


def classifier(
    network: nn.Module, context: FitContext, optimizer_groups: list[dict[str, Any]] | None = None
) -> ClassifierModule:
    """The Lightning module training ``network`` with the recipe's loss and the run's class weights."""
    return ClassifierModule(
        network,
        context.recipe.train,
        num_classes=len(CLASS_NAMES),
        class_weights=context.class_weights,
        optimizer_groups=optimizer_groups,
        channels_last=context.recipe.train.channels_last,
    )


# Heads on cached features are small matrix products: bf16 would only cost them accuracy.
HEAD_PRECISION = "32-true"


def _restore_best(module: ClassifierModule, checkpoint: ModelCheckpoint) -> None:
    if not checkpoint.best_model_path:
        return
    # Our own checkpoint from this run; weights_only keeps even that from running pickled code.
    state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state["state_dict"])


def fit_module(
    module: ClassifierModule,
    loaders: tuple[DataLoader, DataLoader],
    context: FitContext,
    *,
    callbacks: list[L.Callback] | None = None,
    resume_from: Path | None = None,
    max_epochs: int | None = None,
    checkpoint_dir: Path | None = None,
    precision: str | None = None,
) -> L.Trainer:
    """Lightning fit with early stopping and per-epoch checkpoints, then the best epoch's weights restored.

    ``precision`` (default: the recipe's) is resolved for this machine (:meth:`~braintumor.config.Recipe.precision`).
    """
    recipe, options = context.recipe, context.options
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir or context.run_dir / "checkpoints",
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        every_n_epochs=1,
    )
    trainer = L.Trainer(
        max_epochs=max_epochs or recipe.train.max_epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        precision=resolve_precision(precision) if precision else recipe.precision(),
        callbacks=[
            context.history,
            checkpoint,
            EarlyStopping(monitor="val_loss", mode="min", patience=recipe.train.early_stopping_patience),
            *(callbacks or []),
        ],
        logger=context.logger if context.logger is not None else False,
        log_every_n_steps=1,
        enable_progress_bar=options.show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=context.run_dir,
    )
    train_loader, val_loader = loaders
    trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from)
    _restore_best(module, checkpoint)
    return trainer


def image_loaders(context: FitContext) -> tuple[DataLoader, DataLoader]:
    """Loaders over the decoded images: seeded shuffle and the recipe's augmentation for training."""
    recipe, prep = context.recipe, context.prep
    workers = recipe.data.num_workers
    train_loader = DataLoader(
        ImageTensorDataset(context.train_set, train_transform(recipe.augment, prep)),
        batch_size=recipe.data.batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(recipe.train.seed),
        persistent_workers=workers > 0,
    )
    val_loader = DataLoader(
        ImageTensorDataset(context.val_set, eval_transform(prep)),
        batch_size=recipe.data.batch_size * 2,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    return train_loader, val_loader


def view_loaders(
    train_views: torch.Tensor, val_views: torch.Tensor, context: FitContext, val_batch_size: int
) -> tuple[tuple[DataLoader, DataLoader], FeatureViewScheduler]:
    """Loaders over cached views (the image path's shuffle order) and the callback that switches the view."""
    recipe = context.recipe
    train_dataset = FeatureViewDataset(train_views, context.train_set.labels)
    train_loader = DataLoader(
        train_dataset,
        batch_size=recipe.data.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(recipe.train.seed),
    )
    val_loader = DataLoader(FeatureViewDataset(val_views, context.val_set.labels), batch_size=val_batch_size)
    return (train_loader, val_loader), FeatureViewScheduler(train_dataset)


def save_weights(network: nn.Module, path: Path) -> None:
    """A finished fit's weights as safetensors, which a resumed run loads instead of fitting again (rank zero)."""
    if rank_zero_only.rank == 0:
        save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(path))
