"""The FastAPI service: ``/v1/predict``, ``/v1/explain``, ``/v1/health``, ``/v1/model`` and the web page.

Uploads never touch the disk: the body is read into memory up to the configured limit and the
multipart form is parsed there (FastAPI's own ``UploadFile`` would spool large files to a temporary
file). Decoding and inference run in the thread pool so the event loop keeps answering while a
request computes. Inference uses onnxruntime when the bundle has ``model.onnx`` (see
``braintumor export``), PyTorch otherwise; Grad-CAM always uses the PyTorch model.

Example:
    >>> import tempfile
    >>> from fastapi.testclient import TestClient
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model, resolve_preprocessing
    >>> from braintumor.bundle import save_bundle
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe)
    >>> folder = save_bundle(tempfile.mkdtemp() + "/b", model, recipe, resolve_preprocessing(recipe, model))
    >>> client = TestClient(create_app(folder))
    >>> client.get("/v1/health").json()["status"]
    'ok'
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from PIL import Image
from pydantic import BaseModel, Field

from braintumor.bundle import WEIGHTS_FILE, Bundle, load_bundle
from braintumor.config import Recipe
from braintumor.errors import BrainTumorError
from braintumor.inference.onnx_export import OnnxPredictor, make_predictor
from braintumor.serving.settings import BUNDLE_ENV, ServeSettings
from braintumor.serving.uploads import (
    DecodedUpload,
    UploadError,
    decode_upload,
    read_limited,
    readable_list,
    upload_from_body,
)

logger = logging.getLogger("braintumor.serving")
API_PREFIX = "/v1"
DISCLAIMER = "Research use only: not a medical device and not for diagnosis."


# --- response models (they are the OpenAPI schema at /docs) ---------------------------------------


class ModelRef(BaseModel):
    name: str = Field(description="Recipe name of the bundle.")
    version: str = Field(description="First 12 hex digits of the BLAKE2b hash of model.safetensors.")
    backend: str = Field(description="onnxruntime or pytorch.")


class ImageInfo(BaseModel):
    format: str = Field(description="Format sniffed from the content: JPEG, PNG or DICOM.")
    width: int
    height: int


class Timing(BaseModel):
    read_ms: float = Field(description="Receiving and parsing the upload.")
    decode_ms: float = Field(description="Decoding the image (DICOM display pipeline included).")
    inference_ms: float = Field(description="Resizing and running the model.")
    total_ms: float


class PredictionResponse(BaseModel):
    class_name: str = Field(description="The most probable class.")
    confidence: float = Field(description="Probability of class_name (temperature-scaled when calibrated).")
    probabilities: dict[str, float]
    calibrated: bool = Field(description="True when the bundle carries a temperature and it was applied.")
    temperature: float | None = None
    refer: bool | None = Field(
        None, description="True when confidence is below the bundle's refer threshold; null when it has none."
    )
    refer_threshold: float | None = None
    model: ModelRef
    image: ImageInfo
    timing: Timing
    disclaimer: str = DISCLAIMER


class ErrorResponse(BaseModel):
    error: str = Field(description="Short machine-readable code.")
    detail: str = Field(description="What went wrong, in plain words.")


class HealthResponse(BaseModel):
    status: str
    model: ModelRef
    api_key_required: bool
    api_key_header: str
    max_upload_bytes: int
    accepted_formats: list[str]
    explain_available: bool
    disclaimer: str = DISCLAIMER


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image as a multipart form field `file`, or as the raw request body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary", "description": "JPEG, PNG or DICOM"}},
                    "required": ["file"],
                }
            },
            "application/dicom": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed request (e.g. broken multipart body)."},
    401: {"model": ErrorResponse, "description": "API key missing or wrong (only when one is configured)."},
    413: {"model": ErrorResponse, "description": "Upload over the size limit."},
    415: {"model": ErrorResponse, "description": "Content is not an accepted image type (sniffed, not trusted)."},
    422: {"model": ErrorResponse, "description": "Image cannot be decoded, is too large in pixels, or has no pixels."},
}


# --- the model behind the service ------------------------------------------------------------------


def weights_version(bundle_path: Path) -> str:
    """A short content hash of the weights: two bundles with the same version hold the same model."""
    digest = hashlib.blake2b(digest_size=16)
    with (bundle_path / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _gradcam_function() -> tuple[Callable[..., tuple[Image.Image, str]] | None, str]:
    """``braintumor.explain.gradcam_overlay`` when it can be imported, else None and the reason."""
    try:
        module = importlib.import_module("braintumor.explain")
        function = getattr(module, "gradcam_overlay", None)
    except ImportError as error:
        return None, f"the explain stage cannot be imported ({error}); install braintumor[explain]"
    if function is None:
        return None, "this braintumor version has no Grad-CAM (braintumor.explain.gradcam_overlay)"
    return function, ""


def _public_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe without the server's file paths (a local weights file is named, not located)."""
    public = recipe.model_dump(mode="json")
    if public["model"].get("weights"):
        public["model"]["weights"] = Path(str(public["model"]["weights"])).name
    return public


