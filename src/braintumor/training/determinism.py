"""Each epoch's randomness as a pure function of (seed, stage, epoch, rank), so a resumed run replays it exactly.

A run interrupted after epoch ``e`` restarts in a fresh process whose generators hold whatever the pipeline
left in them. Instead of saving and restoring opaque generator states, every source of randomness is
re-derived from the epoch number: the shuffle order and each rank's share (:class:`EpochSampler`), each
sample's augmentation draws (:class:`EpochSeededDataset`, seeded from (seed, epoch, index)), the cached
feature view (``epoch % views``, from the sampler's epoch) and the Python, NumPy and torch (CPU and CUDA)
global generators that dropout draws from (:class:`EpochSeed`, at every epoch start).

:func:`kill_point` is a test hook: inert unless ``BRAINTUMOR_KILL_AT`` names the point reached.

Example:
    >>> derive_seed(42, "train", 3, 0) == derive_seed(42, "train", 3, 0)
    True
    >>> derive_seed(42, "train", 3, 0) != derive_seed(42, "train", 4, 0) != derive_seed(42, "probe", 3, 0)
    True
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

KILL_ENV = "BRAINTUMOR_KILL_AT"


def derive_seed(seed: int, stage: str, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed that depends only on its arguments (SHA-256, not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{seed}/{stage}/{epoch}/{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (``torch.manual_seed`` covers every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)``: this rank's share of a permutation that is a pure function of (seed, epoch).

    The epoch is read from the trainer's fit loop when the order is drawn, not set by a hook: Lightning draws
    the first batch of a fit (its prefetch) before ``set_epoch`` or any epoch-start hook runs, so a resumed
    fit would otherwise start its first epoch with epoch 0's order. Under DDP each rank takes every
    ``world_size``-th index of the padded permutation (as ``DistributedSampler`` does); the trainer is then
    built with ``use_distributed_sampler=False``. The epoch travels with each index so that datasets can
    derive per-sample randomness from it (:class:`EpochSeededDataset`, the feature view).

    Example:
        >>> sampler = EpochSampler(6, seed=1)
        >>> first = list(sampler); sampler.epoch = 5; later = list(sampler); sampler.epoch = 0
        >>> list(sampler) == first != later and sorted(i for _, i in first) == list(range(6))
        True
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch = 0  # used until a trainer is bound
        self.trainer: L.Trainer | None = None

    def _world(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def __len__(self) -> int:
        world, _ = self._world()
        return -(-self.size // world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else self.epoch
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        world, rank = self._world()
        if world > 1:
            order += order[: len(self) * world - self.size]  # pad so that every rank takes as many steps
            order = order[rank::world]
        return iter([(epoch, index) for index in order])


class EpochSeededDataset(Dataset[Any]):
    """Runs ``dataset[index]`` with torch's generator seeded from (seed, epoch, index), then restores it.

    Augmentation draws then depend on neither the batch order, the DataLoader workers nor the ranks, and
    leave the global generator (dropout) untouched. Keys are the ``(epoch, index)`` of :class:`EpochSampler`.
    """

    def __init__(self, dataset: Dataset[Any], seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, f"sample-{index}", epoch))
            return self.dataset[index]


class EpochSeed(L.Callback):
    """Re-seeds the global generators at the start of every epoch from (seed, stage, epoch, rank).

    What is drawn during the training steps (dropout masks) then follows from the epoch number alone, whether
    the run got there in one go or was resumed from the previous epoch's checkpoint. Binds the fit's
    :class:`EpochSampler` to the trainer (its epoch, rank and world size).
    """

    def __init__(self, seed: int, stage: str, sampler: EpochSampler | None = None) -> None:
        self.seed = seed
        self.stage = stage
        self.sampler = sampler

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.sampler is not None:
            self.sampler.trainer = trainer

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed_generators(derive_seed(self.seed, self.stage, trainer.current_epoch, trainer.global_rank))


def kill_point(name: str) -> None:
    """SIGKILL this process when ``$BRAINTUMOR_KILL_AT`` equals ``name`` (the resume tests' crash); else nothing.

    Points: ``epoch:<stage>:<n>`` (epoch n of a fit checkpointed and in history.csv), ``batch:<stage>:<epoch>:<b>``
    (mid-epoch, after batch b), ``features:<view>`` (feature caching, after that view), ``bundle`` (the bundle
    written, the run's other files not yet).
    """
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
