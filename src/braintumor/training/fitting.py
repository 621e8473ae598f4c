"""The Lightning fits of one run: what they share, their loaders (images or cached views), the trainer.

Every fit of a run (the plain fit, the probe, each fine-tuning stage) writes into the same history and
logger and stops early on validation loss; :class:`FitContext` carries what they share so that each
step takes one argument instead of ten.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from braintumor.classes import CLASS_NAMES
from braintumor.config import Recipe
from braintumor.data.dataset import ImageSet, ImageTensorDataset, decode_workers
from braintumor.data.preprocessing import Preprocessing, eval_transform, train_transform
from braintumor.runtime import resolve_precision
from braintumor.training.callbacks import EpochHistory
from braintumor.training.checkpoints import AtomicCheckpointIO, RunEarlyStopping, epoch_checkpoints, usable_checkpoint
from braintumor.training.determinism import EpochSampler, EpochSeed, EpochSeededDataset
from braintumor.training.distill import Teacher
from braintumor.training.features import FeatureViewDataset
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
    # Cached features larger than this go to memory-mapped files in cache_dir (default <run>/feature_cache).
    cache_dir: str | None = None
    cache_memory_mb: float = 512.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BottomActivations:
    """The frozen bottom's activations the probe computed on its way to the features, for the first fine-tuning
    stage (which then does not run the bottom again), and how to free them once the stage is done."""

    train: torch.Tensor  # [views, N, C, H, W]
    val: torch.Tensor  # [1, N, C, H, W]
    release: Callable[[], None]


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
    # What a forced resume let through (another recipe, data set or code version): recorded in the manifest.
    resume_warnings: list[str] = field(default_factory=list)
    # The distillation teacher (recipe train.distill), wrapped for the student's inputs.
    teacher: Teacher | None = None
    # Handed from the probe to the first cached fine-tuning stage (:mod:`braintumor.training.feature_cache`).
    bottom_activations: BottomActivations | None = None


def quiet_lightning() -> None:
    """Silence Lightning's tips about workers and tensor cores: noise for our CPU-first data (workers sized to it)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`isinstance\\(treespec, LeafSpec\\)`.*")
    # A frozen backbone is in eval mode on purpose (fixed BatchNorm statistics).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    # A resumed fit writes into the folder it continues, on purpose.
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


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
        teacher=context.teacher,
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
    ``resume_from`` is used only when it loads (:func:`~braintumor.training.checkpoints.usable_checkpoint`).
    """
    recipe, options = context.recipe, context.options
    best, last = epoch_checkpoints(checkpoint_dir or context.run_dir / "checkpoints")
    train_loader, val_loader = loaders
    sampler = train_loader.sampler if isinstance(train_loader.sampler, EpochSampler) else None
    trainer = L.Trainer(
        max_epochs=max_epochs or recipe.train.max_epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        num_nodes=options.num_nodes,
        strategy=options.strategy,
        precision=resolve_precision(precision) if precision else recipe.precision(),
        callbacks=[
            EpochSeed(recipe.train.seed, context.history.stage, sampler),
            context.history,
            RunEarlyStopping(monitor="val_loss", mode="min", patience=recipe.train.early_stopping_patience),
            *(callbacks or []),
            best,
            last,
        ],
        plugins=[AtomicCheckpointIO()],
        # EpochSampler shards the training set per rank itself; validation runs whole on every rank.
        use_distributed_sampler=False,
        logger=context.logger if context.logger is not None else False,
        log_every_n_steps=1,
        enable_progress_bar=options.show_progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=context.run_dir,
    )
    trainer.fit(module, train_loader, val_loader, ckpt_path=usable_checkpoint(resume_from, context.say))
    _restore_best(module, best)
    return trainer


def _loader_generator(seed: int) -> torch.Generator:
    # A DataLoader draws its workers' base seed when an epoch's iteration starts; from the global generator that
    # would shift the dropout draws after EpochSeed's re-seed in some epochs and not in others (Lightning starts
    # a fit's first iteration before the epoch hooks). Per-sample seeding makes the value itself irrelevant.
    return torch.Generator().manual_seed(seed)


class _DeferredIterator:
    """Starts its loader's real iterator at the first ``next``, not at ``iter``."""

    def __init__(self, loader: DeferredLoader) -> None:
        self.loader: DeferredLoader | None = loader
        self.iterator: Iterator[Any] | None = None

    def __iter__(self) -> _DeferredIterator:
        return self

    def __next__(self) -> Any:
        if self.iterator is None:
            assert self.loader is not None
            self.iterator = DataLoader.__iter__(self.loader)
            self.loader = None
        return next(self.iterator)

    def __len__(self) -> int:
        return len(self.loader) if self.loader is not None else len(self.iterator)  # type: ignore[arg-type]


