"""Rich tables for the terminal: what the CLI prints after each command.

Every table reads at 80 columns: the wide ones drop their least useful columns when the terminal is too
narrow for them (:class:`Fitted`) and say in the caption what is hidden, instead of cutting cells with "…".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from braintumor.results import ExplainedImage, Prediction

console = Console()
# Errors, warnings and notes; also the tables of a command whose standard output carries JSON or CSV.
err_console = Console(stderr=True)

# Short forms of the advice, for tables too narrow for the sentences (the summary lines below them say them in full).
REFER_SHORT = "refer"
OOD_SHORT = "no diagnosis"
# A file name longer than this folds onto a second line rather than pushing other columns out.
_NAME_WIDTH = 32


class Fitted:
    """The fullest of a table's layouts that fits the console's width; the narrowest when none does.

    ``build(level)`` returns the table (or a group with one) at ``level`` (0 = every column), for ``level`` below
    ``levels``.
    """

    def __init__(self, build: Callable[[int], RenderableType], levels: int) -> None:
        self.build = build
        self.levels = levels

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table_for(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table_for(console, options))

    def table_for(self, console: Console, options: ConsoleOptions) -> RenderableType:
        """The table at the lowest level whose natural width fits ``options.max_width``."""
        unlimited = options.update_width(10_000)
        for level in range(self.levels):
            table = self.build(level)
            if Measurement.get(console, unlimited, table).maximum <= options.max_width:
                return table
        return table


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


def display_names(sources: Sequence[str]) -> list[str]:
    """File names for a table: the bare name, or ``folder/name`` when two inputs share a name.

    Example:
        >>> display_names(["a/glioma/1.jpg", "a/no_tumor/1.jpg", "b/x.png"])
        ['glioma/1.jpg', 'no_tumor/1.jpg', 'x.png']
    """
    paths = [PurePath(source) for source in sources]
    names = [path.name for path in paths]
    repeated = {name for name in names if names.count(name) > 1}
    return [f"{path.parent.name}/{path.name}" if path.name in repeated else path.name for path in paths]


def predictions_table(predictions: Sequence[Prediction], class_names: Sequence[str]) -> Fitted:
    """One line per image: its file name, the class and probabilities, and the guard's and referral's advice.

    On a narrow terminal the advice and headers are shortened first, then the input guard's scores go, then the
    other classes' probabilities (``--json``/``--csv`` have them all, with the full paths).
    """
    from braintumor.inference.predictor import OOD_MESSAGE, REFER_MESSAGE

    # Bundles with a referral threshold (braintumor calibrate) say which answers a person must check;
    # bundles with an input guard say which inputs are not brain MRIs like the training images.
    with_guard = any(prediction.flagged is not None for prediction in predictions)
    with_advice = any(prediction.flagged or prediction.referred for prediction in predictions)
    names = display_names([prediction.source for prediction in predictions])

    def advice(prediction: Prediction, short: bool) -> str:
        if prediction.flagged:
            return f"[bold red]{OOD_SHORT if short else OOD_MESSAGE}"
        return f"[bold yellow]{REFER_SHORT if short else REFER_MESSAGE}" if prediction.referred else ""

    def build(level: int) -> Table:
        short, scores, every_class = level > 0, with_guard and level != 2, level < 3
        table = Table(title="Predictions")
        table.add_column("image", overflow="fold", max_width=_NAME_WIDTH)
        table.add_column("class", style="bold", no_wrap=True)
        for name in class_names if every_class else ["p"]:
            table.add_column(name, justify="right", no_wrap=True)
        if scores:
            table.add_column("ood" if short else "ood score", justify="right")
        if with_advice:
            table.add_column("advice", overflow="fold")
        for name, prediction in zip(names, predictions, strict=True):
            flagged = bool(prediction.flagged)
            # A flagged image has no class: its most probable one is shown only as a probability.
            top = max(prediction.probabilities, key=prediction.probabilities.__getitem__)
            shown = class_names if every_class else [prediction.class_name or top]
            table.add_row(
                name,
                ("[red]none" if short else "[red]none (flagged)") if flagged else prediction.class_name,
                *[f"{prediction.probabilities[column]:.3f}" for column in shown],
                *([f"{prediction.ood_score:.2f}"] if scores else []),
                *([advice(prediction, short)] if with_advice else []),
            )
        if not every_class:
            table.caption = "p: probability of the class (every class's: --json or --csv)"
        elif with_guard and not scores:
            table.caption = "ood scores: --json or --csv"
        return table

    return Fitted(build, levels=4)


def explanations_table(images: Sequence[ExplainedImage], out_dir: Path) -> Table:
    """``braintumor explain``: one line per image with its predicted class and its figure's name in ``out_dir``."""
    table = Table(title=f"Explanations in {out_dir}")
    for column in ("image", "predicted", "confidence", "figure"):
        table.add_column(column, overflow="fold", justify="right" if column == "confidence" else "left")
    names = display_names([item.source for item in images])
    for name, item in zip(names, images, strict=True):
        shown = item.figure.relative_to(out_dir) if item.figure.is_relative_to(out_dir) else item.figure
        if item.class_name is None:  # flagged, drawn on request: no diagnosis
            table.add_row(name, "[red]none (flagged)", "-", str(shown))
        else:
            table.add_row(name, item.class_name, f"{item.probabilities[item.class_name]:.1%}", str(shown))
    return table


