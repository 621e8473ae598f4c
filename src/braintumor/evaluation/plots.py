"""PNG plots people would rather look at than numbers (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def plot_training_curves(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training and validation, with the best validation epoch marked.

    Multi-stage runs (probe, then fine-tuning stages) are drawn as one sequence with the stage starts shaded.
    """
    epochs = list(range(1, len(history) + 1))
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_axis.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=label)
    for key, label in (("train_acc", "train"), ("val_acc", "validation")):
        accuracy_axis.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=label)
    val_losses = [row.get("val_loss", np.inf) for row in history]
    if history:
        best = epochs[int(np.argmin(val_losses))]
        for axis in (loss_axis, accuracy_axis):
            axis.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best epoch {best}")
    stages = [str(row.get("stage", "train")) for row in history]
    for index in range(1, len(stages)):
        if stages[index] != stages[index - 1]:
            for axis in (loss_axis, accuracy_axis):
                axis.axvline(index + 0.5, color="tab:red", linewidth=1, alpha=0.5)
                axis.text(index + 0.6, 0.02, stages[index], transform=axis.get_xaxis_transform(), fontsize=8)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str = "Confusion matrix"
) -> Path:
    """Counts with row-normalised colour (recall per true class), annotated in every cell."""
    counts = np.asarray(matrix, dtype=float)
    row_sums = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    figure, axis = plt.subplots(figsize=(5.5, 4.8))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of true class")
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=30, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            axis.text(
                j, i, f"{int(counts[i, j])}\n{normalised[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=8
            )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
