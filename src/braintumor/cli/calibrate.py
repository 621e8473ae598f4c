"""``braintumor calibrate``: temperature scaling and a referral threshold fitted on the validation split."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import QuietOption, TtaOption, data_root_or_none, stage_errors, warn
from braintumor.evaluation.defaults import DEFAULT_TARGET_COVERAGE


def calibrate_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder (updated in place: extras in config.json)."),
    data: Path | None = typer.Option(
        None,
        "--data",
        "-d",
        help="Data root the bundle was trained on (default: $BRAINTUMOR_DATA, else the recorded paths).",
        show_default=False,
    ),
    target_coverage: float = typer.Option(
        DEFAULT_TARGET_COVERAGE,
        "--target-coverage",
        help="Share of validation images to answer; the rest are referred (0-1].",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the plots (default: <bundle>/../calibration)."
    ),
    tta: bool = TtaOption,
    guard: bool = typer.Option(
        False,
        "--guard/--no-guard",
        help="Also refit the input guard on the bundle's training and validation split (as `braintumor guard`).",
    ),
    quiet: bool = QuietOption,
) -> None:
    """Fit temperature scaling and a referral threshold on the bundle's validation split (never Testing)."""
    from rich.table import Table

    import braintumor
    from braintumor.cli.display import console
    from braintumor.evaluation.calibration import summary_rows

    root = data_root_or_none(data)
    with stage_errors():
        model = braintumor.load(bundle)
        result = model.calibrate(root, out, target_coverage=target_coverage, tta=tta, show_progress=not quiet)
        spec = model.fit_guard(root, show_progress=not quiet) if guard else None
    record = result.raw
    table = Table(title=f"Calibration on the validation split ({record['n_images']} images)")
    for column in ("score", "before", "after"):
        table.add_column(column, justify="right" if column != "score" else "left")
    for row in summary_rows(record):
        table.add_row(*row)
    console.print(table)
    selective = record["validation_selective"]
    console.print(
        f"referral threshold {result.refer_threshold:.4f}: answers {selective['coverage']:.1%} of validation images "
        f"(target {record['target_coverage']:.0%}) with accuracy {selective['selective_accuracy']:.2%}; "
        f"{selective['n_referred']} referred",
        highlight=False,
    )
    if spec is not None:
        console.print(
            f"input guard refitted ({spec.detector} + image evidence): {spec.validation_flag_rate:.1%} of "
            f"{spec.n_val} validation images flagged (thresholds at their {spec.quantile:g} quantile)",
            highlight=False,
        )
    elif model.config.extras.guard is None:
        warn("note", f"{bundle} has no input guard: add one with --guard (or `braintumor guard {bundle}`)")
    console.print(f"bundle updated: {model.path / 'config.json'}")
    console.print(f"calibration files: {result.out_dir}")
    console.print(f"onnx: {result.onnx_note}", highlight=False)
