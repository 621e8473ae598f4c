"""Safe image decoding: every failure becomes an :class:`ImageDecodeError` naming the file and reason.

The content decides the format, never the file name: a PNG named ``.jpg`` loads. Dimensions are
checked before pixels are decoded, so a decompression bomb is refused without allocating it.

Example:
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("L", (8, 6), 128).save(buffer, format="PNG")
    >>> decode_image_bytes(buffer.getvalue(), "grey.png").size
    (8, 6)
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from braintumor.errors import ImageDecodeError

# 50 megapixels: far above any MRI slice, far below what would exhaust memory.
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DICOM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class SkippedFile:
    """A file left out of a run, with the reason a person can act on."""

    path: str
    reason: str


def is_dicom(data: bytes) -> bool:
    """True when ``data`` carries the DICOM preamble magic ``DICM`` at byte 128."""
    return len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def _reason(context: str, error: BaseException) -> str:
    detail = str(error) or type(error).__name__
    if "truncated" in detail.lower():
        return f"truncated or corrupt image data ({detail})"
    return f"{context}: {detail}"


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; high-bit-depth greys are min-max scaled, not clipped."""
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "F"}:
        array = np.asarray(image, dtype=np.float32)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, the background of an MRI slice.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def decode_image_bytes(
    data: bytes,
    source: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode JPEG/PNG/BMP/TIFF (or DICOM, see :mod:`braintumor.data.dicom`) bytes to an RGB image."""
    if not data:
        raise ImageDecodeError(source, "empty file (0 bytes)")
    if is_dicom(data):
        from braintumor.data.dicom import decode_dicom_bytes

        return decode_dicom_bytes(data, source, max_pixels=max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(source, "not an image (unrecognised content)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageDecodeError(source, f"image too large: {error}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageDecodeError(source, _reason("cannot read image header", error)) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(source, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(source, f"image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(source, _reason("cannot decode image data", error)) from None
    try:
        return _to_rgb(image)
    except (OSError, ValueError) as error:
        raise ImageDecodeError(source, f"cannot convert image mode {image.mode!r} to RGB: {error}") from None


def read_file_bytes(path: Path | str, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """Read a file whole, refusing unreadable or oversized files with an :class:`ImageDecodeError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_file_bytes:
            raise ImageDecodeError(path, f"file is {size:,} bytes, over the limit of {max_file_bytes:,} bytes")
        return path.read_bytes()
    except OSError as error:
        raise ImageDecodeError(path, f"cannot read file: {error.strerror or error}") from None


def load_image_rgb(
    path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Image.Image:
    """Read one file from disk and decode it to RGB, raising :class:`ImageDecodeError` on any problem."""
    data = read_file_bytes(path, max_file_bytes=max_file_bytes)
    return decode_image_bytes(data, path, max_pixels=max_pixels)
