"""What the service answers, as pydantic models: they are also the OpenAPI schema at ``/docs``.

Example:
    >>> ErrorResponse(error="empty_upload", detail="the uploaded file is empty (0 bytes)").model_dump()
    {'error': 'empty_upload', 'detail': 'the uploaded file is empty (0 bytes)'}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

DISCLAIMER = "Research use only: not a medical device and not for diagnosis."


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


# The upload endpoints read the body themselves (see serving.uploads), so FastAPI cannot infer it:
# this is the request body their OpenAPI entries document.
UPLOAD_BODY: dict[str, Any] = {
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
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed request (e.g. broken multipart body)."},
    401: {"model": ErrorResponse, "description": "API key missing or wrong (only when one is configured)."},
    413: {"model": ErrorResponse, "description": "Upload over the size limit."},
    415: {"model": ErrorResponse, "description": "Content is not an accepted image type (sniffed, not trusted)."},
    422: {"model": ErrorResponse, "description": "Image cannot be decoded, is too large in pixels, or has no pixels."},
}
EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    **UPLOAD_ERRORS,
    200: {"content": {"image/png": {}}, "description": "Grad-CAM overlay (PNG)."},
    501: {"model": ErrorResponse, "description": "Explanations are not installed on this server."},
}
