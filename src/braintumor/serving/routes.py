"""The endpoints: the web page and ``/v1/health`` open to all, ``/v1/model``, ``/v1/predict``,
``/v1/predict/volume`` and ``/v1/explain`` behind the API key when one is configured.

Handlers find the :class:`~braintumor.serving.service.ModelService` in ``app.state.service``.
Decoding and inference run in the thread pool so the event loop keeps answering while a request
computes.

Example:
    >>> [route.path for route in public_router().routes]
    ['/', '/v1/health']
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader

from braintumor.inference.volume_outputs import FLAG_REASON
from braintumor.serving.schemas import (
    EXPLAIN_RESPONSES,
    UPLOAD_BODY,
    UPLOAD_ERRORS,
    VOLUME_BODY,
    VOLUME_ERRORS,
    ErrorResponse,
    HealthResponse,
    ImageInfo,
    PredictionResponse,
    SliceInfo,
    StudyInfo,
    Timing,
    VolumeInfo,
    VolumeResponse,
)
from braintumor.serving.service import FlaggedInput, ModelService
from braintumor.serving.settings import ServeSettings
from braintumor.serving.uploads import (
    DecodedUpload,
    UploadError,
    decode_upload,
    decode_volume_upload,
    read_limited,
    readable_list,
    upload_from_body,
    volume_request,
)

API_PREFIX = "/v1"


def get_service(request: Request) -> ModelService:
    """The service :func:`~braintumor.serving.app.create_app` put in ``app.state``."""
    return request.app.state.service


Service = Annotated[ModelService, Depends(get_service)]


def api_key_check(settings: ServeSettings) -> Callable[..., None]:
    """A dependency that refuses a request without the configured key (401); a no-op without one.

    The header scheme is built from ``settings`` so ``/docs`` names the header this server reads.
    """
    key_header = APIKeyHeader(name=settings.api_key_header, auto_error=False, description="Only when configured.")

    def require_api_key(supplied: str | None = Depends(key_header)) -> None:
        if not settings.api_key_required:
            return
        expected = settings.api_key.get_secret_value().encode()  # type: ignore[union-attr]
        if supplied is None or not secrets.compare_digest(supplied.encode(), expected):
            raise UploadError(
                401, "unauthorised", f"this service needs a valid API key in the {settings.api_key_header} header"
            )

    return require_api_key


async def receive(request: Request, settings: ServeSettings) -> tuple[DecodedUpload, float, float]:
    """The decoded upload, and the milliseconds spent reading and decoding it."""
    started = time.perf_counter()
    body = await read_limited(request.stream(), settings.max_upload_bytes, request.headers.get("content-length"))
    upload = upload_from_body(request.headers.get("content-type"), body)
    read_done = time.perf_counter()
    decoded = await run_in_threadpool(
        decode_upload, upload, allowed_formats=settings.allowed_formats, max_pixels=settings.max_pixels
    )
    return decoded, (read_done - started) * 1000.0, (time.perf_counter() - read_done) * 1000.0


def index_html() -> str:
    """The web page (self-contained: no CDN), read once when the app is built."""
    return resources.files("braintumor.serving").joinpath("static/index.html").read_text(encoding="utf-8")


async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.index_html)


async def health(service: Service) -> HealthResponse:
    """Liveness and what a client needs to know before uploading (no API key needed)."""
    settings = service.settings
    return HealthResponse(
        status="ok",
        model=service.ref,
        api_key_required=settings.api_key_required,
        api_key_header=settings.api_key_header,
        max_upload_bytes=settings.max_upload_bytes,
        max_volume_upload_bytes=settings.max_volume_upload_bytes,
        accepted_formats=list(settings.allowed_formats),
        explain_available=service.gradcam is not None,
        guard_available=service.guard_available,
    )


async def model_info(service: Service) -> dict[str, Any]:
    """Class names, recipe, preprocessing, validation metrics and input guard (``null``: none) of the bundle."""
    return service.model_card()


async def predict(request: Request, service: Service) -> PredictionResponse:
    """Class, probabilities, calibrated confidence, refer flag and input-guard verdict for one JPEG, PNG or DICOM
    image. A flagged image gets no diagnosis: ``class_name`` is null, ``flagged`` is true and ``flag_reason`` says
    why; the probabilities are still returned, but they are not a diagnosis (``warning`` says so in plain words)."""
    started = time.perf_counter()
    decoded, read_ms, decode_ms = await receive(request, service.settings)
    probabilities, check, inference_ms = await run_in_threadpool(service.predict, decoded.image)
    best = int(np.argmax(probabilities))
    confidence = float(probabilities[best])
    threshold = service.refer_threshold
    return PredictionResponse(
        class_name=None if check.flagged else service.class_names[best],
        confidence=confidence,
        probabilities={name: float(p) for name, p in zip(service.class_names, probabilities, strict=True)},
        calibrated=service.temperature is not None,
        temperature=service.temperature,
        refer=None if threshold is None else confidence < threshold,
        refer_threshold=threshold,
        **check.model_dump(),
        model=service.ref,
        image=ImageInfo(format=decoded.format, width=decoded.image.width, height=decoded.image.height),
        timing=Timing(
            read_ms=round(read_ms, 2),
            decode_ms=round(decode_ms, 2),
            inference_ms=round(inference_ms, 2),
            total_ms=round((time.perf_counter() - started) * 1000.0, 2),
        ),
    )


async def explain(
    request: Request,
    service: Service,
    target: str | None = Query(None, description="Class to explain (default: the predicted class)."),
    method: str = Query("gradcam", description="Attribution method passed to braintumor.explain."),
    explain_flagged: bool = Query(
        False, description="Draw the heat map even when the input guard flags the image (then not a diagnosis)."
    ),
) -> Response:
    """Grad-CAM overlay PNG for the predicted class or ``target``; the class is in ``X-Explained-Class``, the
    input guard's verdict in ``X-Flagged``, ``X-Flag-Reason``, ``X-Out-Of-Distribution`` (true, false or none),
    ``X-OOD-Score`` and ``X-Input-Warning``. A flagged image has no diagnosis to explain: it is answered with 409
    (``flagged_input``, the verdict in the headers) unless ``explain_flagged=true``."""
    if target is not None and target not in service.class_names:
        raise UploadError(
            422, "unknown_class", f"unknown class {target!r}: choose {readable_list(service.class_names)}"
        )
    # Refuse before reading the upload: without Grad-CAM no image can be explained.
    service.require_gradcam()
    decoded, _, _ = await receive(request, service.settings)
    try:
        png, explained, check = await run_in_threadpool(
            service.explain, decoded.image, target, method, explain_flagged=explain_flagged
        )
    except FlaggedInput as flagged:
        body = ErrorResponse(error="flagged_input", detail=flagged.detail()).model_dump()
        return JSONResponse(body, status_code=409, headers=flagged.check.headers())
    return Response(png, media_type="image/png", headers={"X-Explained-Class": explained, **check.headers()})


def _slice_info(item: Any) -> SliceInfo:
    """One slice under the public rule: a slice the input guard flagged has no class and says why."""
    flagged = item.out_of_distribution
    fields = {**item.__dict__, "class_name": None if flagged else item.class_name}
    fields["flag_reason"] = (item.flag_reason or FLAG_REASON) if flagged else None
    return SliceInfo(**fields, flagged=flagged)


def _volume_response(result: Any, found: str, filename: str, png: bytes | None, kind: str | None) -> dict[str, Any]:
    """The fields of :class:`VolumeResponse` that come from the volume and its prediction."""
    described = result.volume.describe()
    info = {key: described[key] for key in VolumeInfo.model_fields if key in described and key != "format"}
    return {
        "study": StudyInfo(**result.study.__dict__),
        "slices": [_slice_info(item) for item in result.slices],
        "volume": VolumeInfo(**info, format=found, filename=filename),
        "warnings": list(result.volume.warnings),
        "class_names": result.class_names,
        "peak_image_png": None if png is None else base64.b64encode(png).decode("ascii"),
        "peak_image_kind": kind,
    }


async def predict_volume(
    request: Request,
    service: Service,
    series: str | None = Query(None, description="SeriesInstanceUID to read when the zip holds several series."),
    volume: int | None = Query(None, ge=0, description="Which volume of a 4D NIfTI (0-based)."),
    peak_image: bool = Query(True, description="Include the peak slice as a base64 PNG (Grad-CAM when available)."),
) -> VolumeResponse:
    """Per-slice probabilities and input-guard verdicts and a study-level finding for a .nii/.nii.gz file or a zip
    of one DICOM series. Parsed in memory under the archive limits (size, members, compression ratio, no paths
    outside the archive, no symlinks). The finding's rule is in ``study.rule``; it is not a diagnosis."""
    started = time.perf_counter()
    settings = service.settings
    body = await read_limited(request.stream(), settings.max_volume_upload_bytes, request.headers.get("content-length"))
    upload = upload_from_body(request.headers.get("content-type"), body)
    read_done = time.perf_counter()
    parsed, found = await run_in_threadpool(decode_volume_upload, upload, volume_request(settings, series, volume))
    decoded = time.perf_counter()
    result = await run_in_threadpool(service.predict_volume, parsed)
    inferred = time.perf_counter()
    png, kind = await run_in_threadpool(service.peak_image, result) if peak_image else (None, None)
    return VolumeResponse(
        **_volume_response(result, found, upload.filename, png, kind),
        model=service.ref,
        timing=Timing(
            read_ms=round((read_done - started) * 1000.0, 2),
            decode_ms=round((decoded - read_done) * 1000.0, 2),
            inference_ms=round((inferred - decoded) * 1000.0, 2),
            total_ms=round((time.perf_counter() - started) * 1000.0, 2),
        ),
    )


