"""``braintumor predict``: class and probabilities for each image, as a table and optionally JSON or CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import TtaOption, fail, stage_errors, warn


def predict_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders."),
    json_out: Path | None = typer.Option(None, "--json", help="Write predictions as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write predictions as CSV."),
    tta: bool = TtaOption,
) -> None:
    """Class and probabilities for each image (JPEG, PNG, BMP, TIFF or DICOM).

    With a referral threshold in the bundle (braintumor calibrate), low-confidence images are marked
    "refer to a radiologist".
    """
    from braintumor.bundle import load_bundle
    from braintumor.cli.display import console, predictions_table
    from braintumor.inference.predictor import (
        NO_GUARD_MESSAGE,
        OOD_MESSAGE,
        REFER_MESSAGE,
        Predictor,
        expand_inputs,
        write_predictions_csv,
        write_predictions_json,
    )

    with stage_errors():
        predictor = Predictor(load_bundle(bundle), tta=tta)
        predictions, skipped = predictor.predict_paths(expand_inputs(inputs))
    console.print(predictions_table(predictions, predictor.class_names))
    if predictor.refer_threshold is not None:
        referred = sum(bool(p.referred) for p in predictions)
        console.print(
            f"{referred} of {len(predictions)} images below the confidence threshold {predictor.refer_threshold:.3f}: "
            f"{REFER_MESSAGE}",
            highlight=False,
        )
    if predictor.guard is None:
        warn("note", NO_GUARD_MESSAGE)
    else:
        flagged = sum(bool(p.out_of_distribution) for p in predictions)
        console.print(f"input guard: {flagged} of {len(predictions)} images flagged: {OOD_MESSAGE}", highlight=False)
    for item in skipped:
        warn("skipped", f"{item.path}: {item.reason}")
    if json_out:
        write_predictions_json(json_out, bundle, predictor, predictions, skipped)
    if csv_out:
        write_predictions_csv(csv_out, predictor, predictions)
    if not predictions:
        fail("no image could be read")
