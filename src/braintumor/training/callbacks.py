"""Lightning callbacks of our own: a per-epoch metrics table, ``history.csv``, that never runs ahead of the checkpoint.

A row is added in ``on_train_epoch_end``, before Lightning's checkpoint callbacks save (they run last), so
``last.ckpt`` holds it through :meth:`EpochHistory.state_dict`. The CSV is written only afterwards (next
epoch's start, the end of the fit) and rewritten from the restored rows when a fit resumes: a run killed
between the two ends with a CSV one row behind its checkpoint, never ahead.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L

from braintumor.training.determinism import kill_point

HISTORY_FIELDS = ("stage", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "learning_rate", "epoch_seconds")


class EpochHistory(L.Callback):
    """Collects one row per finished epoch of every fit of a run; ``history.csv`` mirrors the checkpointed rows."""

    def __init__(self, csv_path: Path | None = None) -> None:
        self.csv_path = csv_path
        # Which phase the rows belong to (train, probe, finetune-N): one table for a whole multi-stage run.
        self.stage = "train"
        self.rows: list[dict[str, Any]] = []
        self._epoch_started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed fit's rows come from its checkpoint: this drops rows the killed run wrote after it.
        self._flush(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)  # the previous epoch's checkpoint is on disk now
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        kill_point(f"batch:{self.stage}:{trainer.current_epoch + 1}:{batch_idx + 1}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"stage": self.stage, "epoch": trainer.current_epoch + 1}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            if key in metrics:
                row[key] = float(metrics[key])
        row["learning_rate"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        row["epoch_seconds"] = round(time.perf_counter() - self._epoch_started, 3)
        self.rows.append(row)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def _flush(self, trainer: L.Trainer) -> None:
        if self.csv_path is not None and trainer.is_global_zero:
            self.write_csv(self.csv_path)
            stage_rows = [row for row in self.rows if row["stage"] == self.stage]
            if stage_rows:
                kill_point(f"epoch:{self.stage}:{stage_rows[-1]['epoch']}")

    def write_csv(self, path: Path) -> None:
        temporary = path.with_suffix(".csv.tmp")
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        temporary.replace(path)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
