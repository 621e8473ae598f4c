"""The Lightning module shared by every recipe: full-image training and head-on-features training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from braintumor.config import TrainConfig
from braintumor.runtime import channels_last_batch, has_convolutions, to_channels_last
from braintumor.training.distill import Teacher, distillation_loss, token_logits
from braintumor.training.losses import training_loss


class ClassifierModule(L.LightningModule):
    """Training of ``network`` (a whole :class:`BrainTumorNet`, or just its head) with the recipe's loss.

    The loss is cross-entropy or focal loss (``train_config.loss``), weighted per class by
    ``class_weights`` (see :func:`braintumor.training.losses.resolve_class_weights`; ``None`` means
    unweighted). Adam/AdamW on the parameters that require gradients, ReduceLROnPlateau on validation loss.
    """

    def __init__(
        self,
        network: nn.Module,
        train_config: TrainConfig,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        optimizer_groups: list[dict[str, Any]] | None = None,
        channels_last: bool = False,
        teacher: Teacher | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        # Not a submodule: the teacher is no part of the student's checkpoints or parameters.
        object.__setattr__(self, "teacher", teacher)
        # NHWC order for convolutional networks and their image batches (oneDNN's native layout).
        self.channels_last = channels_last and has_convolutions(network)
        self.train_config = train_config
        # Fine-tuning stages pass their own parameter groups (per-group LRs) and get a cosine schedule.
        self.optimizer_groups = optimizer_groups
        if class_weights is not None and class_weights.shape != (num_classes,):
            raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(class_weights.shape)}")
        # A buffer follows the module to the GPU; not persistent, so checkpoints keep their old keys.
        self.register_buffer(
            "class_weights",
            None if class_weights is None else class_weights.detach().float().clone(),
            persistent=False,
        )
        self.train_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def setup(self, stage: str) -> None:
        # NHWC before DDP wraps the module (Lightning calls setup first): DDP lays out its gradient buckets by
        # the parameters' strides then, and re-lays them after the first step. Converted later, a resumed DDP
        # fit's first step would reduce through the other layout than the uninterrupted fit's, and differ.
        if self.channels_last:
            to_channels_last(self.network)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.network.to(self.device)
            if self.channels_last:
                to_channels_last(self.teacher.network)
        # Lightning keeps each submodule's mode as it finds it; feature extraction leaves the network in eval
        # mode, which would train the head with BatchNorm's initial statistics and without dropout.
        self.network.train()
        if self.channels_last:
            to_channels_last(self.network)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not self.channels_last:
            return batch
        inputs, *rest = batch
        return channels_last_batch(inputs), *rest

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return training_loss(logits, targets, self.train_config, self.class_weights)

    def _distilled(self, inputs: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor, cached: list) -> torch.Tensor:
        """The loss with the teacher's term: its outputs cached with the views, or computed on this batch."""
        if self.teacher is None:
            return loss
        teacher_logits = cached[0] if cached else self.teacher.network(inputs)
        return distillation_loss(logits, teacher_logits, loss, self.teacher.config)

    def _token_distilled(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeiT's distillation token: the class token's logits learn the labels, the distillation token's the
        teacher, through the one linear head; the logits reported are their average (what prediction gives)."""
        assert self.teacher is not None
        class_logits, distillation_logits = token_logits(self.network, inputs)
        label_loss = self._loss(class_logits, targets)
        loss = distillation_loss(distillation_logits, self.teacher.network(inputs), label_loss, self.teacher.config)
        return (class_logits + distillation_logits) / 2, loss

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        # (inputs, labels), or (inputs, labels, teacher logits) on cached views with a teacher.
        inputs, targets, *cached = batch
        if self.teacher is not None and self.teacher.config.token:
            logits, loss = self._token_distilled(inputs, targets)
        else:
            logits = self(inputs)
            loss = self._distilled(inputs, logits, self._loss(logits, targets), cached)
        self.train_accuracy(logits, targets)
        self.log(
            "train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=True
        )
        self.log("train_acc", self.train_accuracy, on_step=False, on_epoch=True, batch_size=len(targets))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        # Plain cross-entropy (no smoothing) so validation loss is comparable across recipes.
        loss = F.cross_entropy(logits, targets)
        self.val_accuracy(logits, targets)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=True)
        self.log("val_acc", self.val_accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets))

    def on_train_epoch_end(self) -> None:
        # ReduceLROnPlateau steps here, not in Lightning's epoch-end scheduler update: that runs after the
        # checkpoint callbacks, so last.ckpt would miss this epoch's step and a resumed run would skip it.
        scheduler, metrics = self.lr_schedulers(), self.trainer.callback_metrics
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and "val_loss" in metrics:
            scheduler.step(metrics["val_loss"])

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):  # plateau: on_train_epoch_end
            scheduler.step()

    def _cosine(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Linear warm-up from 1/100 of the rate over ``warmup_epochs``, then cosine decay to zero at
        ``max_epochs``, stepped every batch (DeiT's schedule, shortened)."""
        epochs = self.trainer.max_epochs or self.train_config.max_epochs  # --epochs may shorten the recipe's
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(steps - 1, steps * self.train_config.warmup_epochs // max(1, epochs))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup))
        if warmup == 0:
            return cosine
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer_class = torch.optim.AdamW if self.train_config.optimizer == "adamw" else torch.optim.Adam
        if self.optimizer_groups is not None:
            optimizer = optimizer_class(self.optimizer_groups)
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            # Warm up over 10% of the steps, then cosine decay: no plateau to wait for in a 1-3 epoch stage.
            one_cycle = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in self.optimizer_groups],
                total_steps=steps,
                pct_start=0.1,
            )
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": one_cycle, "interval": "step"}}
        parameters = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = optimizer_class(
            parameters, lr=self.train_config.learning_rate, weight_decay=self.train_config.weight_decay
        )
        if self.train_config.schedule == "cosine":
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._cosine(optimizer), "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.train_config.lr_factor, patience=self.train_config.lr_patience
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"},
        }
