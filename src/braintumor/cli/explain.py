"""``braintumor explain``: Grad-CAM, Grad-CAM++ and SHAP figures for images, and the sanity checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from braintumor.cli.common import QuietOption, fail, stage_errors, warn
from braintumor.cli.volume import (
    AsVolumeOption,
    MinSlicesOption,
    MontageSlicesOption,
    SeriesOption,
    ThresholdOption,
    VolumeIndexOption,
    VolumeOptions,
    run_volume_command,
)
from braintumor.explain.defaults import DEFAULT_SANITY_IMAGES, DEFAULT_SHAP_SAMPLES

if TYPE_CHECKING:
    from braintumor.results import Explanation


def explain_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (JPEG, PNG, BMP, TIFF or DICOM)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for one PNG per image and explanations.json."),
    method: str = typer.Option(
        "gradcam",
        "--method",
        "-m",
        help="gradcam, gradcam++, shap, rollout (vision transformers), a comma list of them, or all that apply.",
    ),
    target: str | None = typer.Option(None, "--target", "-t", help="Class to explain, 'predicted' (default) or 'all'."),
    layer: str | None = typer.Option(
        None, "--layer", help="Grad-CAM layer as a dotted path, e.g. backbone.layer4 (default: last conv stage)."
    ),
    background_dir: Path | None = typer.Option(
        None,
        "--background-dir",
        help="SHAP background images: a data root or an image folder (default: the bundle's training data).",
    ),
    shap_samples: int = typer.Option(
        DEFAULT_SHAP_SAMPLES, "--shap-samples", min=1, help="GradientShap samples per image."
    ),
    sanity: bool = typer.Option(
        False, "--sanity", help="Also run the model and label randomisation tests and the deletion curve on them."
    ),
    sanity_images: int = typer.Option(
        DEFAULT_SANITY_IMAGES, "--sanity-images", min=1, help="Images used by --sanity (the first N)."
    ),
    explain_flagged: bool = typer.Option(
        False,
        "--explain-flagged",
        help="Draw heat maps for images the input guard flags too (titled 'not a diagnosis: flagged').",
    ),
    quiet: bool = QuietOption,
    series: str | None = SeriesOption,
    volume_index: int | None = VolumeIndexOption,
    as_volume: bool = AsVolumeOption,
    montage_slices: int = MontageSlicesOption,
    threshold: float = ThresholdOption,
    min_slices: int = MinSlicesOption,
) -> None:
    """Grad-CAM, Grad-CAM++ and SHAP heat maps over each image, as PNG beside the original.

    A volume (.nii/.nii.gz, a zip of one DICOM series, a multi-frame DICOM, a series folder with --as-volume)
    gets montage.png (the most tumour-like slices with Grad-CAM and the per-slice curve), slices.csv and
    explanations.json in --out.
    """
    options = VolumeOptions(series, volume_index, as_volume, threshold, min_slices)
    if options.wanted(inputs):
        run_volume_command(
            bundle,
            inputs[0],
            options,
            csv_out=out / "slices.csv",
            json_out=out / "explanations.json",
            montage_out=out / "montage.png",
            montage_slices=montage_slices,
        )
        return
    import braintumor

    with stage_errors():
        run = braintumor.load(bundle).explain(
            inputs,
            out,
            method=method,
            target=target,
            layer=layer,
            background_dir=background_dir,
            shap_samples=shap_samples,
            sanity=sanity,
            sanity_images=sanity_images,
            show_progress=not quiet,
            explain_flagged=explain_flagged,
        )
    _print_run(run)


def _print_run(run: Explanation) -> None:
    """Notes, skipped files, the figures table and the sanity checks of an image run."""
    from braintumor.cli.display import console, explanations_table, sanity_table

    for note in run.notes:
        warn("note", note)
    for item in run.skipped:
        warn("skipped", f"{item.path}: {item.reason}")
    # An image the input guard flagged has no class: drawn only with --explain-flagged, and never in the table.
    diagnosed = [item for item in run.images if item.class_name is not None]
    for item in run.images:
        if item.class_name is None:
            warn("flagged", f"{item.source}: not a diagnosis, drawn on request in {item.figure}")
    if not run.images and not run.flagged:
        fail("no image could be read")
    if diagnosed:
        console.print(explanations_table(diagnosed, run.out_dir))
    if run.sanity:
        console.print(sanity_table(run.sanity))
