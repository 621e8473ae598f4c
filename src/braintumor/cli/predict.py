"""``braintumor predict``: class and probabilities for each image, as a table and optionally JSON or CSV.

``--json -`` or ``--csv -`` writes to standard output; the table and its notes then go to standard error, so the
output can be piped (``braintumor predict BUNDLE scans/ --json - | jq``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from braintumor.cli.batch import (
    AddressOption,
    BatchOptions,
    EngineOption,
    NumPartsOption,
    OutDirOption,
    PartIdOption,
    ShardSizeOption,
    run_batch_command,
)
from braintumor.cli.common import TtaOption, fail, is_stdout, stage_errors, warn, write_output
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

if TYPE_CHECKING:
    from braintumor.results import Predictions


def predict_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders."),
    json_out: Path | None = typer.Option(
        None,
        "--json",
        help="Write predictions as JSON; - writes them to standard output (the table to standard error).",
    ),
    csv_out: Path | None = typer.Option(
        None, "--csv", help="Write predictions as CSV; - writes them to standard output (the table to standard error)."
    ),
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
    out_dir: Path | None = OutDirOption,
    engine: str | None = EngineOption,
    address: str | None = AddressOption,
    num_parts: int = NumPartsOption,
    part_id: int | None = PartIdOption,
    shard_size: int = ShardSizeOption,
) -> None:
    """Class and probabilities for each image (JPEG, PNG, BMP, TIFF or DICOM), or for every slice of a volume.

    With a referral threshold in the bundle (braintumor calibrate), low-confidence images are marked
    "refer to a radiologist". A volume (a .nii/.nii.gz file, a zip of one DICOM series, a multi-frame DICOM
    file, or a folder of one series with --as-volume) gets per-slice results (--csv, --json), a study-level
    finding, and optionally a Grad-CAM montage (--montage) and a DICOM SR (--dicom-sr).

    With --out-dir, a batch of any size: Parquet and CSV shards, resumable, split into parts for a job array
    (--num-parts, --part-id) or run on a Ray cluster (--engine ray); see docs/batch.md.
    """
    batch = BatchOptions(out_dir, engine, address, num_parts, part_id, shard_size)
    if batch.wanted():
        single_run_only = (json_out, csv_out, montage_out, dicom_sr, series, volume_index)
        if as_volume or any(value is not None for value in single_run_only):
            fail("--out-dir writes every result into its shards: leave out --json, --csv and the volume options")
        run_batch_command(bundle, inputs, batch, tta=tta, threshold=threshold, min_slices=min_slices)
        return
    if is_stdout(json_out) and is_stdout(csv_out):
        fail("--json - and --csv - would both write to standard output: give one of them a file")
    options = VolumeOptions(series, volume_index, as_volume, threshold, min_slices, tta)
    if options.wanted(inputs):
        if is_stdout(json_out) or is_stdout(csv_out):
            fail("a volume's per-slice results need a file for --json or --csv (- is for images)")
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
    _predict_images(bundle, inputs, tta=tta, json_out=json_out, csv_out=csv_out)


def _predict_images(
    bundle: Path, inputs: list[Path], *, tta: bool, json_out: Path | None, csv_out: Path | None
) -> None:
    """Predict image files and folders, print the table and the notes, write --json and --csv."""
    import braintumor

    with stage_errors():
        predictions = braintumor.load(bundle).predict(inputs, tta=tta)
    for item in predictions.skipped:
        warn("skipped", f"{item.path}: {item.reason}")
    if predictions:
        _print_predictions(predictions, to_stderr=is_stdout(json_out) or is_stdout(csv_out))
    if json_out:
        write_output(json_out, predictions.write_json)
    if csv_out:
        write_output(csv_out, predictions.write_csv)
    if not predictions:
        fail("no image could be read")


def _print_predictions(predictions: Predictions, *, to_stderr: bool) -> None:
    """The table, then a line on what was referred or flagged (only when something was), or the missing guard."""
    from braintumor.cli.display import console, err_console, predictions_table
    from braintumor.inference.predictor import NO_GUARD_MESSAGE, OOD_MESSAGE, REFER_MESSAGE

    out = err_console if to_stderr else console
    out.print(predictions_table(predictions, predictions.class_names))
    referred = sum(bool(p.referred) for p in predictions)
    if predictions.refer_threshold is not None and referred:
        out.print(
            f"{referred} of {len(predictions)} images below the confidence threshold "
            f"{predictions.refer_threshold:.3f}: {REFER_MESSAGE}",
            highlight=False,
        )
    flagged = sum(bool(p.flagged) for p in predictions)
    if predictions.guard is None:
        warn("note", NO_GUARD_MESSAGE)
    elif flagged:
        out.print(f"input guard: {flagged} of {len(predictions)} images flagged: {OOD_MESSAGE}", highlight=False)
