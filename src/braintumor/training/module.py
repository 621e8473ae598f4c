"""The Lightning module shared by every recipe: full-image training and head-on-features training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from braintumor.config import TrainConfig


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of ``network`` (a whole :class:`BrainTumorNet`, or just its head).

    Adam/AdamW on the parameters that require gradients, ReduceLROnPlateau on validation loss.
    """

    def __init__(self, network: nn.Module, train_config: TrainConfig, num_classes: int) -> None:
        super().__init__()
        self.network = network
        self.train_config = train_config
        self.train_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, label_smoothing=self.train_config.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        logits = self(inputs)
        loss = self._loss(logits, targets)
        self.train_accuracy(logits, targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log("train_acc", self.train_accuracy, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        # Plain cross-entropy (no smoothing) so validation loss is comparable across recipes.
        loss = F.cross_entropy(logits, targets)
        self.val_accuracy(logits, targets)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log("val_acc", self.val_accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))

    def configure_optimizers(self) -> dict[str, Any]:
        parameters = [p for p in self.network.parameters() if p.requires_grad]
        optimizer_class = torch.optim.AdamW if self.train_config.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(
            parameters, lr=self.train_config.learning_rate, weight_decay=self.train_config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.train_config.lr_factor, patience=self.train_config.lr_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"},
        }
