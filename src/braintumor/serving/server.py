"""Run the service for one bundle under uvicorn, in one process or several workers (``braintumor serve``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from braintumor.serving.settings import BUNDLE_ENV, SETTINGS_ENV, ServeSettings


def run_server(
    bundle: Path | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
    **settings: Any,
) -> None:
    """Serve ``bundle`` until interrupted; ``settings`` override :class:`ServeSettings` (and its environment).

    The bundle is only read: one without ``model.onnx`` is served with PyTorch and a one-line note. With several
    workers each loads the model; the bundle is checked once here first, so a bad folder fails before they start.
    """
    import uvicorn

    bundle = Path(bundle)
    if workers > 1 and settings.get("concurrency") is None:
        settings["concurrency"] = max(1, (os.cpu_count() or 1) // workers)
    served = ServeSettings.from_env(**settings)
    if workers == 1:
        from braintumor.serving.app import create_app

        uvicorn.run(create_app(bundle, served), host=host, port=port, log_level=log_level)
        return
    from braintumor.bundle import read_bundle_config

    read_bundle_config(bundle)
    os.environ[BUNDLE_ENV] = str(bundle.resolve())
    os.environ[SETTINGS_ENV] = served.to_env()
    uvicorn.run(
        "braintumor.serving.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
