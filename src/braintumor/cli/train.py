"""``braintumor train`` and ``braintumor runs``: parse options, call the training stage, print the results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from braintumor.cli.common import DataOption, QuietOption, data_root, fail, stage_errors

if TYPE_CHECKING:
    from braintumor.config import Recipe
    from braintumor.workflows.train import TrainResult

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
    register_model: str | None = typer.Option(
        None, "--register-model", help="Also register the logged MLflow model under this name (MLflow registry)."
    ),
    quiet: bool = QuietOption,
) -> None:
    """Train a recipe on Training (with a stratified validation split) and write a model bundle.

    With MLflow tracking the bundle is also logged as an MLflow pyfunc model (its URI is printed and shown by
    `braintumor runs`); --register-model NAME registers it.
    """
    from braintumor.cli.display import console, metrics_table
    from braintumor.workflows.train import RunOptions, read_run_file, resume_run, train_recipe

    if tracker not in TRACKERS:
        fail(f"--tracker must be one of {', '.join(TRACKERS)} (got {tracker!r})")
    options = RunOptions(
        show_progress=not quiet,
        tracker=tracker,  # type: ignore[arg-type]
        tracking_uri=tracking_uri,
        accelerator=accelerator,
        devices=int(devices) if devices.isdigit() else devices,
        num_nodes=num_nodes,
        strategy=strategy,
        export_onnx=onnx,
    )
    with stage_errors():
        if resume is not None:
            record = read_run_file(resume)
            root, name, run_dir = Path(record["data_root"]), record["recipe"]["name"], resume
            console.print(f"[bold]resuming[/] {name} in {run_dir}")
            result = resume_run(resume, options=options, console_log=console.print, force=force)
        else:
            root = data_root(data)
            chosen = _chosen_recipe(recipe, overrides, weights, epochs)
            name, run_dir = chosen.name, out or Path("runs") / chosen.name
            console.print(f"[bold]training[/] {name} on {root} -> {run_dir}")
            result = train_recipe(chosen, root, run_dir, options=options, console_log=console.print)
        if result is None:  # a non-zero rank of a multi-process run: rank zero reports
            return
        title = f"{name}: validation split (best epoch {result.best_epoch}, {result.duration_s:.0f} s)"
        console.print(metrics_table(result.val_metrics, title))
        console.print(f"bundle: {result.bundle_dir}")
        if register_model:
            _register(result, register_model)
        if result.tracking.get("offline_folder"):
            console.print(f"ClearML offline session: {result.tracking['offline_folder']}")
        if evaluate:
            _evaluate_trained(result, name, root, run_dir, report=report, quiet=quiet)


def _register(result: TrainResult, name: str) -> None:
    """``--register-model``: the run's pyfunc model in the MLflow registry."""
    from braintumor.cli.display import console
    from braintumor.training.tracking import register_model

    model_uri, version = register_model(result.tracking, name)
    console.print(f"registered {model_uri} as models:/{name}/{version}", highlight=False)


def _chosen_recipe(recipe: str, overrides: list[str], weights: Path | None, epochs: int | None) -> Recipe:
    """The named recipe with the ``--set`` overrides, then ``--weights`` and ``--epochs`` on top."""
    from braintumor.config import load_recipe

    extra = list(overrides)
    if weights is not None:
        extra.append(f"model.weights={weights}")
    if epochs is not None:
        extra.append(f"train.max_epochs={epochs}")
    return load_recipe(recipe, extra)


def _evaluate_trained(result: TrainResult, name: str, root: Path, run_dir: Path, *, report: bool, quiet: bool) -> None:
    """``train --evaluate``: the official Testing split, its metrics tracked with the run."""
    from braintumor.cli.display import console, metrics_table
    from braintumor.cli.evaluate import guard_line
    from braintumor.evaluation.evaluate import evaluate_bundle
    from braintumor.training.tracking import log_artifacts, log_final_metrics

    evaluation = evaluate_bundle(result.bundle_dir, root, "Testing", run_dir / "eval-Testing", show_progress=not quiet)
    console.print(metrics_table(evaluation.metrics, f"{name}: official Testing split"))
    console.print(guard_line(evaluation.metrics, result.bundle_dir, root), highlight=False)
    console.print(f"evaluation files: {evaluation.out_dir}")
    final = {f"test_{key}": evaluation.metrics[key] for key in ("accuracy", "loss", "macro_f1")}
    log_final_metrics(result.logger, final)
    if report:
        from braintumor.evaluation.report import build_report

        console.print(f"report: {build_report(evaluation, result.bundle_dir, show_progress=not quiet)}")
    log_artifacts(result.logger, [evaluation.out_dir])


def runs_command(
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store (default as for train)."),
    limit: int = typer.Option(20, "--limit", help="How many recent runs to list."),
) -> None:
    """List past training runs and their headline metrics from the MLflow store."""
    from braintumor.cli.display import console, runs_table
    from braintumor.training.tracking import list_runs

    with stage_errors():
        rows = list_runs(tracking_uri, limit=limit)
    if not rows:
        console.print("no runs recorded yet (train with the default --tracker mlflow to record one)")
        return
    console.print(runs_table(rows))
