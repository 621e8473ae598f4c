"""DICOM decoding with pydicom: rescale slope/intercept, VOI LUT or window, MONOCHROME1 inversion.

Grey images go through the standard display pipeline: the modality LUT (rescale slope and
intercept), then the VOI LUT or the window centre/width, whose output range (not the pixels' own
range) is mapped to 0..255, then inversion where the header says MONOCHROME1. Without a VOI the
modality values are scaled from their minimum to their maximum. Sizes are checked from the header
before any pixel is decoded, so a file claiming a huge image costs nothing.

pydicom is an optional dependency (``pip install braintumor[serve]``); without it a DICOM file
gets a clear error instead of an import traceback.

Example:
    >>> import io
    >>> import numpy as np
    >>> from pydicom.dataset import Dataset, FileMetaDataset
    >>> from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
    >>> ds = Dataset()
    >>> ds.file_meta = FileMetaDataset()
    >>> ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    >>> ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    >>> ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    >>> ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 6, 1, "MONOCHROME2"
    >>> ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    >>> ds.PixelData = np.arange(24, dtype=np.uint16).reshape(4, 6).tobytes()
    >>> buffer = io.BytesIO()
    >>> ds.save_as(buffer, enforce_file_format=True)
    >>> decode_dicom_bytes(buffer.getvalue(), "slice.dcm").size
    (6, 4)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from braintumor.errors import ImageDecodeError

# Where a decoded image carries the header gate's flag reason (``image.info[HEADER_FLAG_KEY]``).
HEADER_FLAG_KEY = "header_flag"
# Same default as braintumor.data.images.DEFAULT_MAX_PIXELS (not imported: images imports this module lazily).
DEFAULT_MAX_PIXELS = 50_000_000


def _voi(values: np.ndarray, dataset: Any) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the VOI LUT (preferred, as pydicom does) or the window; return values and their output range."""
    from pydicom.pixels import apply_voi, apply_windowing

    if dataset.get("VOILUTSequence"):
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        # A VOI LUT is indexed by stored values: the modality output must be whole numbers here.
        return apply_voi(np.rint(values).astype(np.int64), dataset), (0.0, float(2**bits - 1))
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        # The window's output range is what pydicom maps values far outside the window to.
        with np.errstate(over="ignore"):
            bounds = apply_windowing(np.array([-1e30, 1e30]), dataset)
        return apply_windowing(values, dataset), (float(bounds.min()), float(bounds.max()))
    return values, None


def window_to_uint8(values: np.ndarray, low: float, high: float, *, invert: bool = False) -> np.ndarray:
    """Map ``low..high`` to 0..255 (clipped), the last step of the display pipeline; also used for NIfTI volumes.

    Example:
        >>> window_to_uint8(np.array([0.0, 5.0, 10.0, 20.0]), 0.0, 10.0).tolist()
        [0, 128, 255, 255]
        >>> window_to_uint8(np.array([0.0, 10.0]), 0.0, 10.0, invert=True).tolist()
        [255, 0]
    """
    values = np.asarray(values, dtype=np.float64)
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(values)
    if invert:
        scaled = 1.0 - scaled
    return (scaled * 255.0).round().astype(np.uint8)


def _grey_to_rgb(frame: np.ndarray, dataset: Any, photometric: str) -> Image.Image:
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(frame, dataset), dtype=np.float64)
    values, output_range = _voi(values, dataset)
    values = np.asarray(values, dtype=np.float64)
    low, high = output_range if output_range is not None else (float(values.min()), float(values.max()))
    # MONOCHROME1 means high values are dark.
    grey = window_to_uint8(values, low, high, invert=photometric == "MONOCHROME1")
    return Image.fromarray(grey, mode="L").convert("RGB")


def display_frame(frame: np.ndarray, dataset: Any) -> Image.Image:
    """One stored frame through the display pipeline (modality LUT, VOI, MONOCHROME1, colour) to 8-bit RGB.

    ``dataset`` supplies the display attributes (a whole file's header, or a per-frame view of an
    enhanced multi-frame file). Raises ``ValueError``/``KeyError``-style errors from pydicom for an
    inconsistent LUT or window; :func:`dicom_frames` turns those into an :class:`ImageDecodeError`.
    """
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric.startswith("MONOCHROME"):
        return _grey_to_rgb(frame, dataset, photometric)
    return _colour_to_rgb(frame, dataset, photometric)


