"""Lightning callbacks of our own: a per-epoch metrics table written as CSV after every epoch."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning as L

HISTORY_FIELDS = ("stage", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "learning_rate", "epoch_seconds")


class EpochHistory(L.Callback):
    """Collects one row per finished epoch and rewrites ``history.csv`` each time (survives a crash)."""

    def __init__(self, csv_path: Path | None = None) -> None:
        self.csv_path = csv_path
        # Which phase the rows belong to (train, probe, finetune-N): one table for a whole multi-stage run.
        self.stage = "train"
        self.rows: list[dict[str, Any]] = []
        self._epoch_started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row: dict[str, Any] = {"stage": self.stage, "epoch": trainer.current_epoch + 1}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            if key in metrics:
                row[key] = float(metrics[key])
        row["learning_rate"] = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        row["epoch_seconds"] = round(time.perf_counter() - self._epoch_started, 3)
        self.rows.append(row)
        if self.csv_path is not None and trainer.is_global_zero:
            self.write_csv(self.csv_path)

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
