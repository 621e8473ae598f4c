"""``braintumor train`` and ``braintumor runs``: parse options, call the training stage, print the results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from braintumor.cli.common import DataOption, QuietOption, data_root, fail, stage_errors

if TYPE_CHECKING:
    from braintumor.results import TrainRun

TRACKERS = ("mlflow", "clearml", "none")
DEFAULT_RECIPE = "lite2-probe"


def train_command(
    recipe: str = typer.Argument(DEFAULT_RECIPE, help="Built-in recipe name (braintumor recipes) or a YAML path."),
    data: Path | None = DataOption,
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<recipe>)."),
    weights: Path | None = typer.Option(None, "--weights", help="Local pretrained backbone weights file."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.max_epochs."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override section.field=value (repeatable)."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Afterwards, evaluate on the official Testing split."),
    report: bool = typer.Option(False, "--report", help="With --evaluate: also write and track report.html."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue an interrupted run folder."),
    force: bool = typer.Option(
        False, "--force", help="With --resume: resume even if the data set or code changed (recorded as a warning)."
    ),
    tracker: str = typer.Option(
        TRACKERS[0], "--tracker", help=f"{', '.join(TRACKERS)} (mlflow: a local store by default)."
    ),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow server or store URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."
    ),
    accelerator: str = typer.Option("auto", "--accelerator", help="cpu, gpu or auto."),
    devices: str = typer.Option("1", "--devices", help="Devices (processes) per node, or auto."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines taking part (multi-node DDP)."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy, e.g. ddp (gloo on CPU)."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Write model.onnx into the bundle (for fast serving)."),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Where cached features too large for memory go, memory-mapped (default <out>/feature_cache); "
        "a resumed run reads them back from there.",
    ),
    register_model: str | None = typer.Option(
        None, "--register-model", help="Also register the logged MLflow model under this name (MLflow registry)."
    ),
    quiet: bool = QuietOption,
) -> None:
    """Train a recipe on Training (with a stratified validation split) and write a model bundle.

    With MLflow tracking the bundle is also logged as an MLflow pyfunc model (its URI is printed and shown by
    `braintumor runs`); --register-model NAME registers it.
    """
    import braintumor
    from braintumor.api import NotRankZero
    from braintumor.cli.display import console

    if tracker not in TRACKERS:
        fail(f"--tracker must be one of {', '.join(TRACKERS)} (got {tracker!r})")
    how = {
        "tracker": tracker,
        "tracking_uri": tracking_uri,
        "accelerator": accelerator,
        "devices": int(devices) if devices.isdigit() else devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "export_onnx": onnx,
    }
    if cache_dir is not None:
        how["cache_dir"] = cache_dir
    shared = {"evaluate": evaluate, "report": report, "show_progress": not quiet, "say": console.print}
    with stage_errors():
        try:
            if resume is not None:
                console.print(f"[bold]resuming[/] {resume}")
                run = braintumor.resume(resume, force=force, **how, **shared)
            else:
                run = braintumor.train(
                    recipe,
                    data_root(data),
                    out,
                    overrides=overrides,
                    epochs=epochs,
                    weights=weights,
                    register_model=register_model,
                    **how,
                    **shared,
                )
        except NotRankZero:  # a non-zero rank of a multi-process run: rank zero reports
            return
    print_run(run)


def print_run(run: TrainRun) -> None:
    """The validation table, where the bundle is, and the Testing evaluation when there is one."""
    from braintumor.cli.display import console, metrics_table
    from braintumor.cli.evaluate import guard_line

    title = f"{run.recipe}: validation split (best epoch {run.best_epoch}, {run.duration_s:.0f} s)"
    console.print(metrics_table(run.val_metrics.raw, title))
    console.print(f"bundle: {run.bundle_path}")
    registered = run.tracking.get("registered")
    if registered:
        console.print(
            f"registered {registered['model_uri']} as models:/{registered['name']}/{registered['version']}",
            highlight=False,
        )
    if run.tracking.get("offline_folder"):
        console.print(f"ClearML offline session: {run.tracking['offline_folder']}")
    evaluation = run.evaluation
    if evaluation is not None:
        console.print(metrics_table(evaluation.metrics.raw, f"{run.recipe}: official Testing split"))
        line = guard_line(evaluation.metrics.raw, run.bundle_path, evaluation.metrics.raw.get("data_root", "ROOT"))
        if line:
            console.print(line, highlight=False)
        console.print(f"evaluation files: {evaluation.out_dir}")
        if evaluation.report_path is not None:
            console.print(f"report: {evaluation.report_path}")


def runs_command(
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store (default as for train)."),
    limit: int = typer.Option(20, "--limit", help="How many recent runs to list."),
) -> None:
    """List past training runs and their headline metrics from the MLflow store."""
    import braintumor.api
    from braintumor.cli.display import console, runs_table

    with stage_errors():
        rows = braintumor.api.runs(tracking_uri, limit=limit)
    if not rows:
        console.print("no runs recorded yet (train with the default --tracker mlflow to record one)")
        return
    console.print(runs_table(rows))
