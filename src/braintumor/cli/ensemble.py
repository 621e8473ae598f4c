"""``braintumor ensemble``: option parsing only; the work is in :mod:`braintumor.workflows.ensemble`."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import (
    DataOption,
    QuietOption,
    data_root_or_none,
    ensure_onnx_and_say,
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
    from braintumor.cli.display import console
    from braintumor.errors import BrainTumorError
    from braintumor.workflows.ensemble import combine_bundles
    from braintumor.workflows.guard import fit_bundle_guard

    try:
        parsed = [float(part) for part in weights.split(",")] if weights else None
    except ValueError:
        fail(f"--weights must be comma-separated numbers, got {weights!r}")
    with stage_errors():
        folder = combine_bundles(bundles, out, weights=parsed, name=name)
    console.print(f"wrote ensemble of {len(bundles)} bundles to {folder}")
    if guard:
        try:
            spec = fit_bundle_guard(folder, data_root_or_none(data), show_progress=not quiet).spec
            console.print(f"input guard fitted: {spec.validation_flag_rate:.1%} of validation images flagged")
        except BrainTumorError as error:  # the ensemble itself is written and usable: say how to add the guard
            warn("guard: none", f"{error} (add it later with `braintumor guard {folder} --data ROOT`)")
    ensure_onnx_and_say(folder)
