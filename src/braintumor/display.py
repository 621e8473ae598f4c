"""Rich tables for the terminal: what the CLI prints after each command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from braintumor.inference.predictor import Prediction

console = Console()


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """Headline numbers and the per-class table of one evaluation."""
    table = Table(title=title, show_lines=False)
    table.add_column("class")
    for column in ("precision", "recall", "F1", "support"):
        table.add_column(column, justify="right")
    for name, values in metrics["per_class"].items():
        table.add_row(
            name, f"{values['precision']:.3f}", f"{values['recall']:.3f}", f"{values['f1']:.3f}", str(values["support"])
        )
    table.add_section()
    table.add_row(
        "[bold]accuracy",
        f"[bold]{metrics['accuracy']:.2%}",
        "",
        f"macro-F1 {metrics['macro_f1']:.3f}",
        str(metrics["n_images"]),
    )
    table.add_row("cross-entropy", f"{metrics['loss']:.4f}", "", "", "")
    return table


def predictions_table(predictions: Sequence[Prediction], class_names: Sequence[str]) -> Table:
    table = Table(title="Predictions")
    table.add_column("image", overflow="fold")
    table.add_column("class", style="bold")
    for name in class_names:
        table.add_column(name, justify="right")
    for prediction in predictions:
        table.add_row(
            prediction.source, prediction.class_name, *[f"{prediction.probabilities[name]:.3f}" for name in class_names]
        )
    return table