class ModelService:
    """The loaded bundle, its predictor and what the endpoints report about it."""

    def __init__(self, bundle_path: Path | str, settings: ServeSettings) -> None:
        self.settings = settings
        self.bundle: Bundle = load_bundle(bundle_path)
        # One thread per model run and as many runs as cores: requests proceed side by side on their own
        # core, which gave more requests/s than two threads per run (docs/serving.md).
        self.predictor = make_predictor(self.bundle, settings.backend, threads=settings.threads or 1)
        backend = "onnxruntime" if isinstance(self.predictor, OnnxPredictor) else "pytorch"
        self.ref = ModelRef(name=self.bundle.name, version=weights_version(self.bundle.path), backend=backend)
        # The predictor reads and checks the bundle's calibration (temperature, refer threshold).
        self.temperature = self.predictor.temperature if self.bundle.config.extras.temperature is not None else None
        self.refer_threshold = self.predictor.refer_threshold
        # One PyTorch model serves Grad-CAM (hooks, gradients) and, without ONNX, predictions:
        # concurrent use would mix one request's activations into another's explanation.
        self.torch_lock = threading.Lock()
        # More simultaneous model runs than cores only adds context switches and memory.
        self.inference_slots = threading.BoundedSemaphore(settings.concurrency or max(1, os.cpu_count() or 1))
        self.gradcam, self.gradcam_missing_reason = _gradcam_function()

    def predict(self, image: Image.Image) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        if isinstance(self.predictor, OnnxPredictor):
            with self.inference_slots:
                probabilities = self.predictor.predict_images([image])[0]
        else:
            with self.torch_lock:
                probabilities = self.predictor.predict_images([image])[0]
        return probabilities, (time.perf_counter() - started) * 1000.0

    def explain(self, image: Image.Image, target: str | None, method: str) -> tuple[bytes, str]:
        if self.gradcam is None:
            raise UploadError(
                501, "explain_unavailable", f"explanations are not available: {self.gradcam_missing_reason}"
            )
        try:
            with self.torch_lock:
                overlay, explained = self.gradcam(self.bundle, image, target=target, method=method)
        except (BrainTumorError, ValueError) as error:
            raise UploadError(422, "cannot_explain", f"cannot explain this image: {error}") from None
        buffer = io.BytesIO()
        overlay.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), explained

    def model_card(self) -> dict[str, Any]:
        config = self.bundle.config
        training = config.training
        return {
            "model": self.ref.model_dump(),
            "class_names": self.bundle.class_names,
            "recipe": _public_recipe(config.recipe),
            "preprocessing": config.preprocessing.model_dump(mode="json"),
            # Validation-split numbers only: the official Testing split is for reports, never for the model.
            "metrics": {"validation": training.val_metrics or None},
            "training": training.model_dump(include={"n_train", "n_val", "epochs_run", "best_epoch"}),
            "temperature": self.temperature,
            "refer_threshold": self.refer_threshold,
            "created_utc": config.created_utc,
            "versions": config.versions,
            "explain_available": self.gradcam is not None,
            "disclaimer": DISCLAIMER,
        }


# --- the application -------------------------------------------------------------------------------


