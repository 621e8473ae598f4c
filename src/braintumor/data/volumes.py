"""Volume input, whatever its container: a NIfTI file, a folder or zip of one DICOM series, a multi-frame DICOM.

The content decides, never the name: gzip or NIfTI magic is read as NIfTI (:mod:`braintumor.data.nifti`), a
zip is opened with the archive checks of :mod:`braintumor.data.archives` (a zip holding one NIfTI file is
that file; otherwise its files are a DICOM series), DICOM bytes and folders go to
:mod:`braintumor.data.dicom_series`. The CLI and the API call the same two functions, :func:`load_volume`
(a path) and :func:`load_volume_bytes` (an upload in memory), so both refuse the same inputs with the same
messages.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from braintumor.data.synthetic_volumes import nifti_bytes
    >>> path = Path(tempfile.mkdtemp()) / "demo.nii.gz"
    >>> _ = path.write_bytes(nifti_bytes(np.zeros((8, 8, 4), dtype=np.int16)))
    >>> is_volume_input(path), len(load_volume(path).slices)
    (True, 4)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from braintumor.data.archives import ArchiveLimits, ArchiveMember, is_zip, read_zip_members
from braintumor.data.dicom_series import read_dicom_series
from braintumor.data.images import is_dicom
from braintumor.data.nifti import GZIP_MAGIC, nifti_version, read_nifti_bytes
from braintumor.data.volume_core import Volume, VolumeError, VolumeLimits

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".zip")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class VolumeRequest:
    """Which volume to read from an input and within which limits."""

    series_uid: str | None = None
    volume_index: int | None = None
    limits: VolumeLimits = field(default_factory=VolumeLimits)
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)


def _is_nifti(data: bytes) -> bool:
    return data[:2] == GZIP_MAGIC or nifti_version(data) is not None


def _is_multiframe(path: Path) -> bool:
    """True for a DICOM file whose header says it has more than one frame (pixels are not read)."""
    try:
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return int(header.get("NumberOfFrames", 1) or 1) > 1
    except Exception:  # not DICOM, unreadable, or pydicom missing: not a multi-frame volume
        return False


def is_volume_input(path: Path | str) -> bool:
    """Whether ``predict``/``explain`` should read ``path`` as a volume: NIfTI, zip or multi-frame DICOM."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.name.lower().endswith(VOLUME_SUFFIXES):
        return True
    with path.open("rb") as handle:
        head = handle.read(352)
    return is_zip(head) or _is_nifti(head) or (is_dicom(head) and _is_multiframe(path))


def single_dicom_series(folder: Path | str, *, max_files: int = 5000) -> str | None:
    """The SeriesInstanceUID when ``folder`` holds DICOM files of exactly one series and nothing else, else None.

    Such a folder is a volume: ``predict`` reads it as one without ``--as-volume``. Only headers are read; a
    folder of mixed files (images, several series) is not one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files = [path for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")]
    if len(files) < 2 or len(files) > max_files:
        return None
    try:
        import pydicom
    except ImportError:  # without the volumes extra a folder is read as images, as before
        return None

    uids = set()
    for path in files:
        with path.open("rb") as handle:
            if not is_dicom(handle.read(132)):
                return None
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # pydicom raises many types for damaged files: such a folder is not one series
            return None
        uids.add(str(header.get("SeriesInstanceUID", "")))
        if len(uids) > 1:
            return None
    uid = uids.pop()
    return uid or None


def _from_members(members: list[ArchiveMember], source: str | Path, request: VolumeRequest) -> Volume:
    niftis = [m for m in members if m.name.lower().endswith(_NIFTI_SUFFIXES) or _is_nifti(m.data[:352])]
    if niftis and len(niftis) == len(members):
        if len(niftis) > 1:
            names = ", ".join(m.name for m in niftis[:5])
            raise VolumeError(source, f"holds {len(niftis)} NIfTI files ({names}): send one volume at a time")
        return read_nifti_bytes(
            niftis[0].data,
            f"{source}:{niftis[0].name}",
            volume_index=request.volume_index,
            limits=request.limits,
            max_bytes=request.archive.max_total_bytes,
        )
    return read_dicom_series(
        [(m.name, m.data) for m in members], source, series_uid=request.series_uid, limits=request.limits
    )


def load_volume_bytes(data: bytes, source: str | Path, request: VolumeRequest | None = None) -> Volume:
    """A volume from bytes in memory (an upload or a file's content); see the module docstring."""
    request = request or VolumeRequest()
    if not data:
        raise VolumeError(source, "empty file (0 bytes)")
    if is_zip(data):
        return _from_members(read_zip_members(data, source, request.archive), source, request)
    if _is_nifti(data):
        return read_nifti_bytes(
            data,
            source,
            volume_index=request.volume_index,
            limits=request.limits,
            max_bytes=request.archive.max_total_bytes,
        )
    if is_dicom(data):
        return read_dicom_series(
            [(Path(str(source)).name, data)], source, series_uid=request.series_uid, limits=request.limits
        )
    raise VolumeError(
        source, "not a volume: send a .nii/.nii.gz file, a zip of one DICOM series or a multi-frame DICOM file"
    )


def _folder_members(folder: Path, limits: ArchiveLimits) -> list[tuple[str, bytes]]:
    """The folder's files (recursively, hidden ones left out), under the same limits as an archive."""
    paths = sorted(
        p for p in folder.rglob("*") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    files = [p for p in paths if p.is_file() and not p.is_symlink()]
    if len(files) > limits.max_members:
        raise VolumeError(folder, f"holds {len(files):,} files, over the limit of {limits.max_members:,}")
    members, total = [], 0
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise VolumeError(path, f"cannot read file: {error.strerror or error}") from None
        total += len(data)
        if total > limits.max_total_bytes:
            raise VolumeError(folder, f"holds more than {limits.max_total_bytes:,} bytes of files: over the limit")
        members.append((str(path.relative_to(folder)), data))
    return members


def load_volume(path: Path | str, request: VolumeRequest | None = None) -> Volume:
    """A volume from a NIfTI file, a zip, a multi-frame DICOM file or a folder of one DICOM series."""
    request = request or VolumeRequest()
    path = Path(path)
    if path.is_dir():
        members = _folder_members(path, request.archive)
        if not members:
            raise VolumeError(path, "the folder is empty")
        return read_dicom_series(members, path, series_uid=request.series_uid, limits=request.limits)
    if not path.exists():
        raise VolumeError(path, "does not exist")
    size = path.stat().st_size
    if size > request.archive.max_total_bytes:
        raise VolumeError(path, f"file is {size:,} bytes, over the limit of {request.archive.max_total_bytes:,}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise VolumeError(path, f"cannot read file: {error.strerror or error}") from None
    return load_volume_bytes(data, path, request)


__all__ = [
    "Volume",
    "VolumeError",
    "VolumeLimits",
    "VolumeRequest",
    "is_volume_input",
    "load_volume",
    "load_volume_bytes",
]
