"""Checkpoints a resumed run can trust: written atomically, checked before use, complete at the epoch boundary.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes ``<name>.tmp``, flushes it to disk
  and renames it over ``<name>``: a process killed while saving leaves the previous checkpoint in place.
* :func:`usable_checkpoint` reads a checkpoint before a fit resumes from it; one that does not load (a disk
  fault, a foreign file) is set aside as ``<name>.unreadable`` and the fit starts over, which gives the same
  result because every epoch's randomness is a function of its number (:mod:`.determinism`).
* :class:`RunEarlyStopping` restores the decision to stop: Lightning restores the callback's counters but
  not ``trainer.should_stop``, so a run killed after its stopping epoch would otherwise train one more.
* :func:`epoch_checkpoints`: ``best.ckpt`` (lowest validation loss) and ``last.ckpt`` written after **every**
  epoch (Lightning's ``save_last`` only writes it when the monitored value improved), as
  :class:`RunCheckpoint`, which keeps its bookkeeping when the run folder was moved before the resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

# Where messages for the person running the training go (the same as ``fitting.Say``).
Say = Callable[[str], object]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but the file appears under its name only once it is complete."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        super().save_checkpoint(checkpoint, temporary, storage_options)
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)


def usable_checkpoint(path: Path | None, say: Say) -> Path | None:
    """``path`` when it holds a complete Lightning checkpoint, else ``None`` (the fit then starts over)."""
    if path is None or not path.is_file():
        return None
    try:
        # Our own file; weights_only keeps even that from running pickled code.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not {"state_dict", "loops", "callbacks"} <= set(state):
            raise ValueError("not a complete training checkpoint")
    except Exception as error:  # torch.load raises many types for a truncated or foreign file
        aside = path.with_name(path.name + ".unreadable")
        path.replace(aside)
        say(f"checkpoint {path} is unreadable ({error}); moved to {aside.name}, this fit starts over")
        return None
    return path


class RunEarlyStopping(EarlyStopping):
    """Early stopping whose decision survives a resume (see the module docstring)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopped_epoch > 0:
            trainer.should_stop = True


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that follows a run folder that was moved or copied before it was resumed.

    Lightning drops the best score and the top-k bookkeeping when the saved ``dirpath`` differs from the
    current one, and keeps a ``best_model_path`` into the old folder: the resumed run would then pick its
    best epoch from incomplete information. Paths under the old folder are mapped into the current one.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        if old and new and old != new:
            state_dict = {key: _moved(value, old, new) for key, value in state_dict.items()}
        super().load_state_dict(state_dict)


def _moved(value: Any, old: str, new: str) -> Any:
    """``value`` with paths under ``old`` moved under ``new`` (strings, and the keys of ``best_k_models``)."""
    if isinstance(value, str) and (value == old or value.startswith(old + os.sep)):
        return new + value[len(old) :]
    if isinstance(value, dict):
        return {_moved(key, old, new): item for key, item in value.items()}
    return value


def epoch_checkpoints(directory: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``(best, last)``: the lowest-validation-loss epoch and the latest epoch, both in ``directory``.

    Lightning calls them after the other callbacks' ``on_train_epoch_end``, so the saved state holds this
    epoch's history row, early-stopping counters and LR-scheduler step; ``best`` comes first so that
    ``last.ckpt`` holds its updated state.
    """
    best = RunCheckpoint(
        dirpath=directory,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )
    last = RunCheckpoint(
        dirpath=directory, filename="last", monitor=None, save_top_k=1, every_n_epochs=1, enable_version_counter=False
    )
    return best, last
