"""Volume input for ``braintumor predict`` and ``braintumor explain``: the shared options, the calls, the printing.

A single input that is a NIfTI file, a zip or a multi-frame DICOM file is a volume; a folder is read as one
DICOM series with ``--as-volume`` (or ``--series UID``), since a folder of single DICOM slices from different
patients is still predicted image by image as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from braintumor.cli.common import warn
from braintumor.inference.volume_defaults import (
    DEFAULT_MIN_CONSECUTIVE,
    DEFAULT_MONTAGE_SLICES,
    DEFAULT_SLICE_THRESHOLD,
)

if TYPE_CHECKING:
    from braintumor.inference.volume import VolumeResult

SeriesOption = typer.Option(
    None, "--series", help="Volume input: the DICOM SeriesInstanceUID to read when the input holds several series."
)
VolumeIndexOption = typer.Option(None, "--volume", min=0, help="Volume input: which volume of a 4D NIfTI (0-based).")
AsVolumeOption = typer.Option(
    False,
    "--as-volume",
    help="Read a folder as one DICOM series (NIfTI, zip and multi-frame DICOM are volumes anyway).",
)
ThresholdOption = typer.Option(
    DEFAULT_SLICE_THRESHOLD, "--threshold", min=0.0, max=1.0, help="Study rule: a slice counts at this probability."
)
MinSlicesOption = typer.Option(
    DEFAULT_MIN_CONSECUTIVE, "--min-slices", min=1, help="Study rule: consecutive counting slices for a finding."
)
MontageSlicesOption = typer.Option(
    DEFAULT_MONTAGE_SLICES, "--montage-slices", min=1, max=16, help="Slices shown in the montage."
)
_TABLE_ROWS = 12


@dataclass
class VolumeOptions:
    """What the user asked for a volume."""

    series: str | None = None
    volume_index: int | None = None
    as_volume: bool = False
    threshold: float = DEFAULT_SLICE_THRESHOLD
    min_slices: int = DEFAULT_MIN_CONSECUTIVE
    tta: bool = False

    def wanted(self, inputs: list[Path]) -> bool:
        """Whether ``inputs`` are one volume (see the module docstring)."""
        from braintumor.cli.display import console
        from braintumor.data.volumes import is_volume_input, single_dicom_series

        if len(inputs) != 1:
            return False
        chosen = self.as_volume or self.series is not None or self.volume_index is not None
        if chosen or is_volume_input(inputs[0]):
            return True
        series = single_dicom_series(inputs[0])
        if series is not None:
            console.print(f"{inputs[0]} holds one DICOM series ({series}): read as a volume", highlight=False)
        return series is not None


def predict_volume_input(bundle: Path, source: Path, options: VolumeOptions) -> tuple[Any, VolumeResult]:
    """Predict every slice of the volume; the loaded model is returned for the guard note and the montage."""
    import braintumor

    model = braintumor.load(bundle)
    result = model.predict_volume(
        source,
        tta=options.tta,
        series_uid=options.series,
        volume_index=options.volume_index,
        threshold=options.threshold,
        min_consecutive=options.min_slices,
    )
    return model, result


def print_volume_result(result: VolumeResult) -> None:
    """The input, its warnings, the most tumour-like slices and the study finding."""
    from rich.table import Table

    from braintumor.cli.display import console
    from braintumor.inference.volume import most_tumour_like

    volume = result.volume
    described = volume.describe()
    console.print(
        f"[bold]{volume.source}[/]: {volume.format}, {len(volume.slices)} axial slices "
        f"(acquired {volume.acquisition_orientation}, shape {'x'.join(map(str, volume.shape))})",
        highlight=False,
    )
    if described["series_uid"]:
        console.print(f"series {described['series_uid']} {described['series_description']!r}", highlight=False)
    for line in volume.warnings:
        warn("warning", line)
    shown = most_tumour_like(result, min(_TABLE_ROWS, len(result.slices)))
    table = Table(title=f"Most tumour-like slices ({len(shown)} of {len(result.slices)}; all in --csv/--json)")
    for column in ("slice", "position mm", "class", *result.class_names, "ood score"):
        table.add_column(column, justify="right")
    for index in shown:
        item = result.slices[index]
        flagged = "[red]" if item.out_of_distribution else ""
        table.add_row(
            str(index),
            "-" if item.position_mm is None else f"{item.position_mm:.1f}",
            f"{flagged}{item.class_name}",
            *[f"{item.probabilities[name]:.3f}" for name in result.class_names],
            "-" if item.ood_score is None else f"{item.ood_score:.2f}",
        )
    console.print(table)
    study = result.study
    peak = "" if study.peak_slice is None else f", peak slice {study.peak_slice} (p = {study.peak_probability:.3f})"
    console.print(f"[bold]study finding: {study.finding}[/] ({study.reason}{peak})", highlight=False)
    console.print(f"rule: {study.rule}", highlight=False)


def refuse_volume_only(**given: object) -> str | None:
    """The message for volume-only options given with image input, or None."""
    named = [f"--{name.replace('_', '-')}" for name, value in given.items() if value not in (None, False)]
    verb = "needs" if len(named) == 1 else "need"
    return None if not named else f"{', '.join(named)} {verb} a volume input (a NIfTI file, a zip or a DICOM series)"


def run_volume_command(
    bundle: Path,
    source: Path,
    options: VolumeOptions,
    *,
    csv_out: Path | None = None,
    json_out: Path | None = None,
    montage_out: Path | None = None,
    montage_slices: int = DEFAULT_MONTAGE_SLICES,
    dicom_sr: Path | None = None,
    sr_in_source: bool = False,
) -> VolumeResult:
    """``predict``/``explain`` on a volume: predict, print, write the files asked for; errors become one line."""
    import braintumor.api
    from braintumor.cli.common import stage_errors
    from braintumor.cli.display import console
    from braintumor.inference.predictor import NO_GUARD_MESSAGE

    with stage_errors():
        model, result = predict_volume_input(bundle, source, options)
    print_volume_result(result)
    if model.stored.guard is None:
        warn("note", NO_GUARD_MESSAGE)
    with stage_errors():
        tiles = None if montage_out is None else model.volume_montage(result, montage_out, montage_slices)
        extra = None if tiles is None else {"montage": {"path": str(montage_out), "slices": tiles}}
        written = braintumor.api.save_volume_outputs(
            result, csv_out=csv_out, json_out=json_out, dicom_sr=dicom_sr, sr_in_source=sr_in_source, extra=extra
        )
    if montage_out is not None:
        console.print(f"montage: {montage_out}", highlight=False)
    for line in written:
        console.print(line, highlight=False)
    return result
