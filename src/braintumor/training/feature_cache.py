"""A run's encoded views: backbone features (the probe) or frozen-bottom activations (a cached stage).

The probe's features are kept under a fingerprint of everything they depend on, so a resumed run reads
them back instead of running the backbone again: in ``<run>/feature_cache.safetensors`` when they fit the
run's memory budget (``RunOptions.cache_memory_mb``), else as ``.npy`` arrays memory-mapped from
``<cache dir>/<fingerprint>/`` (``RunOptions.cache_dir``, default ``<run>/feature_cache``), written batch by
batch as the backbone computes them and never held whole in memory.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_only
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from braintumor.config import Recipe
from braintumor.data.batch_augment import batch_augmentation
from braintumor.data.preprocessing import Preprocessing, eval_transform, train_transform
from braintumor.models.network import BrainTumorNet
from braintumor.training.features import Allocate, build_view_features, encode_stored_views
from braintumor.training.finetune import stage_split
from braintumor.training.fitting import BottomActivations, FitContext

FEATURE_CACHE_FILE = "feature_cache.safetensors"
# The default folder (inside the run folder) of features over the memory budget.
FEATURE_CACHE_DIR = "feature_cache"
# Written last: a folder without it holds arrays an interrupted run left half written.
DONE_FILE = "done.json"


def cache_views(recipe: Recipe) -> int:
    """Views per training image in a cache: the recipe's ``cache_views``, or the clean one without augmentation."""
    return recipe.train.cache_views if recipe.augment.enabled else 1


class FeatureStore:
    """Where encoded views go: in memory when an array fits ``budget_bytes``, else in a ``.npy`` file of
    ``folder``, memory-mapped (its pages are handed back to the kernel once written: :meth:`release`)."""

    def __init__(self, folder: Path | None, budget_bytes: int) -> None:
        self.folder, self.budget_bytes = folder, budget_bytes
        self.maps: dict[str, np.memmap] = {}

    def allocator(self, name: str) -> Allocate:
        """The ``out`` of :func:`~braintumor.training.features.build_view_features` for array ``name``."""

        def allocate(count: int, shape: torch.Size) -> torch.Tensor:
            size = count * int(np.prod(shape)) * 4
            if self.folder is None or size <= self.budget_bytes:
                return torch.empty((count, *shape), dtype=torch.float32)
            self.folder.mkdir(parents=True, exist_ok=True)
            array = np.lib.format.open_memmap(self.folder / f"{name}.npy", "w+", np.float32, (count, *shape))
            self.maps[name] = array
            return torch.from_numpy(array)

        return allocate

    def release(self) -> None:
        """Write the memory-mapped arrays to their files and drop their pages from this process's memory."""
        for array in self.maps.values():
            array.flush()
            handle = getattr(array, "_mmap", None)
            if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
                handle.madvise(mmap.MADV_DONTNEED)


def _memory_budget(context: FitContext) -> int:
    return int(context.options.cache_memory_mb * 1024 * 1024)


