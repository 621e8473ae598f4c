"""NIfTI-1/NIfTI-2 volumes (``.nii``, ``.nii.gz``) read in memory with nibabel, as axial display-ready slices.

The header is checked before any voxel is read: the number of voxels against the limit, the dimensions
(a 2D image or a 5D one is refused; a 4D series needs ``volume_index``) and whether the file holds as many
bytes as the header promises (a truncated file is a clear error). ``.nii.gz`` is inflated with a byte limit,
so a gzip bomb stops at the limit. Intensities are ``scl_slope``/``scl_inter`` scaled (nibabel's
``get_fdata``), then shown through a robust window (the 0.5th-99.5th percentiles of the foreground voxels:
NIfTI carries no display window) before :func:`~braintumor.data.volume_core.axial_volume` reorients them.

Example:
    >>> import gzip
    >>> import nibabel as nib
    >>> voxels = np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3)
    >>> data = gzip.compress(nib.Nifti1Image(voxels, np.eye(4)).to_bytes())
    >>> volume = read_nifti_bytes(data, "demo.nii.gz")
    >>> volume.format, len(volume.slices), volume.positions_mm
    ('NIfTI', 3, [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.data.dicom import window_to_uint8
from braintumor.data.volume_core import (
    SeriesChoiceError,
    Volume,
    VolumeError,
    VolumeLimits,
    axial_volume,
    find_gaps,
    robust_window,
)

GZIP_MAGIC = b"\x1f\x8b"
# Compressed bytes fed to zlib per step, and the most inflated bytes one step may yield.
_INPUT_CHUNK = 64 * 1024
_OUTPUT_CHUNK = 1024 * 1024
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")


def nifti_version(data: bytes) -> int | None:
    """1 or 2 for an uncompressed NIfTI header at the start of ``data``, else None.

    Example:
        >>> nifti_version(b"\\x5c\\x01" + bytes(342) + b"n+1\\x00"), nifti_version(b"hello")
        (1, None)
    """
    if len(data) >= 348 and data[344:348] in _NIFTI1_MAGICS:
        return 1
    if len(data) >= 540 and data[4:8] in (b"n+2\x00", b"ni2\x00"):
        return 2
    return None


def _inflate_member(inflater: Any, data: bytes, start: int, source: str | Path, out: bytearray, limit: int) -> int:
    """Feed one gzip member from ``data[start:]`` in chunks into ``out``; the offset where the member ended."""
    position = start
    while not inflater.eof:
        if inflater.unconsumed_tail:
            piece = inflater.unconsumed_tail
        elif position < len(data):
            piece, position = data[position : position + _INPUT_CHUNK], position + _INPUT_CHUNK
        else:
            raise VolumeError(source, "truncated gzip file (it ends before its end marker)")
        # Never more than one chunk of output per call, and never past the limit: a bomb stops here.
        out.extend(inflater.decompress(piece, min(_OUTPUT_CHUNK, limit + 1 - len(out))))
        if len(out) > limit:
            raise VolumeError(
                source, f"gzip content expands over the limit of {limit:,} bytes: refused as a possible gzip bomb"
            )
    return min(position, len(data)) - len(inflater.unused_data)


def inflate_limited(data: bytes, source: str | Path, limit: int) -> bytes:
    """Gunzip ``data`` (concatenated members included) in chunks, stopping as soon as it passes ``limit`` bytes.

    Input is fed ``_INPUT_CHUNK`` bytes at a time and each step yields at most ``_OUTPUT_CHUNK`` bytes, so a
    gzip bomb is refused after inflating just over ``limit`` bytes, whatever it would expand to.

    Example:
        >>> import gzip
        >>> inflate_limited(gzip.compress(b"abc") + gzip.compress(b"def"), "x.nii.gz", 10)
        b'abcdef'
    """
    out = bytearray()
    position = 0
    try:
        while position < len(data):
            position = _inflate_member(zlib.decompressobj(zlib.MAX_WBITS | 16), data, position, source, out, limit)
            while position < len(data) and data[position] == 0:  # padding after the last member
                position += 1
    except zlib.error as error:
        raise VolumeError(source, f"corrupt gzip data: {error}") from None
    return bytes(out)


def _header_image(raw: bytes, source: str | Path) -> Any:
    try:
        import nibabel as nib
    except ImportError:
        raise VolumeError(source, "NIfTI input needs nibabel: pip install 'braintumor[volumes]'") from None

    version = nifti_version(raw)
    if version is None:
        raise VolumeError(source, "not a NIfTI-1 or NIfTI-2 file (no NIfTI magic in the header)")
    kind = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    try:
        return kind.from_bytes(raw)
    except Exception as error:  # nibabel raises several types for a broken header
        raise VolumeError(source, f"unreadable NIfTI header: {error or type(error).__name__}") from None


def _checked_shape(image: Any, source: str | Path, volume_index: int | None, limits: VolumeLimits) -> tuple[int, ...]:
    """The 3D shape that will be read; refuses 2D, 5D+, an unchosen or out-of-range 4D volume, too many voxels."""
    shape = tuple(int(s) for s in image.shape)
    while len(shape) > 3 and shape[-1] == 1:  # trailing singleton dimensions carry nothing
        shape = shape[:-1]
    if len(shape) < 3 or shape[2] < 2:
        raise VolumeError(source, f"is a 2D image (shape {'x'.join(map(str, shape))}): a volume needs 3 dimensions")
    if len(shape) > 4:
        raise VolumeError(source, f"is a {len(shape)}D image (shape {'x'.join(map(str, shape))}): only 3D and 4D read")
    if len(shape) == 4:
        count = shape[3]
        if volume_index is None:
            choices = [{"volume": index, "shape": list(shape[:3])} for index in range(count)]
            raise SeriesChoiceError(
                source, f"is a 4D image with {count} volumes: choose one with --volume N (0 to {count - 1})", choices
            )
        if not 0 <= volume_index < count:
            raise VolumeError(source, f"has volumes 0 to {count - 1}; --volume {volume_index} is not one of them")
    elif volume_index not in (None, 0):
        raise VolumeError(source, f"is a 3D image: --volume {volume_index} does not exist (only 0)")
    voxels = int(np.prod(shape[:3]))
    if voxels > limits.max_voxels:
        raise VolumeError(source, f"has {voxels:,} voxels per volume, over the limit of {limits.max_voxels:,}")
    return shape


def _voxels(image: Any, raw: bytes, source: str | Path, shape: tuple[int, ...], volume_index: int | None) -> np.ndarray:
    header = image.header
    # The data start at vox_offset, never before the header's end (a header may say 0).
    offset = max(int(header["vox_offset"]), int(header.sizeof_hdr) + 4)
    needed = offset + int(np.prod(image.shape)) * header.get_data_dtype().itemsize
    if len(raw) < needed:
        raise VolumeError(source, f"truncated NIfTI file: {len(raw):,} bytes where the header needs {needed:,}")
    try:
        proxy = image.dataobj
        block = proxy[..., volume_index] if len(shape) == 4 else proxy
        values = np.asarray(block, dtype=np.float32).reshape(shape[:3])
    except Exception as error:  # nibabel/numpy raise several types for unreadable data
        raise VolumeError(source, f"cannot read NIfTI voxels: {error or type(error).__name__}") from None
    return np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)


def read_nifti_bytes(
    data: bytes,
    source: str | Path,
    *,
    volume_index: int | None = None,
    limits: VolumeLimits | None = None,
    max_bytes: int = 1024 * 1024 * 1024,
) -> Volume:
    """A NIfTI file's bytes (gzipped or not) as a :class:`~braintumor.data.volume_core.Volume`.

    Raises :class:`~braintumor.data.volume_core.VolumeError` naming ``source`` and the reason, and
    :class:`~braintumor.data.volume_core.SeriesChoiceError` for a 4D file without ``volume_index``.
    """
    limits = limits or VolumeLimits()
    raw = inflate_limited(data, source, max_bytes) if data[:2] == GZIP_MAGIC else data
    image = _header_image(raw, source)
    shape = _checked_shape(image, source, volume_index, limits)
    values = _voxels(image, raw, source, shape, volume_index)
    low, high = robust_window(values)
    affine = image.affine if image.affine is not None else np.eye(4)
    volume = axial_volume(
        window_to_uint8(values, low, high), affine, source=str(source), format="NIfTI", max_slices=limits.max_slices
    )
    if len(shape) == 4:
        volume.warnings.append(f"4D image: volume {volume_index} of {shape[3]} used")
    volume.gaps_after = find_gaps(volume.positions_mm)
    return volume
