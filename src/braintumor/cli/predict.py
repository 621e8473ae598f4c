"""``braintumor predict``: class and probabilities for each image, as a table and optionally JSON or CSV."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import TtaOption, fail, stage_errors, warn
from braintumor.cli.volume import (
    AsVolumeOption,
    MinSlicesOption,
    MontageSlicesOption,
    SeriesOption,
    ThresholdOption,
    VolumeIndexOption,
    VolumeOptions,
    refuse_volume_only,
    run_volume_command,
)


def predict_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders."),
    json_out: Path | None = typer.Option(None, "--json", help="Write predictions as JSON."),
    csv_out: Path | None = typer.Option(None, "--csv", help="Write predictions as CSV."),
    tta: bool = TtaOption,
    series: str | None = SeriesOption,
    volume_index: int | None = VolumeIndexOption,
    as_volume: bool = AsVolumeOption,
    montage_out: Path | None = typer.Option(
        None, "--montage", help="Volume input: PNG of the most tumour-like slices with Grad-CAM and the slice curve."
    ),
    montage_slices: int = MontageSlicesOption,
    dicom_sr: Path | None = typer.Option(
        None, "--dicom-sr", help="DICOM volume input: write the study finding as a DICOM Structured Report here."
    ),
    sr_in_source: bool = typer.Option(False, "--sr-in-source", help="Allow --dicom-sr inside the source folder."),
    threshold: float = ThresholdOption,
    min_slices: int = MinSlicesOption,
) -> None:
    """Class and probabilities for each image (JPEG, PNG, BMP, TIFF or DICOM), or for every slice of a volume.

    With a referral threshold in the bundle (braintumor calibrate), low-confidence images are marked
    "refer to a radiologist". A volume (a .nii/.nii.gz file, a zip of one DICOM series, a multi-frame DICOM
    file, or a folder of one series with --as-volume) gets per-slice results (--csv, --json), a study-level
    finding, and optionally a Grad-CAM montage (--montage) and a DICOM SR (--dicom-sr).
    """
    options = VolumeOptions(series, volume_index, as_volume, threshold, min_slices, tta)
    if options.wanted(inputs):
        run_volume_command(
            bundle,
            inputs[0],
            options,
            csv_out=csv_out,
            json_out=json_out,
            montage_out=montage_out,
            montage_slices=montage_slices,
            dicom_sr=dicom_sr,
            sr_in_source=sr_in_source,
        )
        return
    refused = refuse_volume_only(montage=montage_out, dicom_sr=dicom_sr, sr_in_source=sr_in_source)
    if refused:
        fail(refused)
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
