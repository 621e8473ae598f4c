"""What the service answers, as pydantic models: they are also the OpenAPI schema at ``/docs``.

Example:
    >>> ErrorResponse(error="empty_upload", detail="the uploaded file is empty (0 bytes)").model_dump()
    {'error': 'empty_upload', 'detail': 'the uploaded file is empty (0 bytes)'}
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from braintumor.inference.volume_outputs import FLAG_REASON

DISCLAIMER = "Research use only: not a medical device and not for diagnosis."
# What a flagged upload tells the user, next to the class probabilities that are still returned.
OOD_WARNING = (
    "This image does not look like the brain MRI slices the model was trained on; "
    "the class probabilities are not a diagnosis."
)
# An image is flagged when its ood_score is above this (braintumor.guard.spec.SCORE_DEFINITION).
OOD_FLAG_ABOVE = 1.0
# /v1/explain answers with a PNG: the input guard's verdict travels in these headers.
OOD_HEADER = "X-Out-Of-Distribution"
OOD_SCORE_HEADER = "X-OOD-Score"
WARNING_HEADER = "X-Input-Warning"
FLAGGED_HEADER = "X-Flagged"
FLAG_REASON_HEADER = "X-Flag-Reason"
_OOD_DESCRIPTION = (
    "True when the input guard says the image is not like the brain MRI slices the model was trained on "
    "(the classes are then not a diagnosis); null when the bundle has no input guard."
)
_SCORE_DESCRIPTION = (
    f"The input guard's score: 0 is a typical validation image, above {OOD_FLAG_ABOVE:g} is flagged; "
    "null without a guard (or when it could not be computed: the image is then flagged)."
)
_WARNING_DESCRIPTION = "Plain-words warning when the image is flagged out of distribution; null otherwise."
_FLAGGED_DESCRIPTION = (
    "True when the input guard flagged the image: it then gets no diagnosis (class_name is null) and flag_reason "
    "says why; null when the bundle has no input guard."
)
_FLAG_REASON_DESCRIPTION = f"Why the image was flagged (e.g. {FLAG_REASON!r}); null when it was not."
_CLASS_DESCRIPTION = "The most probable class; null when the input guard flagged the image (no diagnosis)."
_PROBABILITIES_DESCRIPTION = (
    "Probability of every class. For a flagged image they are the network's output on an input it should not "
    "read: not a diagnosis."
)


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
    class_name: str | None = Field(description=_CLASS_DESCRIPTION)
    confidence: float = Field(
        description="The top class probability (temperature-scaled when calibrated); not a diagnosis when flagged."
    )
    probabilities: dict[str, float] = Field(description=_PROBABILITIES_DESCRIPTION)
    calibrated: bool = Field(description="True when the bundle carries a temperature and it was applied.")
    temperature: float | None = None
    refer: bool | None = Field(
        None, description="True when confidence is below the bundle's refer threshold; null when it has none."
    )
    refer_threshold: float | None = None
    flagged: bool | None = Field(None, description=_FLAGGED_DESCRIPTION)
    flag_reason: str | None = Field(None, description=_FLAG_REASON_DESCRIPTION)
    out_of_distribution: bool | None = Field(None, description=_OOD_DESCRIPTION + " The same as flagged.")
    ood_score: float | None = Field(None, description=_SCORE_DESCRIPTION)
    warning: str | None = Field(None, description=_WARNING_DESCRIPTION)
    model: ModelRef
    image: ImageInfo
    timing: Timing
    disclaimer: str = DISCLAIMER


class InputCheck(BaseModel):
    """The input guard's verdict on one image: the guard fields of :class:`PredictionResponse`.

    A flagged image gets no diagnosis: ``flagged`` and ``flag_reason`` say so (``out_of_distribution`` is the
    same verdict under its older name).

    Example:
        >>> InputCheck.from_score(3.5).model_dump()["out_of_distribution"], InputCheck.from_score(None).warning
        (True, None)
        >>> InputCheck.from_score(3.5).flag_reason
        'unlike the training images'
        >>> InputCheck.from_score(0.2).headers()
        {'X-Out-Of-Distribution': 'false', 'X-OOD-Score': '0.2000', 'X-Flagged': 'false'}
        >>> InputCheck.from_score(float("nan")).flagged
        True
    """

    flagged: bool | None = Field(None, description=_FLAGGED_DESCRIPTION)
    flag_reason: str | None = Field(None, description=_FLAG_REASON_DESCRIPTION)
    out_of_distribution: bool | None = Field(None, description=_OOD_DESCRIPTION)
    ood_score: float | None = Field(None, description=_SCORE_DESCRIPTION)
    warning: str | None = Field(None, description=_WARNING_DESCRIPTION)

    @classmethod
    def from_score(cls, ood_score: float | None, reason: str | None = None) -> InputCheck:
        """The verdict for an ``ood_score`` (None: the bundle has no guard, so nothing is known); ``reason`` is the
        guard's words for a flagged image (default :data:`FLAG_REASON`). A reason given with a score below the
        threshold still flags the image (its DICOM header names another body region)."""
        if ood_score is None:
            return cls()
        finite = math.isfinite(ood_score)  # nothing vouches for a NaN score; JSON has no NaN or infinity
        flagged = bool(ood_score > OOD_FLAG_ABOVE or reason is not None) if finite else True
        return cls(
            flagged=flagged,
            flag_reason=(reason or FLAG_REASON) if flagged else None,
            out_of_distribution=flagged,
            ood_score=float(ood_score) if finite else None,
            warning=OOD_WARNING if flagged else None,
        )

    def headers(self) -> dict[str, str]:
        """The verdict as the ``/v1/explain`` response headers (``none`` without a guard)."""
        if self.out_of_distribution is None:
            return {OOD_HEADER: "none"}
        headers = {OOD_HEADER: "true" if self.out_of_distribution else "false"}
        if self.ood_score is not None:
            headers[OOD_SCORE_HEADER] = f"{self.ood_score:.4f}"
        if self.warning is not None:
            headers[WARNING_HEADER] = self.warning
        headers[FLAGGED_HEADER] = "true" if self.flagged else "false"
        if self.flag_reason is not None:
            headers[FLAG_REASON_HEADER] = self.flag_reason
        return headers


class GuardInfo(BaseModel):
    """What ``/v1/model`` says about the bundle's input guard (``"guard": null`` when it has none)."""

    detector: str = Field(description="Feature detector on the penultimate features (and logits).")
    quantile: float = Field(description="Validation quantile that set each threshold.")
    validation_flag_rate: float = Field(description="Share of validation images the guard flags.")
    n_train: int
    n_val: int
    flag_above: float = Field(OOD_FLAG_ABOVE, description="An image is flagged when its ood_score is above this.")
    definition: str = Field(description="How ood_score is built.")


