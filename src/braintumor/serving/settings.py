"""Service settings: upload limits, accepted formats, API key and inference backend.

Settings come from the ``braintumor serve`` options or from the environment (the API key only from
the environment, so it never shows in a process list).

Example:
    >>> settings = ServeSettings(max_upload_bytes=1_000_000)
    >>> settings.max_upload_megabytes
    0.95
    >>> settings.api_key_required
    False
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from braintumor.errors import BrainTumorError

API_KEY_ENV = "BRAINTUMOR_API_KEY"
SETTINGS_ENV = "BRAINTUMOR_SERVE_SETTINGS"
BUNDLE_ENV = "BRAINTUMOR_SERVE_BUNDLE"
KNOWN_FORMATS = ("JPEG", "PNG", "DICOM", "BMP", "TIFF", "WEBP")
# The volume limits of braintumor.data.archives and braintumor.data.volume_core, written out rather than imported:
# importing braintumor.data loads torch, and `braintumor --help` reads these settings (a test keeps them equal).
DEFAULT_MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_MEMBERS = 2000
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_VOXELS = 64 * 1024 * 1024
DEFAULT_MAX_SLICES = 1000


class ServeSettingsError(BrainTumorError):
    """Service settings that cannot be used."""


class ServeSettings(BaseModel):
    """Everything that decides how the service treats a request, apart from the model itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    max_pixels: int = Field(
        25_000_000, ge=1, description="Largest image (width x height, all frames) decoded; larger ones get 422."
    )
    allowed_formats: tuple[str, ...] = Field(
        ("JPEG", "PNG", "DICOM"), description=f"Accepted content types, sniffed from the bytes: {KNOWN_FORMATS}."
    )
    api_key: SecretStr | None = Field(
        None, description=f"When set, requests need it in the header (env {API_KEY_ENV})."
    )
    api_key_header: str = Field("X-API-Key", min_length=1)
    backend: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="auto: onnxruntime when the bundle has model.onnx, else PyTorch."
    )
    max_volume_upload_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Largest /v1/predict/volume body (a .nii.gz or zip); larger get 413."
    )
    max_archive_bytes: int = Field(
        DEFAULT_MAX_ARCHIVE_BYTES, ge=1024, description="Most bytes a volume upload may expand to (zip or gzip)."
    )
    max_archive_members: int = Field(DEFAULT_MAX_MEMBERS, ge=1, description="Most files in an uploaded zip.")
    max_compression_ratio: float = Field(
        DEFAULT_MAX_RATIO, gt=1.0, description="Highest compression ratio of a zip member (higher: a zip bomb)."
    )
    max_volume_voxels: int = Field(DEFAULT_MAX_VOXELS, ge=1, description="Largest volume decoded, in voxels.")
    max_volume_slices: int = Field(DEFAULT_MAX_SLICES, ge=1, description="Most axial slices predicted per volume.")
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads per model run (default 1).")
    concurrency: int | None = Field(
        None, ge=1, description="Model runs at the same time (default: CPU cores); further requests wait."
    )

    @field_validator("allowed_formats")
    @classmethod
    def _known_formats(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        normalised = tuple(dict.fromkeys(name.strip().upper() for name in formats))
        unknown = [name for name in normalised if name not in KNOWN_FORMATS]
        if unknown or not normalised:
            raise ValueError(f"unknown or no image formats {unknown}: choose from {', '.join(KNOWN_FORMATS)}")
        return normalised

    @property
    def api_key_required(self) -> bool:
        return self.api_key is not None and bool(self.api_key.get_secret_value())

    @property
    def max_upload_megabytes(self) -> float:
        return round(self.max_upload_bytes / (1024 * 1024), 2)

    def to_env(self) -> str:
        """JSON for :data:`SETTINGS_ENV` (the API key is left out: it travels in :data:`API_KEY_ENV`)."""
        return self.model_dump_json(exclude={"api_key"})

    @classmethod
    def from_env(cls, **overrides: object) -> ServeSettings:
        """Settings from :data:`SETTINGS_ENV` (JSON) and :data:`API_KEY_ENV`, then ``overrides``."""
        values: dict[str, object] = {}
        raw = os.environ.get(SETTINGS_ENV)
        if raw:
            try:
                values.update(json.loads(raw))
            except json.JSONDecodeError as error:
                raise ServeSettingsError(f"${SETTINGS_ENV} is not valid JSON: {error}") from None
        if os.environ.get(API_KEY_ENV):
            values["api_key"] = os.environ[API_KEY_ENV]
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ServeSettingsError(f"invalid service settings: {problems}") from None
