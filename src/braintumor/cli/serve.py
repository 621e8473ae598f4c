"""``braintumor export`` and ``braintumor serve``: option parsing only; the work is in the stage modules."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.cli.common import fail, stage_errors
from braintumor.inference.defaults import DEFAULT_OPSET
from braintumor.serving.settings import ServeSettings

MIB = 1024 * 1024
# The service's own defaults (one source of truth); the options only override them.
_SETTING_DEFAULTS = {name: field.default for name, field in ServeSettings.model_fields.items()}


def export_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    onnx: bool = typer.Option(False, "--onnx", help="Write model.onnx into the bundle (checked against PyTorch)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the ONNX file here instead of the bundle."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset version."),
) -> None:
    """Export a bundle's network to ONNX and check its probabilities against PyTorch."""
    if not onnx:
        fail("nothing to export: pass --onnx")
    from braintumor.api import export
    from braintumor.cli.display import console
    from braintumor.inference.onnx_export import PARITY_TOLERANCE

    with stage_errors(), console.status(f"exporting {bundle} to ONNX"):
        result = export(bundle, out=out, opset=opset)
    console.print(
        f"parity: max |p_onnx - p_torch| = {result.max_abs_diff:.2e} over {result.samples} images "
        f"(limit {PARITY_TOLERANCE:.0e}): [green]ok[/]",
        highlight=False,
    )
    if result.max_ood_diff is not None:
        console.print(f"input guard parity: max relative ood_score difference {result.max_ood_diff:.2e}: [green]ok[/]")
    console.print(f"wrote {result.path} (opset {result.opset}, dynamic batch axis)", highlight=False)


def serve_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (each loads the model)."),
    backend: str = typer.Option("auto", "--backend", help="auto (ONNX when model.onnx exists), onnx or torch."),
    max_upload_mb: float = typer.Option(
        _SETTING_DEFAULTS["max_upload_bytes"] / MIB, "--max-upload-mb", help="Largest upload accepted (413 above)."
    ),
    max_pixels: int = typer.Option(
        _SETTING_DEFAULTS["max_pixels"], "--max-pixels", help="Largest image in pixels (422 above)."
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="onnxruntime threads per model run (default 1: runs go side by side)."
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", help="Model runs at the same time per worker (default: cores/workers)."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve a bundle over HTTP: JSON API under /v1, a web page at /, API docs at /docs (offline).

    The bundle is only read: one without model.onnx is served with PyTorch (add the graph with
    `braintumor export BUNDLE --onnx`). Set BRAINTUMOR_API_KEY to require that key in the X-API-Key header.
    """
    import braintumor

    with stage_errors():
        model = braintumor.load(bundle)
        model.serve(
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            max_upload_bytes=int(max_upload_mb * MIB),
            max_pixels=max_pixels,
            backend=backend,
            threads=threads,
            concurrency=concurrency,
        )
