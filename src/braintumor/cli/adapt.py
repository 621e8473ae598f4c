"""``braintumor adapt``: a new bundle fitted to a site's unlabelled scans; the original bundle is only read."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.adaptation.defaults import DEFAULT_METHOD, METHODS
from braintumor.cli.common import QuietOption, stage_errors, warn


def adapt_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder to adapt (left unchanged)."),
    images: Path = typer.Option(
        ..., "--images", "-i", help="Folder of the site's unlabelled scans (any layout; folder names are ignored)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the adapted bundle (replaced whole if it exists)."),
    method: str | None = typer.Option(
        None,
        "--method",
        "-m",
        help=f"One of {', '.join(METHODS)}, or several joined by + (e.g. coral+em). Default: the bundle recipe's "
        f"adapt.method ({DEFAULT_METHOD} unless the recipe chose another on the proxy).",
        show_default=False,
    ),
    force: bool = typer.Option(
        False, "--force", help="Apply feature-moving methods even when the scans look like the training sources."
    ),
    quiet: bool = QuietOption,
) -> None:
    """Adapt a bundle to a new site from its unlabelled scans (no label is read)."""
    import braintumor
    from braintumor.cli.display import console

    with stage_errors():
        result = braintumor.adapt(bundle, images, out, method=method, force=force, show_progress=not quiet)
    record = result.record
    if method is None:
        console.print(f"method {record.method} (the bundle recipe's adapt.method)", highlight=False)
    for skipped in record.skipped_files:
        console.print(f"skipped {skipped['path']}: {skipped['reason']}", highlight=False)
    for path in record.rejected_by_guard:
        console.print(f"rejected by the input guard (not used): {path}", highlight=False)
    console.print(f"shift evidence: {result.evidence.explanation}", highlight=False)
    console.print(
        f"target is {'near the source' if result.evidence.near_source else 'shifted from the source'}",
        highlight=False,
    )
    for line in result.warnings:
        warn("warning", line)
    fitted = record.settings.get("fitted", {})
    if "em_priors" in fitted:
        console.print(f"class priors estimated by EM: {fitted['em_priors']}", highlight=False)
    console.print(
        f"adapted with {record.settings.get('applied') or 'nothing'} on {record.n_images} images "
        f"(manifest {record.manifest_sha256[:12]}); bundle written: {result.bundle_path}",
        highlight=False,
    )
    console.print(f"onnx: {result.onnx_note}", highlight=False)
