"""Serving stage: a FastAPI service and web page for one bundle (``braintumor serve``).

Importing this package is cheap; :func:`create_app` pulls in FastAPI, PyTorch and onnxruntime
when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from braintumor.serving.settings import ServeSettings

if TYPE_CHECKING:
    from braintumor.serving.app import create_app
    from braintumor.serving.server import run_server

__all__ = ["ServeSettings", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from braintumor.serving.app import create_app

        return create_app
    if name == "run_server":
        from braintumor.serving.server import run_server

        return run_server
    raise AttributeError(name)
