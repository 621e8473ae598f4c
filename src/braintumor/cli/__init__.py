"""The ``braintumor`` command line: one module per command, each only parsing, calling and printing.

Stage functions return data and raise :class:`~braintumor.errors.BrainTumorError`; the commands
here turn those into one-line messages (:mod:`braintumor.cli.common`). Heavy imports (torch, the
stages) happen inside the commands, so ``braintumor --help`` stays fast.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import typer

from braintumor import __version__
from braintumor.cli.adapt import adapt_command
from braintumor.cli.audit import audit_command
from braintumor.cli.calibrate import calibrate_command
from braintumor.cli.common import third_party_output
from braintumor.cli.demo import demo_data_command
from braintumor.cli.ensemble import ensemble_command
from braintumor.cli.evaluate import evaluate_command
from braintumor.cli.explain import explain_command
from braintumor.cli.guard import guard_command
from braintumor.cli.predict import predict_command
from braintumor.cli.recipes import recipes_command
from braintumor.cli.serve import export_command, serve_command
from braintumor.cli.train import runs_command, train_command
from braintumor.runtime import tune_cpu_runtime

app = typer.Typer(
    name="braintumor",
    help="Train, evaluate, explain and serve brain-tumour MRI classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# The order here is the order of `braintumor --help`: the workflow from data to service.
_COMMANDS = {
    "recipes": recipes_command,
    "audit": audit_command,
    "demo-data": demo_data_command,
    "train": train_command,
    "runs": runs_command,
    "evaluate": evaluate_command,
    "calibrate": calibrate_command,
    "guard": guard_command,
    "adapt": adapt_command,
    "predict": predict_command,
    "explain": explain_command,
    "ensemble": ensemble_command,
    "export": export_command,
    "serve": serve_command,
}


def _reflowed_help(command: Callable[..., Any]) -> str:
    """A command's docstring with each paragraph on one line, so that its help wraps to the terminal's width.

    Example:
        >>> def command() -> None: ...
        >>> command.__doc__ = "Say hello\\n    to everyone.\\n\\n    Then leave."
        >>> _reflowed_help(command)
        'Say hello to everyone.\\n\\nThen leave.'
    """
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


for _name, _command in _COMMANDS.items():
    app.command(_name, help=_reflowed_help(_command))(_command)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"braintumor {__version__}")
        raise typer.Exit()


@app.callback()
def _runtime(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        envvar="BRAINTUMOR_VERBOSE",
        help="Also show other libraries' log lines, warnings and progress bars, such as MLflow's "
        "(before the command: braintumor -v train ...).",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train, evaluate, explain and serve brain-tumour MRI classifiers."""
    # Before any command allocates: freed memory stays in the process (braintumor.runtime explains why).
    tune_cpu_runtime()
    ctx.with_resource(third_party_output(verbose))


def main() -> None:
    app()


__all__ = ["app", "main"]