class DeferredLoader(DataLoader):
    """A DataLoader whose workers draw their first indices at the first batch, not when Lightning calls ``iter``.

    A resumed fit calls ``iter`` on its training loader before it restores the loop's epoch from the checkpoint;
    worker processes prefetch as soon as their iterator starts, so :class:`EpochSampler` would give them the
    order (and augmentation seeds) of epoch 0. Started at the first ``next`` they get the restored epoch, as a
    loader without workers does.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return _DeferredIterator(self)


def image_loaders(context: FitContext) -> tuple[DataLoader, DataLoader]:
    """Loaders over the images: shuffled by (seed, epoch) and the recipe's augmentation for training.

    Streamed images are decoded in the loaders' workers (the recipe's ``data.num_workers``, else
    :func:`~braintumor.data.dataset.decode_workers`), overlapping with the network.
    """
    recipe, prep = context.recipe, context.prep
    streaming = context.train_set.streaming or context.val_set.streaming
    workers = recipe.data.num_workers or (decode_workers() if streaming else 0)
    train_set = ImageTensorDataset(context.train_set, train_transform(recipe.augment, prep))
    train_loader = DeferredLoader(
        # Each sample's augmentation is drawn from (seed, epoch, index): the same in any worker, rank or resume.
        EpochSeededDataset(train_set, recipe.train.seed),
        batch_size=recipe.data.batch_size,
        sampler=EpochSampler(len(train_set), recipe.train.seed),
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=_loader_generator(recipe.train.seed),
    )
    val_loader = DataLoader(
        ImageTensorDataset(context.val_set, eval_transform(prep)),
        batch_size=recipe.data.batch_size * 2,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=_loader_generator(recipe.train.seed),
    )
    return train_loader, val_loader


def view_loaders(
    train_views: torch.Tensor,
    val_views: torch.Tensor,
    context: FitContext,
    val_batch_size: int,
    teacher_views: torch.Tensor | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Loaders over cached views: the image path's shuffle order, view ``epoch % views`` in epoch ``epoch``.

    ``teacher_views``: the distillation teacher's outputs on the same training views, served with them.
    """
    recipe = context.recipe
    train_dataset = FeatureViewDataset(train_views, context.train_set.labels, teacher_views)
    train_loader = DataLoader(
        train_dataset,
        batch_size=recipe.data.batch_size,
        sampler=EpochSampler(len(train_dataset), recipe.train.seed),
        generator=_loader_generator(recipe.train.seed),
    )
    val_loader = DataLoader(FeatureViewDataset(val_views, context.val_set.labels), batch_size=val_batch_size)
    return train_loader, val_loader


def save_weights(network: nn.Module, path: Path, history: EpochHistory | None = None) -> None:
    """A finished fit's weights as safetensors, which a resumed run loads instead of fitting again (rank zero).

    The history rows so far go in the file's metadata (a resumed run that skips this fit gets them back);
    written to a temporary name and renamed, so a kill while saving leaves no file that looks finished.
    """
    if rank_zero_only.rank != 0:
        return
    metadata = {"history": json.dumps(history.rows)} if history is not None else None
    temporary = path.with_name(path.name + ".tmp")
    save_file({key: value.contiguous() for key, value in network.state_dict().items()}, str(temporary), metadata)
    os.replace(temporary, path)


def load_weights(network: nn.Module, path: Path, history: EpochHistory | None = None) -> None:
    """Load what :func:`save_weights` wrote into ``network`` and ``history``."""
    with safe_open(str(path), framework="pt") as handle:
        network.load_state_dict({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
        saved = (handle.metadata() or {}).get("history")
    if history is not None and saved is not None:
        history.rows = json.loads(saved)
