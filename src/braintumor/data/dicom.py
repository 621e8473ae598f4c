"""DICOM decoding with pydicom: rescale slope/intercept, VOI LUT or window, MONOCHROME1 inversion.

pydicom is an optional dependency (``pip install braintumor[serve]``); without it a DICOM file
gets a clear error instead of an import traceback.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from braintumor.errors import ImageDecodeError


def dicom_frames(data: bytes, source: str | Path) -> list[Image.Image]:
    """Decode every frame of a DICOM file into 8-bit RGB images, display-ready."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ImageDecodeError(source, "DICOM support needs pydicom: pip install pydicom") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise ImageDecodeError(source, f"not a readable DICOM file: {error}") from None
    if "PixelData" not in dataset:
        raise ImageDecodeError(source, "DICOM file has no pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for compressed or broken pixel data
        raise ImageDecodeError(source, f"cannot decode DICOM pixel data: {error}") from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
    frames = pixels if frame_count > 1 else pixels[np.newaxis]
    images: list[Image.Image] = []
    for frame in frames:
        if photometric.startswith("MONOCHROME"):
            values = apply_modality_lut(frame, dataset)
            values = apply_voi_lut(values, dataset)
            values = np.asarray(values, dtype=np.float64)
            low, high = float(values.min()), float(values.max())
            scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
            if photometric == "MONOCHROME1":  # MONOCHROME1 means high values are dark.
                scaled = 1.0 - scaled
            images.append(Image.fromarray((scaled * 255.0).round().astype(np.uint8), mode="L").convert("RGB"))
        else:
            array = np.asarray(frame)
            if array.dtype != np.uint8:
                array = (255.0 * (array - array.min()) / max(float(np.ptp(array)), 1e-9)).astype(np.uint8)
            images.append(Image.fromarray(array).convert("RGB"))
    return images


def decode_dicom_bytes(data: bytes, source: str | Path) -> Image.Image:
    """Decode a single-frame DICOM; a multi-frame file is a clear error (use :func:`dicom_frames`)."""
    frames = dicom_frames(data, source)
    if len(frames) != 1:
        raise ImageDecodeError(
            source, f"DICOM file has {len(frames)} frames; send one 2D slice per file (or predict per frame)"
        )
    return frames[0]
