"""Reading an upload safely: bounded in memory, parsed without temporary files, content sniffed.

Every refusal is an :class:`UploadError` carrying the HTTP status and a message meant for a person:
413 for a body over the limit (checked against Content-Length first, then counted while reading, so
an oversized body is never held whole), 415 for content that is not an accepted image whatever its
name or declared type, 400 for a malformed multipart body, 422 for an image that cannot be decoded.

Example:
    >>> sniff_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8))
    'PNG'
    >>> sniff_format(b"hello") is None
    True
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from braintumor.data.images import decode_image_bytes, is_dicom
from braintumor.errors import ImageDecodeError

# Leading bytes of the formats Pillow reads; the DICOM magic sits at byte 128 (see is_dicom).
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
RAW_CONTENT_TYPES = ("image/", "application/dicom", "application/octet-stream")


class UploadError(Exception):
    """A request the service refuses, with its HTTP status, a short code and a plain-words message."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Upload:
    """The uploaded file's bytes and the name the client gave it (for messages only)."""

    data: bytes
    filename: str


@dataclass
class _Part:
    """One part of a multipart body while it is parsed."""

    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class DecodedUpload:
    image: Image.Image
    format: str
    filename: str


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes really hold (by their magic numbers), or None."""
    if is_dicom(data):
        return "DICOM"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def readable_list(names: tuple[str, ...] | list[str]) -> str:
    """``("JPEG", "PNG", "DICOM")`` as ``"JPEG, PNG or DICOM"``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" or {names[-1]}"


def too_large(limit: int) -> UploadError:
    return UploadError(
        413, "upload_too_large", f"the upload is larger than this service accepts ({limit / 1024 / 1024:.1f} MB)"
    )


async def read_limited(chunks: AsyncIterator[bytes], limit: int, declared_length: str | None) -> bytes:
    """Collect a request body of at most ``limit`` bytes; refuse a larger one as soon as it shows."""
    if declared_length is not None:
        try:
            if int(declared_length) > limit:
                raise too_large(limit)
        except ValueError:
            raise UploadError(400, "bad_request", "the Content-Length header is not a number") from None
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise too_large(limit)
        body.extend(chunk)
    return bytes(body)


def parse_multipart(content_type: str, body: bytes, field_name: str = "file") -> Upload:
    """The file part of a ``multipart/form-data`` body, parsed in memory (no temporary files).

    The part named ``field_name`` is used; failing that, the first part that carries a file name.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "bad_multipart", "the multipart upload has no boundary in its Content-Type")
    parts: list[_Part] = []
    header_name, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1].headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data.extend(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:
        raise UploadError(400, "bad_multipart", f"the multipart upload is malformed: {error}") from None
    fallback: Upload | None = None
    for part in parts:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        upload = Upload(bytes(part.data), filename.decode("utf-8", "replace") if filename is not None else name)
        if name == field_name:
            return upload
        if filename is not None and fallback is None:
            fallback = upload
    if fallback is not None:
        return fallback
    raise UploadError(422, "no_file", f"the upload has no file: send it as the form field {field_name!r}")


def upload_from_body(content_type: str | None, body: bytes) -> Upload:
    """A multipart form's file part, or the raw body for image/DICOM/octet-stream requests."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == "multipart/form-data":
        return parse_multipart(content_type or "", body)
    return Upload(body, "upload")


def decode_upload(upload: Upload, *, allowed_formats: tuple[str, ...], max_pixels: int) -> DecodedUpload:
    """Sniff and decode an upload to an RGB image, or raise :class:`UploadError` (415 or 422)."""
    if not upload.data:
        raise UploadError(422, "empty_upload", "the uploaded file is empty (0 bytes)")
    found = sniff_format(upload.data)
    accepted = readable_list(allowed_formats)
    if found is None:
        raise UploadError(
            415, "unsupported_media_type", f"the file is not an image this service reads: send {accepted}"
        )
    if found not in allowed_formats:
        raise UploadError(
            415, "unsupported_media_type", f"the file is a {found} image; this service accepts {accepted}"
        )
    try:
        image = decode_image_bytes(upload.data, upload.filename, max_pixels=max_pixels)
    except ImageDecodeError as error:
        raise UploadError(422, "undecodable_image", f"the {found} file cannot be used: {error.reason}") from None
    return DecodedUpload(image, found, upload.filename)


def sniff_volume_format(data: bytes) -> str | None:
    """``ZIP``, ``NIFTI`` (gzipped or not) or ``DICOM`` for a volume upload, by content; None otherwise.

    Example:
        >>> sniff_volume_format(b"PK\\x03\\x04" + bytes(30)), sniff_volume_format(b"\\x1f\\x8b" + bytes(30))
        ('ZIP', 'NIFTI')
    """
    from braintumor.data.archives import is_zip
    from braintumor.data.nifti import GZIP_MAGIC, nifti_version

    if is_zip(data):
        return "ZIP"
    if data[:2] == GZIP_MAGIC or nifti_version(data) is not None:
        return "NIFTI"
    return "DICOM" if is_dicom(data) else None


def volume_request(settings: Any, series: str | None, volume_index: int | None) -> Any:
    """The :class:`~braintumor.data.volumes.VolumeRequest` of an upload under the service's limits."""
    from braintumor.data.archives import ArchiveLimits
    from braintumor.data.volumes import VolumeLimits, VolumeRequest

    return VolumeRequest(
        series_uid=series,
        volume_index=volume_index,
        limits=VolumeLimits(max_voxels=settings.max_volume_voxels, max_slices=settings.max_volume_slices),
        archive=ArchiveLimits(
            max_total_bytes=settings.max_archive_bytes,
            max_members=settings.max_archive_members,
            max_ratio=settings.max_compression_ratio,
        ),
    )


def decode_volume_upload(upload: Upload, request: Any) -> tuple[Any, str]:
    """The upload as a :class:`~braintumor.data.volume_core.Volume` and its sniffed format, or an
    :class:`UploadError`: 415 for content that is no volume, 422 naming the reason for anything else."""
    from braintumor.data.archives import ArchiveError
    from braintumor.data.volume_core import SeriesChoiceError
    from braintumor.data.volumes import load_volume_bytes

    if not upload.data:
        raise UploadError(422, "empty_upload", "the uploaded file is empty (0 bytes)")
    found = sniff_volume_format(upload.data)
    if found is None:
        raise UploadError(
            415,
            "unsupported_media_type",
            "the file is not a volume: send a .nii/.nii.gz file or a zip of one DICOM series",
        )
    try:
        return load_volume_bytes(upload.data, upload.filename, request), found
    except SeriesChoiceError as error:
        raise UploadError(422, "choose_series", f"the upload {error.reason}") from None
    except ArchiveError as error:
        raise UploadError(422, "unsafe_archive", f"the zip cannot be used: {error.reason}") from None
    except ImageDecodeError as error:
        raise UploadError(422, "unusable_volume", f"the {found} upload cannot be used: {error.reason}") from None
