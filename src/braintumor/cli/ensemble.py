"""``braintumor ensemble``: option parsing only; the work is in :mod:`braintumor.workflows.ensemble`."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import (
    DataOption,
    QuietOption,
    data_root_or_none,
    fail,
    stage_errors,
    warn,
)


def ensemble_command(
    bundles: list[Path] = typer.Argument(..., help="Two or more model bundle folders (same preprocessing and split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the ensemble bundle to write."),
    weights: str | None = typer.Option(
        None, "--weights", help="Comma-separated member weights (default equal); choose them on validation."
    ),
    name: str | None = typer.Option(None, "--name", help="The ensemble's name (default: members' names)."),
    data: Path | None = DataOption,
    guard: bool = typer.Option(True, "--guard/--no-guard", help="Fit the ensemble's input guard (needs the data)."),
    quiet: bool = QuietOption,
) -> None:
    """Combine trained bundles into one bundle whose probabilities are the members' average.

    The ensemble's input guard is fitted on the members' shared training split (from --data, else the
    members' recorded data root).
    """
    import braintumor
    from braintumor.cli.display import console

    try:
        parsed = [float(part) for part in weights.split(",")] if weights else None
    except ValueError:
        fail(f"--weights must be comma-separated numbers, got {weights!r}")
    with stage_errors():
        combined = braintumor.ensemble(
            bundles,
            out,
            weights=parsed,
            name=name,
            data=data_root_or_none(data),
            guard=guard,
            show_progress=not quiet,
            say=lambda note: warn("note:", note),
        )
    console.print(f"wrote ensemble of {len(bundles)} bundles to {combined.path}")
    if combined.config.extras.guard is not None:
        rate = combined.config.extras.guard.validation_flag_rate
        console.print(f"input guard fitted: {rate:.1%} of validation images flagged")
