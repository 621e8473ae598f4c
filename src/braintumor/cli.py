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
    recipe: str = typer.Argument("lite0-frozen", help="Recipe name in configs/ or a YAML path."),
    data: Path | None = DataOption,
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (default: runs/<recipe>)."),
    weights: Path | None = typer.Option(None, "--weights", help="Local pretrained backbone weights file."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override train.max_epochs."),
    overrides: list[str] = typer.Option([], "--set", help="Recipe override section.field=value (repeatable)."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Afterwards, evaluate on the official Testing split."),
    quiet: bool = QuietOption,
) -> None:
    """Train a recipe on Training (with a stratified validation split) and write a model bundle."""
    from braintumor.config import load_recipe
    from braintumor.display import console, metrics_table
    from braintumor.evaluation.evaluate import evaluate_bundle
    from braintumor.training.train import train_recipe

    root = _data_root(data)
    try:
        extra = list(overrides)
        if weights is not None:
            extra.append(f"model.weights={weights}")
        if epochs is not None:
            extra.append(f"train.max_epochs={epochs}")
        chosen = load_recipe(recipe, extra)
        run_dir = out or Path("runs") / chosen.name
        console.print(f"[bold]training[/] {chosen.name} on {root} -> {run_dir}")
        result = train_recipe(chosen, root, run_dir, show_progress=not quiet, console_log=console.print)
        console.print(
            metrics_table(
                result.val_metrics,
                f"{chosen.name}: validation split (best epoch {result.best_epoch}, {result.duration_s:.0f} s)",
            )
        )
        console.print(f"bundle: {result.bundle_dir}")
        if evaluate:
            evaluation = evaluate_bundle(
                result.bundle_dir, root, "Testing", run_dir / "eval-Testing", show_progress=not quiet
            )
            console.print(metrics_table(evaluation.metrics, f"{chosen.name}: official Testing split"))
            console.print(f"evaluation files: {evaluation.out_dir}")
    except (BrainTumorError, RecipeError) as error:
        _fail(str(error))


@app.command("evaluate")
def evaluate_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    data: Path | None = DataOption,
    split: str = typer.Option("Testing", "--split", help="Split folder to evaluate."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <bundle>/../eval-<split>)."),
    report: bool = typer.Option(False, "--report", help="Also write report.html (plots, Grad-CAM, model card)."),
    quiet: bool = QuietOption,
) -> None:
    """Accuracy, loss, per-class metrics, confusion matrix and per-image predictions on a split."""
    from braintumor.display import console, metrics_table
    from braintumor.evaluation.evaluate import evaluate_bundle

    root = _data_root(data)
    try:
        out_dir = out or bundle.resolve().parent / f"eval-{split}"
        result = evaluate_bundle(bundle, root, split, out_dir, show_progress=not quiet)
    except BrainTumorError as error:
        _fail(str(error))
        return
    for skipped in result.skipped:
        console.print(f"skipped {skipped.path}: {skipped.reason}")
    console.print(metrics_table(result.metrics, f"{result.metrics['recipe']} on {split}"))
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
) -> None:
    """Class and probabilities for each image (JPEG, PNG, BMP, TIFF or DICOM)."""
    from braintumor.display import console, predictions_table
    from braintumor.inference import Predictor, expand_inputs, load_bundle

    try:
        predictor = Predictor(load_bundle(bundle))
        paths = expand_inputs(inputs)
        predictions, skipped = predictor.predict_paths(paths)
    except BrainTumorError as error:
        _fail(str(error))
        return
    console.print(predictions_table(predictions, predictor.class_names))
    for item in skipped:
        console.print(f"[yellow]skipped[/] {item.path}: {item.reason}", highlight=False)
    if json_out:
        payload = {
            "bundle": str(bundle),
            "predictions": [asdict(p) for p in predictions],
            "skipped": [asdict(s) for s in skipped],
        }
        json_out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    if csv_out:
        with csv_out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "class", "confidence", *[f"p_{n}" for n in predictor.class_names]])
            for p in predictions:
                writer.writerow(
                    [
                        p.source,
                        p.class_name,
                        f"{p.confidence:.6f}",
                        *[f"{p.probabilities[n]:.6f}" for n in predictor.class_names],
                    ]
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
# --- stage commands (audit, explain, export, serve, runs) ---
from braintumor.explain.command import explain_command  # noqa: E402 (typer only; heavy imports run inside)

app.command("explain")(explain_command)
from braintumor.serving.commands import export_command, serve_command  # noqa: E402 (typer only)

app.command("export")(export_command)
app.command("serve")(serve_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
