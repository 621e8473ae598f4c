"""``braintumor guard``: fit (or refit) a bundle's input guard on its own training and validation split."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import DataOption, QuietOption, data_root_or_none, stage_errors
from braintumor.guard.defaults import DEFAULT_DETECTOR, DEFAULT_QUANTILE, DETECTOR_NAMES


def guard_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder (updated in place: guard.safetensors, config.json)."),
    data: Path | None = DataOption,
    detector: str = typer.Option(
        DEFAULT_DETECTOR, "--detector", help=f"Feature detector: {', '.join(DETECTOR_NAMES)}."
    ),
    quantile: float = typer.Option(
        DEFAULT_QUANTILE, "--quantile", min=0.5, max=0.9999, help="Validation quantile that sets the thresholds."
    ),
    quiet: bool = QuietOption,
) -> None:
    """Fit the input guard that flags inputs unlike the Training images (never reads Testing)."""
    import braintumor
    from braintumor.cli.display import console

    with stage_errors():
        spec = braintumor.load(bundle).fit_guard(
            data_root_or_none(data), detector=detector, quantile=quantile, show_progress=not quiet
        )
    console.print(
        f"input guard: {spec.detector} on the penultimate features + image evidence, thresholds at the "
        f"{spec.quantile:g} quantile of {spec.n_val} validation images; {spec.validation_flag_rate:.1%} of them "
        f"flagged. Fitted on {spec.n_train} training images.",
        highlight=False,
    )
    console.print(f"bundle updated: {bundle}")