def sanity_table(sanity: dict[str, Any]) -> Table:
    """``braintumor explain --sanity``: the two randomisation tests and the deletion curve per method."""
    from braintumor.explain.run import summarise_sanity

    table = Table(title=f"Sanity checks on {sanity['n_images']} images (layer {sanity['layer']})")
    for column in ("method", "model randomisation", "label randomisation", "deletion curve"):
        table.add_column(column)
    for row in summarise_sanity(sanity):
        table.add_row(*row)
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


# braintumor runs: these columns always show; the optional ones go, last first, when the terminal is too narrow.
_RUN_COLUMNS = ("started (UTC)", "recipe", "status", "val acc", "test acc")
_OPTIONAL_RUN_COLUMNS = ("test macro-F1", "run", "val loss", "model URI")


def _run_cells(row: dict[str, Any]) -> dict[str, str]:
    """Every column of ``braintumor runs`` for one run, as text."""

    def number(value: float | None, percent: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:.2%}" if percent else f"{value:.4f}"

    return {
        "started (UTC)": dt.datetime.fromtimestamp(row["started"] / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "recipe": row["recipe"] or "-",
        "status": row["status"],
        "val acc": number(row["best_val_accuracy"], True),
        "test acc": number(row["test_accuracy"], True),
        "test macro-F1": number(row["test_macro_f1"]),
        "run": row["name"] or "-",
        "val loss": number(row["best_val_loss"]),
        "model URI": row.get("model_uri") or "-",
    }


def runs_table(rows: Sequence[dict[str, Any]]) -> Fitted:
    """``braintumor runs``: one line per tracked training run; date, recipe, status and accuracies always show.

    Too narrow for the model URIs' column, the URIs follow the table, one line per run with one.
    """
    cells = [_run_cells(row) for row in rows]
    numeric = {"val acc", "test acc", "test macro-F1", "val loss"}

    def build(level: int) -> RenderableType:
        hidden = _OPTIONAL_RUN_COLUMNS[len(_OPTIONAL_RUN_COLUMNS) - level :] if level else ()
        columns = [*_RUN_COLUMNS, *(c for c in _OPTIONAL_RUN_COLUMNS if c not in hidden)]
        table = Table(title="Training runs (MLflow)")
        for column in columns:
            table.add_column(column, overflow="fold", justify="right" if column in numeric else "left")
        for values in cells:
            table.add_row(*(values[column] for column in columns))
        uris = [f"  {values['started (UTC)']}  {values['model URI']}" for values in cells if values["model URI"] != "-"]
        stacked = "model URI" in hidden and uris
        hidden = tuple(column for column in hidden if not (stacked and column == "model URI"))
        if hidden:
            table.caption = f"not shown at this width: {', '.join(hidden)}"
        return Group(table, Text("model URIs:"), *map(Text, uris)) if stacked else table

    return Fitted(build, levels=len(_OPTIONAL_RUN_COLUMNS) + 1)


def _audit_rows(audit: dict[str, Any]) -> Iterable[list[str]]:
    """Each split's row, followed by its classes' rows when the split was checked against Training."""
    for name, split in audit["splits"].items():
        leak = audit["leakage"].get(name)
        searched = bool(leak and leak["near_search"])
        yield [
            name,
            str(split["files"]),
            str(split["undecodable"]),
            str(split["redundant_exact_copies"]),
            str(leak["exact_copy"]) if leak else "",
            (str(leak["near_copy"]) if searched else "-") if leak else "",
            (str(leak["clean"]) if searched else "-") if leak else "",
        ]
        for class_name, counts in (leak["by_class"] if leak else {}).items():
            yield [
                f"  {class_name}",
                str(sum(counts.values())),
                str(counts["undecodable"]),
                "",
                str(counts["exact_copy"]),
                str(counts["near_copy"]) if searched else "-",
                str(counts["clean"]) if searched else "-",
            ]


def audit_table(audit: dict[str, Any]) -> Table:
    """A rich table of the audit's headline numbers, for the terminal."""
    table = Table(title=f"Data audit of {audit['data_root']}")
    table.add_column("")
    for header in ("files", "un-\nreadable", "copies\ninside", "exact\ncopy in\nTraining", "near\ncopy in\nTraining"):
        table.add_column(header, justify="right")
    table.add_column("clean", justify="right")
    for row in _audit_rows(audit):
        table.add_row(*row)
    exact = audit["exact_duplicates"]
    notes = [
        f"{exact['cross_split_groups']} byte-identical groups span splits",
        f"{len(audit['near_duplicates']['pairs'])} near-copy pairs",
        f"{len(audit['label_conflicts'])} label conflicts",
    ]
    if audit.get("training_drop"):
        notes.append(f"training drops {audit['training_drop']['removed_copies']} exact copies inside Training")
    if any(leak and not leak["near_search"] for leak in audit["leakage"].values()):
        notes.append("-: near copies not searched")
    table.caption = "; ".join(notes)
    return table
