"""What every command shares: the one way to fail, the data-root rule and the common options.

A stage function raises a :class:`~braintumor.errors.BrainTumorError` with a message a person can act
on; only the CLI turns it into one red line and exit code 2 (:func:`stage_errors`), never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape

from braintumor.cli.display import console
from braintumor.errors import BrainTumorError

DATA_ENV = "BRAINTUMOR_DATA"
EXIT_USER_ERROR = 2

DataOption = typer.Option(
    None,
    "--data",
    "-d",
    help=f"Data root holding Training/ and Testing/ (default: ${DATA_ENV}).",
    show_default=False,
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars.")
TtaOption = typer.Option(False, "--tta", help="Test-time augmentation: average flipped and shifted views.")
PrecisionOption = typer.Option(
    None,
    "--precision",
    help="PyTorch inference precision: auto (bf16 where the CPU has native bf16), bf16-mixed or 32 "
    "(default: the precision the bundle was trained at; docs/speed.md).",
    show_default=False,
)


def fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit with code 2."""
    # soft_wrap: one line however wide the terminal (scripts grep it); escape: a "[...]" in a path is not markup.
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=EXIT_USER_ERROR)


@contextmanager
def stage_errors() -> Iterator[None]:
    """Turn a stage's :class:`BrainTumorError` into :func:`fail`'s one-line message."""
    try:
        yield
    except BrainTumorError as error:
        fail(str(error))


def data_root_or_none(data: Path | None) -> Path | None:
    """``--data`` when given, else ``$BRAINTUMOR_DATA`` when set, else ``None``."""
    if data is not None:
        return data
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def data_root(data: Path | None) -> Path:
    """``--data`` or ``$BRAINTUMOR_DATA``; fails with a clear message when neither is there."""
    root = data_root_or_none(data)
    if root is None:
        fail(f"no data folder: pass --data ROOT or set ${DATA_ENV}")
    return root


def warn(subject: str, message: str) -> None:
    """One yellow line: ``subject message`` (skipped files, notes, warnings)."""
    console.print(f"[yellow]{subject}[/] {message}", highlight=False)


def ensure_onnx_and_say(bundle: Path) -> None:
    """Write ``model.onnx`` into ``bundle`` when it is missing and say what happened (never fails the command)."""
    from braintumor.workflows.export import ensure_onnx

    status = ensure_onnx(bundle)
    if status.available:
        console.print(f"onnx: {status.note}", highlight=False)
    else:
        warn("onnx:", f"{status.note}; `braintumor serve` uses PyTorch until then")
