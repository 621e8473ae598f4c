"""The FastAPI service: ``/v1/predict``, ``/v1/explain``, ``/v1/health``, ``/v1/model`` and the web page.

Uploads never touch the disk: the body is read into memory up to the configured limit and the
multipart form is parsed there (FastAPI's own ``UploadFile`` would spool large files to a temporary
file). Inference uses onnxruntime when the bundle has ``model.onnx`` (see ``braintumor export``),
PyTorch otherwise; Grad-CAM always uses the PyTorch model. Both backends run the bundle's input guard:
an upload unlike the training slices is answered with ``out_of_distribution: true`` and a ``warning``
(the class probabilities are still there, but they are not a diagnosis); a bundle without a guard
answers null there. The bundle is only read, never written. ``/docs`` and ``/redoc`` serve their Swagger UI and
ReDoc assets themselves, so they work without internet. The pieces: response models in
:mod:`~braintumor.serving.schemas`, the model in :mod:`~braintumor.serving.service`, the endpoints in
:mod:`~braintumor.serving.routes`.

Example:
    >>> from fastapi.testclient import TestClient
    >>> from braintumor.bundle.examples import tiny_bundle
    >>> folder = tiny_bundle()
    >>> client = TestClient(create_app(folder))
    >>> client.get("/v1/health").json()["status"]
    'ok'
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from braintumor.errors import BrainTumorError
from braintumor.serving.routes import index_html, protected_router, public_router
from braintumor.serving.schemas import DISCLAIMER, ErrorResponse
from braintumor.serving.service import ModelService
from braintumor.serving.settings import BUNDLE_ENV, ServeSettings
from braintumor.serving.uploads import UploadError

logger = logging.getLogger("braintumor.serving")
# Where the Swagger UI and ReDoc scripts, stylesheet and favicon of /docs and /redoc are served from.
DOCS_ASSETS_URL = "/static-offline-docs"


async def _refused(request: Request, error: UploadError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error.code, detail=error.detail).model_dump(), status_code=error.status)


async def _failed(request: Request, error: Exception) -> JSONResponse:
    # The traceback goes to the log only: a client learns that the server failed, not its internals.
    logger.exception("request %s %s failed", request.method, request.url.path)
    body = ErrorResponse(error="internal_error", detail="the server failed on this request; the failure is logged")
    return JSONResponse(body.model_dump(), status_code=500)


def _offline_docs_app(**options: Any) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` pages load Swagger UI and ReDoc from the app itself.

    FastAPI's own pages load them from a CDN and stay blank without internet; ``fastapi-offline`` (the
    ``serve`` extra) ships the assets and serves them under :data:`DOCS_ASSETS_URL`. Without it the CDN
    pages are used and a warning says so.
    """
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        logger.warning(
            "fastapi-offline is not installed: /docs and /redoc load their scripts from a CDN "
            "(pip install 'braintumor[serve]' serves them locally)"
        )
        return FastAPI(**options)
    return FastAPIOffline(static_url=DOCS_ASSETS_URL, **options)


def create_app(bundle_path: Path | str, settings: ServeSettings | None = None) -> FastAPI:
    """Build the service for one bundle. Raises :class:`BrainTumorError` when the bundle is unusable."""
    settings = settings or ServeSettings()
    service = ModelService(bundle_path, settings)
    app = _offline_docs_app(
        title="braintumor",
        version=service.ref.version,
        summary="Brain-tumour MRI classification (glioma, meningioma, no tumour, pituitary). " + DISCLAIMER,
    )
    app.state.service = service
    app.state.settings = settings
    app.state.index_html = index_html()
    app.add_exception_handler(UploadError, _refused)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _failed)
    app.include_router(public_router())
    app.include_router(protected_router(settings))
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used for ``--workers`` > 1): bundle and settings from the environment."""
    bundle = os.environ.get(BUNDLE_ENV)
    if not bundle:
        raise BrainTumorError(f"${BUNDLE_ENV} is not set: start the service with `braintumor serve BUNDLE`")
    return create_app(bundle, ServeSettings.from_env())