class ErrorResponse(BaseModel):
    error: str = Field(description="Short machine-readable code.")
    detail: str = Field(description="What went wrong, in plain words.")


class HealthResponse(BaseModel):
    status: str
    model: ModelRef
    api_key_required: bool
    api_key_header: str
    max_upload_bytes: int
    max_volume_upload_bytes: int | None = Field(None, description="Largest /v1/predict/volume upload.")
    accepted_formats: list[str]
    explain_available: bool
    guard_available: bool = Field(
        False, description="Whether uploads are checked by an input guard (out_of_distribution is null without one)."
    )
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
    200: {
        "content": {"image/png": {}},
        "description": "Grad-CAM overlay (PNG); the input guard's verdict is in the headers.",
        "headers": {
            "X-Explained-Class": {"description": "The class explained.", "schema": {"type": "string"}},
            OOD_HEADER: {"description": "true, false, or none (no input guard).", "schema": {"type": "string"}},
            OOD_SCORE_HEADER: {
                "description": _SCORE_DESCRIPTION + " Absent without a guard.",
                "schema": {"type": "number"},
            },
            WARNING_HEADER: {
                "description": _WARNING_DESCRIPTION + " Absent when not flagged.",
                "schema": {"type": "string"},
            },
            FLAGGED_HEADER: {
                "description": "true when the input guard flagged the image (drawn only with explain_flagged=true: "
                "the overlay is then not a diagnosis); absent without a guard.",
                "schema": {"type": "string"},
            },
            FLAG_REASON_HEADER: {"description": _FLAG_REASON_DESCRIPTION, "schema": {"type": "string"}},
        },
    },
    409: {
        "model": ErrorResponse,
        "description": "The input guard flagged the image (error flagged_input): no heat map is drawn for an image "
        "with no diagnosis unless asked with explain_flagged=true. The verdict is in the headers.",
    },
    501: {"model": ErrorResponse, "description": "Explanations are not installed on this server."},
}


