"""``braintumor demo-data``: a small synthetic data set in the real one's layout, to try every command."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from braintumor.api import demo_data
from braintumor.cli.common import stage_errors

# The options' defaults are the API's, so `braintumor demo-data` and `braintumor.demo_data()` write the same images.
_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(demo_data).parameters.items()}
DEMO_RECIPE = "demo-cnn"


def demo_data_command(
    folder: Path = typer.Argument(..., help="Where to write Training/ and Testing/ (created if missing)."),
    per_class: int = typer.Option(
        _DEFAULTS["per_class"], "--per-class", min=1, help="Training images per class (Testing gets half as many)."
    ),
    size: int = typer.Option(_DEFAULTS["size"], "--size", min=16, help="Image side in pixels."),
    seed: int = typer.Option(_DEFAULTS["seed"], "--seed", help="Random seed: the same seed writes the same images."),
) -> None:
    """Write a synthetic demo data set (no download) and say how to train on it.

    Each class is a bright blob in its own place inside a grey head-like ellipse, in the real data set's class
    folders. These are not MRIs: they are for learning the tool, never for judging a model.
    """
    from braintumor.cli.display import console

    with stage_errors():
        root = demo_data(folder, per_class=per_class, size=size, seed=seed)
    counts = {split: _count_files(root / split) for split in ("Training", "Testing")}
    classes = sum(1 for path in (root / "Training").iterdir() if path.is_dir())
    console.print(
        f"wrote {counts['Training']} Training and {counts['Testing']} Testing images ({classes} classes, "
        f"{size}x{size} px, seed {seed}) to {root}",
        highlight=False,
    )
    console.print(f"next: braintumor train {DEMO_RECIPE} --data {root}", highlight=False, soft_wrap=True)


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())
