"""``braintumor ensemble``: option parsing only; the work is in :mod:`braintumor.inference.ensemble`."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import fail, stage_errors


def ensemble_command(
    bundles: list[Path] = typer.Argument(..., help="Two or more model bundle folders (same preprocessing and split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the ensemble bundle to write."),
    weights: str | None = typer.Option(
        None, "--weights", help="Comma-separated member weights (default equal); choose them on validation."
    ),
    name: str | None = typer.Option(None, "--name", help="The ensemble's name (default: members' names)."),
) -> None:
    """Combine trained bundles into one bundle whose probabilities are the members' average."""
    from braintumor.cli.display import console
    from braintumor.inference.ensemble import combine_bundles

    try:
        parsed = [float(part) for part in weights.split(",")] if weights else None
    except ValueError:
        fail(f"--weights must be comma-separated numbers, got {weights!r}")
    with stage_errors():
        folder = combine_bundles(bundles, out, weights=parsed, name=name)
    console.print(f"wrote ensemble of {len(bundles)} bundles to {folder}")