def _index_html() -> str:
    return resources.files("braintumor.serving").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(bundle_path: Path | str, settings: ServeSettings | None = None) -> FastAPI:
    """Build the service for one bundle. Raises :class:`BrainTumorError` when the bundle is unusable."""
    settings = settings or ServeSettings()
    service = ModelService(bundle_path, settings)
    page = _index_html()
    app = FastAPI(
        title="braintumor",
        version=service.ref.version,
        summary="Brain-tumour MRI classification (glioma, meningioma, no tumour, pituitary). " + DISCLAIMER,
    )
    app.state.service = service
    app.state.settings = settings
    key_header = APIKeyHeader(name=settings.api_key_header, auto_error=False, description="Only when configured.")

    def require_api_key(supplied: str | None = Depends(key_header)) -> None:
        if not settings.api_key_required:
            return
        expected = settings.api_key.get_secret_value().encode()  # type: ignore[union-attr]
        if supplied is None or not secrets.compare_digest(supplied.encode(), expected):
            raise UploadError(
                401, "unauthorised", f"this service needs a valid API key in the {settings.api_key_header} header"
            )

    @app.exception_handler(UploadError)
    async def _refused(request: Request, error: UploadError) -> JSONResponse:
        return JSONResponse(ErrorResponse(error=error.code, detail=error.detail).model_dump(), status_code=error.status)

    @app.exception_handler(Exception)
    async def _failed(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request %s %s failed", request.method, request.url.path)
        body = ErrorResponse(error="internal_error", detail="the server failed on this request; the failure is logged")
        return JSONResponse(body.model_dump(), status_code=500)

    async def receive(request: Request) -> tuple[DecodedUpload, float, float]:
        started = time.perf_counter()
        body = await read_limited(request.stream(), settings.max_upload_bytes, request.headers.get("content-length"))
        upload = upload_from_body(request.headers.get("content-type"), body)
        read_done = time.perf_counter()
        decoded = await run_in_threadpool(
            decode_upload, upload, allowed_formats=settings.allowed_formats, max_pixels=settings.max_pixels
        )
        return decoded, (read_done - started) * 1000.0, (time.perf_counter() - read_done) * 1000.0

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get(f"{API_PREFIX}/health")
    async def health() -> HealthResponse:
        """Liveness and what a client needs to know before uploading (no API key needed)."""
        return HealthResponse(
            status="ok",
            model=service.ref,
            api_key_required=settings.api_key_required,
            api_key_header=settings.api_key_header,
            max_upload_bytes=settings.max_upload_bytes,
            accepted_formats=list(settings.allowed_formats),
            explain_available=service.gradcam is not None,
        )

    @app.get(f"{API_PREFIX}/model", dependencies=[Depends(require_api_key)], responses={401: _ERRORS[401]})
    async def model_info() -> dict[str, Any]:
        """Class names, recipe, preprocessing and validation metrics of the served bundle."""
        return service.model_card()

    @app.post(
        f"{API_PREFIX}/predict",
        dependencies=[Depends(require_api_key)],
        openapi_extra=_UPLOAD_BODY,
        responses=_ERRORS,
    )
    async def predict(request: Request) -> PredictionResponse:
        """Class, probabilities, calibrated confidence and refer flag for one JPEG, PNG or DICOM image."""
        started = time.perf_counter()
        decoded, read_ms, decode_ms = await receive(request)
        probabilities, inference_ms = await run_in_threadpool(service.predict, decoded.image)
        index = int(np.argmax(probabilities))
        confidence = float(probabilities[index])
        threshold = service.refer_threshold
        return PredictionResponse(
            class_name=service.bundle.class_names[index],
            confidence=confidence,
            probabilities={name: float(p) for name, p in zip(service.bundle.class_names, probabilities, strict=True)},
            calibrated=service.temperature is not None,
            temperature=service.temperature,
            refer=None if threshold is None else confidence < threshold,
            refer_threshold=threshold,
            model=service.ref,
            image=ImageInfo(format=decoded.format, width=decoded.image.width, height=decoded.image.height),
            timing=Timing(
                read_ms=round(read_ms, 2),
                decode_ms=round(decode_ms, 2),
                inference_ms=round(inference_ms, 2),
                total_ms=round((time.perf_counter() - started) * 1000.0, 2),
            ),
        )

    @app.post(
        f"{API_PREFIX}/explain",
        dependencies=[Depends(require_api_key)],
        openapi_extra=_UPLOAD_BODY,
        response_class=Response,
        responses={
            **_ERRORS,
            200: {"content": {"image/png": {}}, "description": "Grad-CAM overlay (PNG)."},
            501: {"model": ErrorResponse, "description": "Explanations are not installed on this server."},
        },
    )
    async def explain(
        request: Request,
        target: str | None = Query(None, description="Class to explain (default: the predicted class)."),
        method: str = Query("gradcam", description="Attribution method passed to braintumor.explain."),
    ) -> Response:
        """Grad-CAM overlay PNG for the predicted class or ``target``; the class is in ``X-Explained-Class``."""
        if target is not None and target not in service.bundle.class_names:
            raise UploadError(
                422, "unknown_class", f"unknown class {target!r}: choose {readable_list(service.bundle.class_names)}"
            )
        if service.gradcam is None:
            raise UploadError(
                501, "explain_unavailable", f"explanations are not available: {service.gradcam_missing_reason}"
            )
        decoded, _, _ = await receive(request)
        png, explained = await run_in_threadpool(service.explain, decoded.image, target, method)
        return Response(png, media_type="image/png", headers={"X-Explained-Class": explained})

    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used for ``--workers`` > 1): bundle and settings from the environment."""
    bundle = os.environ.get(BUNDLE_ENV)
    if not bundle:
        raise BrainTumorError(f"${BUNDLE_ENV} is not set: start the service with `braintumor serve BUNDLE`")
    return create_app(bundle, ServeSettings.from_env())
