"""What every command shares: the one way to fail, the data-root rule, the common options and the output rules.

A stage function raises a :class:`~braintumor.errors.BrainTumorError` with a message a person can act
on; only the CLI turns it into one red line on standard error and exit code 2 (:func:`stage_errors`), never a
traceback. Third-party log lines, warnings and progress bars stay hidden unless ``--verbose``
(:func:`third_party_output`); ``-`` as an output file is standard output (:func:`write_output`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.markup import escape

from braintumor.cli.display import err_console
from braintumor.errors import BrainTumorError, missing_extra

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
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=EXIT_USER_ERROR)


@contextmanager
def stage_errors() -> Iterator[None]:
    """Turn a stage's :class:`BrainTumorError`, or a missing optional package, into :func:`fail`'s one line."""
    try:
        yield
    except BrainTumorError as error:
        fail(str(error))
    except ModuleNotFoundError as error:
        fail(str(missing_extra(error)))


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
    """One yellow line on standard error: ``subject message`` (skipped files, notes, warnings)."""
    err_console.print(f"[yellow]{subject}[/] {message}", highlight=False)


STDOUT = "-"
# What the CLI hides unless --verbose: MLflow's log lines (its database set-up among them) and tqdm bars while it
# logs or downloads artifacts, Lightning's note that it creates the MLflow experiment, ClearML's log lines.
_QUIET_ENV = {"MLFLOW_LOGGING_LEVEL": "ERROR", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_QUIET_LOGGERS = ("mlflow", "alembic", "sqlalchemy", "lightning.pytorch.loggers.mlflow", "clearml", "py.warnings")


def is_stdout(path: Path | None) -> bool:
    """Whether an output option was given as ``-``: standard output."""
    return path is not None and str(path) == STDOUT


def write_output(path: Path, write: Callable[[Path], object]) -> None:
    """``write(path)``; for ``-``, the same writer into a temporary file whose text goes to standard output."""
    if not is_stdout(path):
        write(path)
        return
    with tempfile.TemporaryDirectory(prefix="braintumor-") as folder:
        temporary = Path(folder) / "output"
        write(temporary)
        text = temporary.read_text(encoding="utf-8")
    typer.echo(text, nl=not text.endswith("\n"))


@contextmanager
def third_party_output(verbose: bool) -> Iterator[None]:
    """While a command runs: third-party log lines, warnings and progress bars hidden, or shown with ``verbose``.

    Python warnings go to the ``py.warnings`` logger (libraries that reset the warning filters cannot bypass that).
    Hidden: that logger and those libraries' loggers pass only errors, and MLflow draws no progress bars (an MLflow
    variable set in the environment wins). Shown: every logger's INFO lines on standard error. Everything is
    restored afterwards.
    """
    saved_env = {name: os.environ.get(name) for name in _QUIET_ENV}
    saved_levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    root, root_level = logging.getLogger(), logging.getLogger().level
    handler = logging.StreamHandler()  # standard error
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    with warnings.catch_warnings():
        logging.captureWarnings(True)
        if verbose:
            root.addHandler(handler)
            root.setLevel(logging.INFO)
        else:
            for name, value in _QUIET_ENV.items():
                os.environ.setdefault(name, value)
            for name in _QUIET_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            root.setLevel(root_level)
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
