"""Rich tables for the terminal: what the CLI prints after each command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
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
    from braintumor.inference.predictor import OOD_MESSAGE, REFER_MESSAGE

    # Bundles with a referral threshold (braintumor calibrate) say which answers a person must check;
    # bundles with an input guard say which inputs are not brain MRIs like the training images.
    with_referral = any(prediction.referred is not None for prediction in predictions)
    with_guard = any(prediction.out_of_distribution is not None for prediction in predictions)
    table = Table(title="Predictions")
    table.add_column("image", overflow="fold")
    table.add_column("class", style="bold")
    for name in class_names:
        table.add_column(name, justify="right")
    if with_guard:
        table.add_column("ood score", justify="right")
    if with_referral or with_guard:
        table.add_column("advice")
    for prediction in predictions:
        flagged = bool(prediction.out_of_distribution)
        advice = (
            f"[bold red]{OOD_MESSAGE}" if flagged else (f"[bold yellow]{REFER_MESSAGE}" if prediction.referred else "")
        )
        table.add_row(
            prediction.source,
            "[red]none (flagged)" if flagged else prediction.class_name,
            *[f"{prediction.probabilities[name]:.3f}" for name in class_names],
            *([f"{prediction.ood_score:.2f}"] if with_guard else []),
            *([advice] if with_referral or with_guard else []),
        )
    return table


def uncertainty_lines(metrics: dict[str, Any]) -> list[str]:
    """Confidence intervals, calibration and selective prediction of one evaluation, one line each."""
    lines = []
    intervals = metrics.get("confidence_intervals")
    if intervals:
        accuracy, f1 = intervals["accuracy"], intervals["macro_f1"]
        lines.append(
            f"95% CI ({intervals['n_resamples']} bootstrap resamples): accuracy [{accuracy['low']:.2%}, "
            f"{accuracy['high']:.2%}], macro-F1 [{f1['low']:.3f}, {f1['high']:.3f}]"
        )
    calibration = metrics.get("calibration")
    if calibration:
        lines.append(
            f"calibration (T = {calibration['temperature']:.3g}): ECE {calibration['ece']:.4f}, "
            f"Brier {calibration['brier']:.4f}, log loss {calibration['log_loss']:.4f}"
        )
    selective = metrics.get("selective")
    if selective:
        accuracy = selective["selective_accuracy"]
        lines.append(
            f"referral threshold {selective['threshold']:.4f}: answered {selective['coverage']:.1%} "
            f"with accuracy {'n/a' if accuracy is None else f'{accuracy:.2%}'}, referred {selective['n_referred']}"
        )
    return lines


def runs_table(rows: Sequence[dict[str, Any]]) -> Table:
    """``braintumor runs``: one line per tracked training run."""
    import datetime as dt

    def number(value: float | None, percent: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:.2%}" if percent else f"{value:.4f}"

    table = Table(title="Training runs (MLflow)")
    for column in ("started (UTC)", "run", "recipe", "status", "val acc", "val loss", "test acc", "test macro-F1"):
        table.add_column(column)
    table.add_column("model URI", overflow="fold")
    for row in rows:
        started = dt.datetime.fromtimestamp(row["started"] / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(
            started,
            row["name"],
            row["recipe"],
            row["status"],
            number(row["best_val_accuracy"], True),
            number(row["best_val_loss"]),
            number(row["test_accuracy"], True),
            number(row["test_macro_f1"]),
            row.get("model_uri") or "-",
        )
    return table


def audit_table(audit: dict[str, Any]) -> Table:
    """A rich table of the audit's headline numbers, for the terminal."""
    table = Table(title=f"Data audit of {audit['data_root']}")
    table.add_column("")
    table.add_column("files", justify="right")
    table.add_column("undecodable", justify="right")
    table.add_column("redundant exact copies inside", justify="right")
    table.add_column("exact copy in Training", justify="right")
    table.add_column("near copy in Training", justify="right")
    table.add_column("clean", justify="right")
    for name, split in audit["splits"].items():
        leak = audit["leakage"].get(name)
        searched = bool(leak and leak["near_search"])
        near = (str(leak["near_copy"]) if searched else "not searched") if leak else ""
        clean = (str(leak["clean"]) if searched else "not searched") if leak else ""
        table.add_row(
            name,
            str(split["files"]),
            str(split["undecodable"]),
            str(split["redundant_exact_copies"]),
            str(leak["exact_copy"]) if leak else "",
            near,
            clean,
        )
    for name, leak in audit["leakage"].items():
        for class_name, counts in leak["by_class"].items():
            table.add_row(
                f"  {name} {class_name}",
                str(sum(counts.values())),
                str(counts["undecodable"]),
                "",
                str(counts["exact_copy"]),
                str(counts["near_copy"]) if leak["near_search"] else "",
                str(counts["clean"]) if leak["near_search"] else "",
            )
    exact = audit["exact_duplicates"]
    table.caption = (
        f"{exact['cross_split_groups']} byte-identical groups span splits; "
        f"{len(audit['near_duplicates']['pairs'])} near-copy pairs; "
        f"{len(audit['label_conflicts'])} label conflicts"
        + (
            f"; training drops {audit['training_drop']['removed_copies']} exact copies inside Training"
            if audit.get("training_drop")
            else ""
        )
    )
    return table
