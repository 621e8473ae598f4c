"""The ``braintumor`` command line: parses options and calls the stages, nothing more."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict
from pathlib import Path

import typer

from braintumor.config import RecipeError
from braintumor.errors import BrainTumorError

app = typer.Typer(
    name="braintumor",
    help="Train, evaluate, explain and serve brain-tumour MRI classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

DATA_ENV = "BRAINTUMOR_DATA"
DataOption = typer.Option(
    None,
    "--data",
    "-d",
    help=f"Data root holding Training/ and Testing/ (default: ${DATA_ENV}).",
    show_default=False,
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def _fail(message: str) -> None:
    from braintumor.display import console

    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


def _data_root(data: Path | None) -> Path:
    if data is not None:
        return data
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    _fail(f"no data folder: pass --data ROOT or set ${DATA_ENV}")
    raise AssertionError  # unreachable: _fail exits


@app.command()
def train(
    recipe: str = typer.Argument("lite2-probe", help="Recipe name in configs/ or a YAML path."),
    data: Path | None = DataOption,
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<recipe>)."),
    weights: Path | None = typer.Option(None, "--weights", help="Local pretrained backbone weights file."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.max_epochs."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override section.field=value (repeatable)."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Afterwards, evaluate on the official Testing split."),
    report: bool = typer.Option(False, "--report", help="With --evaluate: also write and track report.html."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue an interrupted run folder."),
    tracker: str = typer.Option("mlflow", "--tracker", help="mlflow (local store by default), clearml or none."),
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow server or store URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)."
    ),
    accelerator: str = typer.Option("auto", "--accelerator", help="cpu, gpu or auto."),
    devices: str = typer.Option("1", "--devices", help="Devices (processes) per node, or auto."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Machines taking part (multi-node DDP)."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy, e.g. ddp (gloo on CPU)."),
    quiet: bool = QuietOption,
) -> None:
    """Train a recipe on Training (with a stratified validation split) and write a model bundle."""
    from braintumor.config import load_recipe
    from braintumor.display import console, metrics_table
    from braintumor.evaluation.evaluate import evaluate_bundle
    from braintumor.training.tracking import log_artifacts, log_final_metrics
    from braintumor.training.train import RunOptions, read_run_file, resume_run, train_recipe

    if tracker not in {"mlflow", "clearml", "none"}:
        _fail(f"--tracker must be mlflow, clearml or none (got {tracker!r})")
    options = RunOptions(
        show_progress=not quiet,
        tracker=tracker,
        tracking_uri=tracking_uri,  # type: ignore[arg-type]
        accelerator=accelerator,
        devices=int(devices) if devices.isdigit() else devices,
        num_nodes=num_nodes,
        strategy=strategy,
    )
    try:
        if resume is not None:
            record = read_run_file(resume)
            root, name, run_dir = Path(record["data_root"]), record["recipe"]["name"], resume
            console.print(f"[bold]resuming[/] {name} in {run_dir}")
            result = resume_run(resume, options=options, console_log=console.print)
        else:
            root = _data_root(data)
            extra = list(overrides)
            if weights is not None:
                extra.append(f"model.weights={weights}")
            if epochs is not None:
                extra.append(f"train.max_epochs={epochs}")
            chosen = load_recipe(recipe, extra)
            name, run_dir = chosen.name, out or Path("runs") / chosen.name
            console.print(f"[bold]training[/] {name} on {root} -> {run_dir}")
            result = train_recipe(chosen, root, run_dir, options=options, console_log=console.print)
        if result is None:  # a non-zero rank of a multi-process run: rank zero reports
            return
        title = f"{name}: validation split (best epoch {result.best_epoch}, {result.duration_s:.0f} s)"
        console.print(metrics_table(result.val_metrics, title))
        console.print(f"bundle: {result.bundle_dir}")
        if result.tracking.get("offline_folder"):
            console.print(f"ClearML offline session: {result.tracking['offline_folder']}")
        if evaluate:
            evaluation = evaluate_bundle(
                result.bundle_dir, root, "Testing", run_dir / "eval-Testing", show_progress=not quiet
            )
            console.print(metrics_table(evaluation.metrics, f"{name}: official Testing split"))
            console.print(f"evaluation files: {evaluation.out_dir}")
            log_final_metrics(
                result.logger,
                {
                    "test_accuracy": evaluation.metrics["accuracy"],
                    "test_loss": evaluation.metrics["loss"],
                    "test_macro_f1": evaluation.metrics["macro_f1"],
                },
            )
            if report:
                from braintumor.evaluation.report import build_report

                console.print(f"report: {build_report(evaluation, result.bundle_dir, show_progress=not quiet)}")
            log_artifacts(result.logger, [evaluation.out_dir])
    except BrainTumorError as error:
        _fail(str(error))


@app.command()
def runs(
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store (default as for train)."),
    limit: int = typer.Option(20, "--limit", help="How many recent runs to list."),
) -> None:
    """List past training runs and their headline metrics from the MLflow store."""
    from braintumor.display import console, runs_table
    from braintumor.training.tracking import list_runs

    try:
        rows = list_runs(tracking_uri, limit=limit)
    except BrainTumorError as error:
        _fail(str(error))
        return
    if not rows:
        console.print("no runs recorded yet (train with the default --tracker mlflow to record one)")
        return
    console.print(runs_table(rows))


@app.command("evaluate")
def evaluate_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    data: Path | None = DataOption,
    split: str = typer.Option("Testing", "--split", help="Split folder to evaluate."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <bundle>/../eval-<split>)."),
    report: bool = typer.Option(False, "--report", help="Also write report.html (plots, Grad-CAM, model card)."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average flipped and shifted views."),
    audit: Path | None = typer.Option(
        None,
        "--audit",
        help="Data audit (audit.json or its folder) for the "
        "deduplicated split (default: audits/<data root name>/ when present).",
    ),
    quiet: bool = QuietOption,
) -> None:
    """Accuracy, loss, per-class metrics, confusion matrix and per-image predictions on a split."""
    from braintumor.display import console, metrics_table, uncertainty_lines
    from braintumor.evaluation.evaluate import evaluate_bundle

    root = _data_root(data)
    try:
        out_dir = out or bundle.resolve().parent / f"eval-{split}"
        result = evaluate_bundle(bundle, root, split, out_dir, show_progress=not quiet, tta=tta, audit=audit)
    except BrainTumorError as error:
        _fail(str(error))
        return
    for skipped in result.skipped:
        console.print(f"skipped {skipped.path}: {skipped.reason}")
    console.print(metrics_table(result.metrics, f"{result.metrics['recipe']} on {split}"))
    for line in uncertainty_lines(result.metrics):
        console.print(line, highlight=False)
    if result.deduplicated is not None:
        dedup = result.deduplicated
        console.print(
            metrics_table(
                dedup,
                f"{result.metrics['recipe']} on {split}, deduplicated: {dedup['n_images']} "
                f"of {dedup['official_n_images']} images have no copy in Training",
            )
        )
        for line in uncertainty_lines(dedup):
            console.print(line, highlight=False)
    elif result.audit_note:
        console.print(f"[yellow]note[/] {result.audit_note}", highlight=False)
    console.print(f"evaluation files: {out_dir}")
    if report:
        from braintumor.evaluation.report import build_report

        try:
            console.print(f"report: {build_report(result, bundle, show_progress=not quiet)}")
        except BrainTumorError as error:
            _fail(str(error))


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders."),
    json_out: Path | None = typer.Option(None, "--json", help="Write predictions as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write predictions as CSV."),
    tta: bool = typer.Option(False, "--tta", help="Test-time augmentation: average flipped and shifted views."),
) -> None:
    """Class and probabilities for each image (JPEG, PNG, BMP, TIFF or DICOM).

    With a referral threshold in the bundle (braintumor calibrate), low-confidence images are marked
    "refer to a radiologist".
    """
    from braintumor.display import console, predictions_table
    from braintumor.inference import Predictor, expand_inputs, load_bundle
    from braintumor.inference.predictor import REFER_MESSAGE

    try:
        predictor = Predictor(load_bundle(bundle), tta=tta)
        paths = expand_inputs(inputs)
        predictions, skipped = predictor.predict_paths(paths)
    except BrainTumorError as error:
        _fail(str(error))
        return
    console.print(predictions_table(predictions, predictor.class_names))
    if predictor.refer_threshold is not None:
        referred = sum(bool(p.referred) for p in predictions)
        console.print(
            f"{referred} of {len(predictions)} images below the confidence threshold {predictor.refer_threshold:.3f}: "
            f"{REFER_MESSAGE}",
            highlight=False,
        )
    for item in skipped:
        console.print(f"[yellow]skipped[/] {item.path}: {item.reason}", highlight=False)
    if json_out:
        payload = {
            "bundle": str(bundle),
            "refer_threshold": predictor.refer_threshold,
            "predictions": [asdict(p) for p in predictions],
            "skipped": [asdict(s) for s in skipped],
        }
        json_out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    if csv_out:
        with csv_out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            with_referral = predictor.refer_threshold is not None
            writer.writerow(
                ["path", "class", "confidence", *[f"p_{n}" for n in predictor.class_names]]
                + (["referred"] if with_referral else [])
            )
            for p in predictions:
                writer.writerow(
                    [
                        p.source,
                        p.class_name,
                        f"{p.confidence:.6f}",
                        *[f"{p.probabilities[n]:.6f}" for n in predictor.class_names],
                    ]
                    + ([int(bool(p.referred))] if with_referral else [])
                )
    if not predictions:
        _fail("no image could be read")


@app.command()
def recipes() -> None:
    """List the recipes in configs/ with their descriptions."""
    from braintumor.config import REPO_CONFIG_DIR, load_recipe
    from braintumor.display import console

    folders = [Path.cwd() / "configs", REPO_CONFIG_DIR]
    seen: set[str] = set()
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            if path.stem in seen:
                continue
            seen.add(path.stem)
            try:
                console.print(f"[bold]{path.stem}[/]: {load_recipe(path).description}")
            except RecipeError as error:
                console.print(f"[red]{path.stem}[/]: {error}")


# Commands of the other stages are defined next to their stage and registered here, one line each.
# --- stage commands (audit, explain, export, serve, calibrate, ensemble) ---
from braintumor.data.audit_command import audit_command  # noqa: E402 (typer only; heavy imports run inside)

app.command("audit")(audit_command)
from braintumor.explain.command import explain_command  # noqa: E402 (typer only; heavy imports run inside)

app.command("explain")(explain_command)
from braintumor.serving.commands import export_command, serve_command  # noqa: E402 (typer only)

app.command("export")(export_command)
app.command("serve")(serve_command)
from braintumor.evaluation.commands import calibrate_command  # noqa: E402 (typer only)

app.command("calibrate")(calibrate_command)
from braintumor.inference.commands import ensemble_command  # noqa: E402 (typer only)

app.command("ensemble")(ensemble_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