def encode_views(
    encoder: nn.Module, context: FitContext, store: FeatureStore | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder``'s outputs ``[views, N, ...]`` for the training views and ``[1, N, ...]`` for the clean validation,
    in ``store`` (default: in memory).

    Through the unfolded network (no :func:`~braintumor.models.fusion.fold_batchnorm`): cached features must be
    bitwise what the image path computes, or a cached run would train another head than an uncached one.
    """
    recipe, prep, show_progress = context.recipe, context.prep, context.options.show_progress
    clean = eval_transform(prep)
    run = {
        "seed": recipe.train.seed,
        "show_progress": show_progress,
        "precision": recipe.precision(),
        "channels_last": recipe.train.channels_last,
    }
    store = store or FeatureStore(None, 0)
    augmented, per_image = augmented_view_transform(recipe, prep)
    views = cache_views(recipe)
    train = build_view_features(
        encoder,
        context.train_set,
        clean,
        augmented,
        views=views,
        out=store.allocator("train"),
        augmented_per_image=per_image,
        **run,
    )
    val = build_view_features(encoder, context.val_set, clean, clean, views=1, out=store.allocator("val"), **run)
    store.release()
    return train, val


def augmented_view_transform(
    recipe: Recipe, prep: Preprocessing
) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """The augmented views' transform and whether it runs image by image: a rotation, zoom, translation and
    mirroring augmentation runs on whole batches (:mod:`braintumor.data.batch_augment`), any other image by image."""
    batched = batch_augmentation(recipe.augment, prep)
    return (train_transform(recipe.augment, prep), True) if batched is None else (batched, False)


def teacher_view_logits(context: FitContext) -> torch.Tensor | None:
    """The distillation teacher's outputs ``[views, N, classes]`` on the training views :func:`encode_views` makes.

    The same transforms and seeds draw the same views, so the teacher sees exactly what the student's features
    were computed from; ``None`` without a teacher. Computed once per run (a resumed run computes them again).
    """
    if context.teacher is None:
        return None
    recipe, prep = context.recipe, context.prep
    augmented, per_image = augmented_view_transform(recipe, prep)
    return build_view_features(
        context.teacher.network,
        context.train_set,
        eval_transform(prep),
        augmented,
        augmented_per_image=per_image,
        views=cache_views(recipe),
        seed=recipe.train.seed,
        show_progress=context.options.show_progress,
        precision=context.teacher.precision,
        channels_last=recipe.train.channels_last,
    )


def _fingerprint(context: FitContext) -> str:
    recipe = context.recipe
    return hashlib.sha256(
        json.dumps(
            [
                recipe.model.model_dump(mode="json"),
                recipe.augment.model_dump(mode="json"),
                context.prep.model_dump(mode="json"),
                cache_views(recipe),
                # How the augmented views are drawn: on whole batches or image by image (another draw).
                "batched views, drawn in blocks of 32"
                if batch_augmentation(recipe.augment, context.prep) is not None
                else "per image",
                recipe.train.seed,
                # bf16 features differ from fp32 ones in the last bits: a cache from the other precision is stale.
                recipe.precision(),
                context.train_set.hashes,
                context.val_set.hashes,
            ]
        ).encode()
    ).hexdigest()


def stage_activation_store(context: FitContext, index: int) -> FeatureStore:
    """Where a cached fine-tuning stage's frozen-bottom activations go: in memory within the run's budget, else
    memory-mapped from ``<cache dir>/stage-<index>-activations/`` (rewritten by each run of the stage; other DDP
    ranks keep theirs in memory, as for the probe's features)."""
    folder = feature_cache_dir(context) / f"stage-{index}-activations" if rank_zero_only.rank == 0 else None
    return FeatureStore(folder, _memory_budget(context))


def remove_stage_activations(store: FeatureStore) -> None:
    """Delete a finished stage's memory-mapped activations (nothing to do when they were in memory)."""
    if store.maps and store.folder is not None:
        store.maps.clear()
        shutil.rmtree(store.folder, ignore_errors=True)


def feature_cache_dir(context: FitContext) -> Path:
    """The folder of features over the memory budget: ``RunOptions.cache_dir`` or ``<run>/feature_cache``."""
    options = context.options
    return Path(options.cache_dir) if options.cache_dir else context.run_dir / FEATURE_CACHE_DIR


def _read_disk_cache(folder: Path, fingerprint: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        done = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
        if done.get("fingerprint") != fingerprint:
            return None
        # Copy-on-write maps: writable tensors for torch, the file itself never changed.
        train, val = (np.load(folder / f"{name}.npy", mmap_mode="c") for name in ("train", "val"))
    except (OSError, ValueError):
        return None  # missing or half-written: recomputed
    return torch.from_numpy(train), torch.from_numpy(val)[0]


def _read_file_cache(cache_file: Path, fingerprint: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not cache_file.is_file():
        return None
    try:
        with safe_open(str(cache_file), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                return handle.get_tensor("train"), handle.get_tensor("val")
    except (SafetensorError, OSError):
        pass  # an unreadable cache is recomputed
    return None


def cached_features(model: BrainTumorNet, context: FitContext) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Backbone features for every view and whether they were read back from this run's matching cache.

    Features over the run's memory budget are written to, and read back from, memory-mapped files of
    :func:`feature_cache_dir` (one folder per fingerprint, so several runs can share a cache folder).
    """
    fingerprint = _fingerprint(context)
    cache_file = context.run_dir / FEATURE_CACHE_FILE
    folder = feature_cache_dir(context) / fingerprint[:32]
    found = _read_file_cache(cache_file, fingerprint) or _read_disk_cache(folder, fingerprint)
    if found is not None:
        return found[0], found[1], True
    if rank_zero_only.rank == 0:
        (folder / DONE_FILE).unlink(missing_ok=True)
    # Other ranks compute their features in memory: only rank zero writes the cache.
    store = FeatureStore(folder if rank_zero_only.rank == 0 else None, _memory_budget(context))
    train_features, val_views = _encode_features(model, context, store)
    val_features = val_views[0]
    if rank_zero_only.rank != 0:
        return train_features, val_features, False
    if store.maps:
        # Over the budget: the big array(s) were written to their files as they were computed; the others join them.
        for name, array in (("train", train_features), ("val", val_views)):
            if name not in store.maps:
                np.save(folder / f"{name}.npy", array.numpy())
        (folder / DONE_FILE).write_text(json.dumps({"fingerprint": fingerprint}), encoding="utf-8")
        cache_file.unlink(missing_ok=True)
        return train_features, val_features, False
    temporary = cache_file.with_suffix(".tmp")
    save_file(
        {"train": train_features.contiguous(), "val": val_features.contiguous()},
        str(temporary),
        metadata={"fingerprint": fingerprint},
    )
    temporary.replace(cache_file)
    return train_features, val_features, False


def _encode_features(
    model: BrainTumorNet, context: FitContext, store: FeatureStore
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's features of every view; through the first fine-tuning stage's frozen bottom when that stage
    trains on cached activations: ``top(bottom(x))`` is ``backbone(x)``, and the stage reuses the bottom's
    activations instead of running the bottom over every view again (``context.bottom_activations``)."""
    stages = context.recipe.train.finetune_stages
    split = stage_split(model.backbone, stages[0]) if stages and stages[0].cache_frozen_layers else None
    if split is None:
        return encode_views(model.backbone, context, store)
    bottom, top = split
    activation_store = stage_activation_store(context, 1)
    train_activations, val_activations = encode_views(bottom, context, activation_store)
    context.bottom_activations = BottomActivations(
        train_activations, val_activations, lambda: remove_stage_activations(activation_store)
    )
    recipe = context.recipe
    run = {
        "show_progress": context.options.show_progress,
        "precision": recipe.precision(),
        "channels_last": recipe.train.channels_last,
    }
    train = encode_stored_views(top, train_activations, out=store.allocator("train"), **run)
    val = encode_stored_views(top, val_activations, out=store.allocator("val"), **run)
    store.release()
    return train, val


def clear_feature_cache(run_dir: Path) -> None:
    """Remove a run folder's feature caches (a fresh run must not read an older run's)."""
    (run_dir / FEATURE_CACHE_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / FEATURE_CACHE_DIR, ignore_errors=True)