def _colour_to_rgb(frame: np.ndarray, dataset: Any, photometric: str) -> Image.Image:
    from pydicom.pixels import apply_color_lut

    array = np.asarray(apply_color_lut(frame, dataset) if photometric == "PALETTE COLOR" else frame)
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = ((array - low) / (high - low) * 255.0).round() if high > low else np.zeros_like(array)
        array = array.astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _header_int(dataset: Any, keyword: str, default: int) -> int:
    try:
        return int(dataset.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def gate_header(dataset: Any, source: str | Path) -> str | None:
    """The DICOM header gate (:mod:`braintumor.data.dicom_header`) on one file: a refusal raises
    :class:`~braintumor.data.dicom_header.HeaderRefusedError` naming ``source``; a flag's reason is returned."""
    from braintumor.data.dicom_header import HeaderRefusedError, check_dicom_header

    verdict = check_dicom_header(dataset)
    if verdict.action == "refuse":
        raise HeaderRefusedError(source, verdict.reason)
    return verdict.reason if verdict.action == "flag" else None


def dicom_frames(
    data: bytes, source: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_frames: int | None = None
) -> list[Image.Image]:
    """Decode every frame of a DICOM file into 8-bit RGB images, display-ready.

    Raises :class:`ImageDecodeError` for anything unusable: not DICOM, no pixel data, a header the DICOM
    header gate refuses (another modality than MR), more than ``max_pixels`` pixels in all frames together,
    more than ``max_frames`` frames, or pixel data that pydicom cannot decode (truncated, or compressed
    without the plugin installed). When the gate flags the header (it names another body region), every
    image carries the reason as ``image.info["header_flag"]``.
    """
    try:
        import pydicom
    except ImportError:
        raise ImageDecodeError(source, "DICOM support needs pydicom: pip install pydicom") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # a damaged header makes pydicom raise almost any type
        raise ImageDecodeError(source, f"not a readable DICOM file: {error or type(error).__name__}") from None
    if "PixelData" not in dataset:
        raise ImageDecodeError(source, "DICOM file has no pixel data (a report or other non-image object?)")
    header_flag = gate_header(dataset, source)
    rows, columns = _header_int(dataset, "Rows", 0), _header_int(dataset, "Columns", 0)
    frame_count = _header_int(dataset, "NumberOfFrames", 1)
    if rows < 1 or columns < 1:
        raise ImageDecodeError(source, f"DICOM header gives no image size (Rows {rows}, Columns {columns})")
    if max_frames is not None and frame_count > max_frames:
        raise ImageDecodeError(
            source,
            f"DICOM file has {frame_count} frames; send one 2D slice per file"
            + ("" if max_frames == 1 else f" or at most {max_frames} frames"),
        )
    if rows * columns * frame_count > max_pixels:
        raise ImageDecodeError(
            source,
            f"DICOM image is {columns}x{rows} pixels x {frame_count} frame(s), over the limit of {max_pixels:,} pixels",
        )
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for compressed, truncated or broken pixel data
        raise ImageDecodeError(source, f"cannot decode DICOM pixel data: {error}") from None
    frames = pixels if frame_count > 1 else pixels[np.newaxis]
    images: list[Image.Image] = []
    try:
        for frame in frames:
            images.append(display_frame(frame, dataset))
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as error:
        # An inconsistent LUT or window (e.g. width 0) is a broken header, not a server fault.
        raise ImageDecodeError(source, f"cannot apply the DICOM display settings: {error}") from None
    if header_flag is not None:
        for image in images:
            image.info[HEADER_FLAG_KEY] = header_flag
    return images


def decode_dicom_bytes(data: bytes, source: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a single-frame DICOM; a multi-frame file is a clear error (use :func:`dicom_frames`)."""
    return dicom_frames(data, source, max_pixels=max_pixels, max_frames=1)[0]
