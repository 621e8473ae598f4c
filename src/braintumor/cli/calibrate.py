"""``braintumor calibrate``: temperature scaling and a referral threshold fitted on the validation split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from braintumor.cli.common import QuietOption, TtaOption, data_root_or_none, ensure_onnx_and_say, stage_errors, warn
from braintumor.evaluation.defaults import DEFAULT_TARGET_COVERAGE

if TYPE_CHECKING:
    from braintumor.guard import GuardSpec


def _refit_guard(bundle: Path, root: Path | None, quiet: bool) -> GuardSpec:
    """Fit the bundle's input guard again (``--guard``) and return its new definition."""
    from braintumor.workflows.guard import fit_bundle_guard

    return fit_bundle_guard(bundle, root, show_progress=not quiet).spec


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

    from braintumor.bundle import read_bundle_config
    from braintumor.cli.display import console
    from braintumor.workflows.calibrate import calibrate_bundle, summary_rows

    root = data_root_or_none(data)
    with stage_errors():
        result = calibrate_bundle(bundle, root, out, target_coverage=target_coverage, tta=tta, show_progress=not quiet)
        spec = _refit_guard(bundle, root, quiet) if guard else None
    record = result.record
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
    elif read_bundle_config(result.bundle_dir).extras.guard is None:
        warn("note", f"{bundle} has no input guard: add one with --guard (or `braintumor guard {bundle}`)")
    console.print(f"bundle updated: {result.bundle_dir / 'config.json'}")
    console.print(f"calibration files: {result.out_dir}")
    ensure_onnx_and_say(result.bundle_dir)