def public_router() -> APIRouter:
    """The web page and ``/v1/health``: what anyone may see before uploading."""
    router = APIRouter()
    router.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse, include_in_schema=False)
    router.add_api_route(f"{API_PREFIX}/health", health, methods=["GET"])
    return router


def protected_router(settings: ServeSettings) -> APIRouter:
    """``/v1/model``, ``/v1/predict`` and ``/v1/explain``, each needing the API key when one is set."""
    router = APIRouter(dependencies=[Depends(api_key_check(settings))])
    router.add_api_route(f"{API_PREFIX}/model", model_info, methods=["GET"], responses={401: UPLOAD_ERRORS[401]})
    router.add_api_route(
        f"{API_PREFIX}/predict", predict, methods=["POST"], openapi_extra=UPLOAD_BODY, responses=UPLOAD_ERRORS
    )
    router.add_api_route(
        f"{API_PREFIX}/predict/volume",
        predict_volume,
        methods=["POST"],
        openapi_extra=VOLUME_BODY,
        responses=VOLUME_ERRORS,
    )
    router.add_api_route(
        f"{API_PREFIX}/explain",
        explain,
        methods=["POST"],
        openapi_extra=UPLOAD_BODY,
        response_class=Response,
        responses=EXPLAIN_RESPONSES,
    )
    return router