class SliceInfo(BaseModel):
    """One axial slice of a volume (inferior to superior)."""

    index: int
    position_mm: float | None = Field(None, description="Height of the slice centre (patient superior axis, mm).")
    class_name: str | None = Field(description=_CLASS_DESCRIPTION)
    probabilities: dict[str, float] = Field(description=_PROBABILITIES_DESCRIPTION)
    flagged: bool | None = Field(None, description=_FLAGGED_DESCRIPTION)
    flag_reason: str | None = Field(None, description=_FLAG_REASON_DESCRIPTION)
    out_of_distribution: bool | None = Field(None, description=_OOD_DESCRIPTION + " The same as flagged.")
    ood_score: float | None = Field(None, description=_SCORE_DESCRIPTION)
    sop_instance_uid: str | None = Field(
        None, description="The DICOM image this slice is (null: NIfTI or reformatted)."
    )
    frame_number: int | None = None


class StudyInfo(BaseModel):
    """The study-level finding and the rule that gave it."""

    finding: str = Field(description="A tumour class, no_tumor, or indeterminate (too few slices pass the guard).")
    reason: str
    rule: str = Field(description="The study rule in words; its parameters are fixed a priori, not tuned.")
    threshold: float
    min_consecutive: int
    peak_slice: int | None = Field(
        None, description="Slice with the finding's highest probability (no_tumor: the most tumour-like)."
    )
    peak_probability: float | None = None
    run: list[int] | None = Field(None, description="First and last slice of the qualifying run.")
    per_class: dict[str, dict[str, Any]] = Field(default_factory=dict)


class VolumeInfo(BaseModel):
    format: str = Field(description="NIFTI, ZIP (a DICOM series) or DICOM (multi-frame), sniffed from the content.")
    filename: str
    n_slices: int
    shape: list[int]
    spacing_mm: list[float] | None = None
    acquisition_orientation: str
    series_uid: str | None = None
    study_uid: str | None = None
    series_description: str | None = None


class VolumeResponse(BaseModel):
    study: StudyInfo
    slices: list[SliceInfo]
    volume: VolumeInfo
    warnings: list[str] = Field(description="Skipped files, missing slices, the 4D volume used...")
    class_names: list[str]
    peak_image_png: str | None = Field(
        None, description="Base64 PNG of the peak slice (with Grad-CAM when explanations are available)."
    )
    peak_image_kind: str | None = Field(None, description="gradcam or plain.")
    model: ModelRef
    timing: Timing
    disclaimer: str = DISCLAIMER


VOLUME_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A .nii/.nii.gz file or a zip of one DICOM series (or a multi-frame DICOM), as the form "
        "field `file` or the raw body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
VOLUME_ERRORS: dict[int | str, dict[str, Any]] = {
    **UPLOAD_ERRORS,
    415: {"model": ErrorResponse, "description": "Content is not a NIfTI file, a zip or a DICOM file."},
    422: {
        "model": ErrorResponse,
        "description": "Unusable volume: several series (choose with ?series=UID), a 4D NIfTI without ?volume=N, "
        "a 2D or 5D NIfTI, an unsafe archive (zip bomb, paths outside it, symlinks), truncated or pixel-less DICOM.",
    },
}
