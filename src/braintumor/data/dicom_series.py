"""One DICOM series (files of single slices, or multi-frame files) as an axial :class:`Volume`.

Files that are not DICOM images (a text file, a DICOMDIR, a structured report, a file whose header or
pixel data is truncated) are skipped with a warning naming them; several series stop with a
:class:`~braintumor.data.volume_core.SeriesChoiceError` listing them unless one is chosen. Slices are ordered
by their position along the slice normal (``ImagePositionPatient`` projected on the cross product of the
``ImageOrientationPatient`` vectors, per frame for enhanced multi-frame files); only without those tags by
``InstanceNumber``, with a warning. The order of the files therefore never matters. A gap in the positions is
a warning; two images at one position or mixed orientations are errors; geometry that is missing, not finite
or degenerate (zero spacing, parallel direction cosines) is treated as absent, with a warning. Before any pixel
is decoded the DICOM header gate (:mod:`braintumor.data.dicom_header`) refuses another modality than MR and
records a header that names another body region as ``Volume.header_flag``. Each frame goes through the 2D DICOM
display pipeline (:func:`braintumor.data.dicom.display_frame`: modality LUT, VOI LUT or window,
MONOCHROME1); a series without any VOI gets one robust window over the whole series instead of a per-slice
min-max, so every slice is shown alike. Compressed transfer syntaxes are decoded by pydicom's pixel data
handlers (RLE natively; JPEG, JPEG-LS and JPEG 2000 through pylibjpeg and its plugins).

Example:
    >>> import numpy as np
    >>> from braintumor.data.synthetic_volumes import dicom_series_bytes
    >>> files = dicom_series_bytes(np.zeros((3, 8, 8), dtype=np.uint16) + np.arange(8, dtype=np.uint16))
    >>> volume = read_dicom_series(list(reversed(files)), "series/")
    >>> len(volume.slices), volume.positions_mm, volume.acquisition_orientation
    (3, [-60.0, -57.5, -55.0], 'axial')
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.data.dicom import display_frame, window_to_uint8
from braintumor.data.images import is_dicom
from braintumor.data.volume_core import (
    SeriesChoiceError,
    SeriesInfo,
    SliceRef,
    Volume,
    VolumeError,
    VolumeLimits,
    axial_volume,
    find_gaps,
    gap_warnings,
    orientation_name,
    robust_window,
)

# Directory records and other media files are not part of a series.
_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
# Copied into a per-frame view so the 2D display pipeline sees one frame's display attributes.
_PIXEL_KEYWORDS = ("PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")
_LUT_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "VOILUTSequence")
_WINDOW_KEYWORDS = ("WindowCenter", "WindowWidth", "VOILUTFunction")
_SAME_POSITION_MM = 0.01
# Patient coordinates beyond this (mm) are no scanner's: a broken or hostile header.
_MAX_COORDINATE_MM = 1e5


@dataclass
class _Frame:
    """One 2D image of the series: which file and frame, where it lies and how to display it."""

    name: str
    dataset: Any
    index: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    spacing: tuple[float, float] | None
    view: Any

    @property
    def instance_number(self) -> int:
        try:
            return int(self.dataset.get("InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            return 0

    def ref(self) -> SliceRef:
        multi = int(self.dataset.get("NumberOfFrames", 1) or 1) > 1
        return SliceRef(
            str(self.dataset.get("SOPInstanceUID", "")),
            str(self.dataset.get("SOPClassUID", "")),
            self.index + 1 if multi else None,
        )


def parse_instances(members: list[tuple[str, bytes]]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The DICOM image files among ``members`` (name, bytes), and one warning per file left out."""
    try:
        import pydicom
    except ImportError:
        raise VolumeError("DICOM input", "needs pydicom: pip install 'braintumor[volumes]'") from None

    instances, skipped = [], []
    for name, data in members:
        if not is_dicom(data):
            skipped.append(f"skipped {name}: not a DICOM file")
            continue
        try:
            dataset = pydicom.dcmread(io.BytesIO(data))
        except Exception as error:  # a damaged header makes pydicom raise almost any type
            skipped.append(f"skipped {name}: not a readable DICOM file ({error or type(error).__name__})")
            continue
        if str(dataset.get("SOPClassUID", "")) == _DIRECTORY_SOP_CLASS or "PixelData" not in dataset:
            skipped.append(f"skipped {name}: DICOM file has no pixel data (a report, DICOMDIR or other non-image)")
            continue
        instances.append((name, dataset))
    return instances, skipped


def _frame_count(dataset: Any) -> int:
    try:
        return max(1, int(dataset.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def series_choices(instances: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """One row per series: UID, description, number of images (frames), files, orientation; largest first."""
    rows: dict[str, dict[str, Any]] = {}
    for _, dataset in instances:
        uid = str(dataset.get("SeriesInstanceUID", "") or "(no series UID)")
        row = rows.setdefault(
            uid,
            {
                "series_uid": uid,
                "description": str(dataset.get("SeriesDescription", "") or ""),
                "modality": str(dataset.get("Modality", "") or ""),
                "n_images": 0,
                "n_files": 0,
                "orientation": "unknown",
            },
        )
        row["n_images"] += _frame_count(dataset)
        row["n_files"] += 1
        orientation = _orientation(
            _vector(_attribute(dataset, None, None, "PlaneOrientationSequence", "ImageOrientationPatient"))
        )
        if orientation is not None:
            row["orientation"] = orientation_name(np.cross(orientation[:3], orientation[3:]))
    return sorted(rows.values(), key=lambda row: (-row["n_images"], row["series_uid"]))


def describe_choices(choices: list[dict[str, Any]]) -> str:
    """The series as lines a person can choose from.

    Example:
        >>> row = {"series_uid": "1.2", "description": "T1", "n_images": 24, "orientation": "axial"}
        >>> print(describe_choices([row]))
          1.2  'T1'  24 images  axial
    """
    return "\n".join(
        f"  {row['series_uid']}  {row['description']!r}  {row['n_images']} images  {row['orientation']}"
        for row in choices
    )


def choose_series(
    instances: list[tuple[str, Any]], source: str | Path, series_uid: str | None
) -> list[tuple[str, Any]]:
    """The instances of the one series in the input, or of ``series_uid``; a clear error otherwise."""
    choices = series_choices(instances)
    if series_uid is not None:
        chosen = [item for item in instances if str(item[1].get("SeriesInstanceUID", "")) == series_uid]
        if not chosen:
            raise VolumeError(source, f"has no series {series_uid}; it holds:\n{describe_choices(choices)}")
        return chosen
    if len(choices) > 1:
        raise SeriesChoiceError(
            source,
            f"holds {len(choices)} series: choose one with --series UID (API: ?series=UID):\n"
            + describe_choices(choices),
            choices,
        )
    return instances


def _attribute(dataset: Any, per_frame: Any, shared: Any, sequence: str, keyword: str) -> Any:
    """``keyword`` from the frame's functional group, the shared one, or the top level (in that order)."""
    for group in (per_frame, shared):
        items = None if group is None else group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return dataset.get(keyword)


def _vector(value: Any) -> np.ndarray | None:
    """The numbers of a multi-valued attribute; None when missing, not numbers, not finite or absurdly large."""
    try:
        vector = None if value is None else np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if vector is None or not np.all(np.isfinite(vector)) or np.any(np.abs(vector) > _MAX_COORDINATE_MM):
        return None
    return vector


def _orientation(vector: np.ndarray | None) -> np.ndarray | None:
    """Unit row and column direction cosines; None unless there are six making two non-parallel directions."""
    if vector is None or vector.size != 6:
        return None
    row, column = vector[:3], vector[3:]
    row_norm, column_norm = float(np.linalg.norm(row)), float(np.linalg.norm(column))
    if min(row_norm, column_norm) < 0.5:
        return None
    row, column = row / row_norm, column / column_norm
    if float(np.linalg.norm(np.cross(row, column))) < 0.9:  # not (nearly) perpendicular
        return None
    return np.concatenate([row, column])


def _spacing(vector: np.ndarray | None) -> tuple[float, float] | None:
    """Row and column spacing in mm; None unless two positive numbers."""
    if vector is None or vector.size != 2 or float(vector.min()) <= 0:
        return None
    return float(vector[0]), float(vector[1])


def _frame_view(dataset: Any, per_frame: Any, shared: Any) -> Any:
    """A dataset with just the display attributes of one frame (enhanced files keep them per frame)."""
    from pydicom.dataset import Dataset

    view = Dataset()
    for keyword in _PIXEL_KEYWORDS + _LUT_KEYWORDS + _WINDOW_KEYWORDS:
        if keyword in dataset:
            setattr(view, keyword, dataset.get(keyword))
    for sequence, keywords in (
        ("PixelValueTransformationSequence", _LUT_KEYWORDS),
        ("FrameVOILUTSequence", _WINDOW_KEYWORDS),
    ):
        for keyword in keywords:
            value = _attribute(Dataset(), per_frame, shared, sequence, keyword)
            if value is not None:
                setattr(view, keyword, value)
    return view


def _frames_of(name: str, dataset: Any) -> list[_Frame]:
    count = _frame_count(dataset)
    per_frames = dataset.get("PerFrameFunctionalGroupsSequence")
    shared_groups = dataset.get("SharedFunctionalGroupsSequence")
    shared = shared_groups[0] if shared_groups else None
    frames = []
    for index in range(count):
        per_frame = per_frames[index] if per_frames is not None and len(per_frames) == count else None
        enhanced = per_frame is not None or shared is not None
        position = _vector(_attribute(dataset, per_frame, shared, "PlanePositionSequence", "ImagePositionPatient"))
        if count > 1 and per_frame is None:
            position = None  # a top-level position describes the first frame only
        orientation = _vector(
            _attribute(dataset, per_frame, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
        )
        spacing = _vector(_attribute(dataset, per_frame, shared, "PixelMeasuresSequence", "PixelSpacing"))
        frames.append(
            _Frame(
                name,
                dataset,
                index,
                position if position is not None and position.size == 3 else None,
                _orientation(orientation),
                _spacing(spacing),
                _frame_view(dataset, per_frame, shared) if enhanced else dataset,
            )
        )
    return frames


def _pixels(name: str, dataset: Any, source: str | Path, limits: VolumeLimits) -> np.ndarray:
    """Decoded stored values ``[frames, rows, cols(, 3)]`` of one file (ValueError-like errors when broken)."""
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise ValueError(f"header gives no image size (Rows {rows}, Columns {columns})")
    if rows * columns * _frame_count(dataset) > limits.max_voxels:
        raise VolumeError(source, f"{name} holds more than {limits.max_voxels:,} pixels: over the volume limit")
    pixels = np.asarray(dataset.pixel_array)
    return pixels if _frame_count(dataset) > 1 else pixels[np.newaxis]


def _decoded_frames(
    instances: list[tuple[str, Any]], source: str | Path, limits: VolumeLimits, warnings: list[str]
) -> list[tuple[_Frame, np.ndarray]]:
    """Every frame with its stored pixels; a file whose pixels cannot be decoded is skipped with a warning."""
    total = sum(int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * _frame_count(ds) for _, ds in instances)
    if total > limits.max_voxels:
        raise VolumeError(source, f"the series holds {total:,} pixels, over the limit of {limits.max_voxels:,}")
    decoded = []
    for name, dataset in instances:
        try:
            pixels = _pixels(name, dataset, source, limits)
        except VolumeError:
            raise
        except Exception as error:  # pydicom raises many types for compressed, truncated or broken pixel data
            warnings.append(f"skipped {name}: cannot decode its pixel data ({error or type(error).__name__})")
            continue
        frames = _frames_of(name, dataset)
        decoded.extend(zip(frames, pixels, strict=False))
        del dataset.PixelData  # the header stays for the report; the pixels are decoded
    return decoded


def _has_voi(view: Any) -> bool:
    return bool(view.get("VOILUTSequence")) or ("WindowCenter" in view and "WindowWidth" in view)


def _display(frames: list[tuple[_Frame, np.ndarray]], source: str | Path) -> np.ndarray:
    """8-bit display images ``[N, rows, cols]``: each frame's own VOI, else one robust window for the series."""
    from pydicom.pixels import apply_modality_lut

    try:
        if all(_has_voi(frame.view) for frame, _ in frames):
            return np.stack([np.asarray(display_frame(pixels, frame.view).convert("L")) for frame, pixels in frames])
        colour = [str(f.view.get("PhotometricInterpretation", "")).upper() for f, _ in frames]
        if any(not name.startswith("MONOCHROME") for name in colour if name):
            return np.stack([np.asarray(display_frame(pixels, frame.view).convert("L")) for frame, pixels in frames])
        values = np.stack([np.asarray(apply_modality_lut(p, f.view), dtype=np.float32) for f, p in frames])
    except (ValueError, TypeError, KeyError, AttributeError, NotImplementedError, IndexError) as error:
        raise VolumeError(source, f"cannot apply the DICOM display settings: {error}") from None
    low, high = robust_window(values)
    invert = str(frames[0][0].view.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"
    return window_to_uint8(values, low, high, invert=invert)


def _ordered(frames: list[tuple[_Frame, np.ndarray]], source: str | Path, warnings: list[str]) -> tuple[list, Any]:
    """Frames sorted along the slice normal (InstanceNumber as the fallback) and that normal (None: unknown)."""
    located = all(f.position is not None and f.orientation is not None for f, _ in frames)
    if not located:
        warnings.append(
            "no usable ImagePositionPatient/ImageOrientationPatient on every image: slices ordered by InstanceNumber "
            "and taken as axial; positions unknown"
        )
        return sorted(
            frames, key=lambda item: (item[0].instance_number, item[0].ref().sop_instance_uid, item[0].index)
        ), None
    reference = frames[0][0].orientation
    for frame, _ in frames:
        if float(np.max(np.abs(frame.orientation - reference))) > 1e-3:  # type: ignore[operator]
            raise VolumeError(
                source,
                f"the series mixes image orientations ({frame.name} differs): choose a series of parallel slices",
            )
    normal = np.cross(reference[:3], reference[3:])  # type: ignore[index]
    ordered = sorted(
        frames,
        key=lambda item: (float(item[0].position @ normal), item[0].instance_number, item[0].ref().sop_instance_uid),
    )
    distances = [float(frame.position @ normal) for frame, _ in ordered]  # type: ignore[operator]
    for (first, _), (second, _), a, b in zip(ordered, ordered[1:], distances, distances[1:], strict=False):
        if abs(b - a) < _SAME_POSITION_MM:
            raise VolumeError(
                source,
                f"{first.name} and {second.name} lie at the same position ({a:.2f} mm): the series holds more than "
                "one volume (echoes, phases or repeats); export one of them",
            )
    warnings.extend(gap_warnings(distances, find_gaps(distances)))  # type: ignore[arg-type]
    return ordered, normal


def _affine(ordered: list[tuple[_Frame, np.ndarray]], normal: np.ndarray | None) -> tuple[np.ndarray, list | None]:
    """The RAS affine of voxels ``[column, row, slice]`` and each slice's centre height (None: unknown)."""
    first = ordered[0][0]
    row_spacing, column_spacing = first.spacing or (1.0, 1.0)
    rows, columns = ordered[0][1].shape[:2]
    lps = np.eye(4)
    if normal is None:
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = [column_spacing, 0, 0], [0, row_spacing, 0], [0, 0, 1.0]
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, None
    row_direction, column_direction = first.orientation[:3], first.orientation[3:]  # type: ignore[index]
    positions = np.stack([frame.position for frame, _ in ordered])
    thickness = float(first.dataset.get("SpacingBetweenSlices", first.dataset.get("SliceThickness", 1.0)) or 1.0)
    step = (positions[-1] - positions[0]) / (len(ordered) - 1) if len(ordered) > 1 else normal * thickness
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = (
        row_direction * column_spacing,
        column_direction * row_spacing,
        step,
        positions[0],
    )
    centre = row_direction * column_spacing * (columns - 1) / 2 + column_direction * row_spacing * (rows - 1) / 2
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, [float((p + centre)[2]) for p in positions]


def gate_series(instances: list[tuple[str, Any]], source: str | Path) -> str | None:
    """The DICOM header gate on every image of the chosen series: a refusal raises
    :class:`~braintumor.data.dicom_header.HeaderRefusedError` naming the input and the file; the first flag's
    reason is returned (None: nothing flagged)."""
    from braintumor.data.dicom_header import HeaderRefusedError, check_dicom_header

    flag = None
    for name, dataset in instances:
        verdict = check_dicom_header(dataset)
        if verdict.action == "refuse":
            raise HeaderRefusedError(source, f"{name}: {verdict.reason}")
        if verdict.action == "flag" and flag is None:
            flag = verdict.reason
    return flag


def read_dicom_series(
    members: list[tuple[str, bytes]],
    source: str | Path,
    *,
    series_uid: str | None = None,
    limits: VolumeLimits | None = None,
) -> Volume:
    """The series among ``members`` (name, bytes) as an axial :class:`Volume` (see the module docstring)."""
    limits = limits or VolumeLimits()
    instances, warnings = parse_instances(members)
    if not instances:
        reasons = "; ".join(line.removeprefix("skipped ") for line in warnings[:3]) or "it is empty"
        raise VolumeError(source, f"holds no DICOM image: {reasons}")
    instances = choose_series(instances, source, series_uid)
    header_flag = gate_series(instances, source)
    frames = _decoded_frames(instances, source, limits, warnings)
    if not frames:
        raise VolumeError(source, "no image of the series could be decoded: " + "; ".join(warnings[-3:]))
    shapes = {pixels.shape[:2] for _, pixels in frames}
    if len(shapes) > 1:
        raise VolumeError(source, f"the series mixes image sizes {sorted(shapes)}: its slices do not form a volume")
    ordered, normal = _ordered(frames, source, warnings)
    if len(ordered) < 2:
        raise VolumeError(source, "holds a single 2D image: predict it as an image, or send the whole series")
    if any(frame.spacing is None for frame, _ in ordered):
        warnings.append("no usable PixelSpacing on every image: square 1 mm pixels assumed")
    display = _display(ordered, source)
    affine, heights = _affine(ordered, normal)
    try:
        volume = axial_volume(
            display.transpose(2, 1, 0),
            affine,
            source=str(source),
            format="DICOM",
            slice_refs=[frame.ref() for frame, _ in ordered],
            slice_z=heights,
            acquisition_orientation=None if normal is not None else "unknown",
            max_slices=limits.max_slices,
        )
    except (ValueError, ArithmeticError, np.linalg.LinAlgError) as error:  # nibabel: an affine it cannot orient
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise VolumeError(source, f"the series' geometry does not make a volume: {first_line}") from None
    if normal is None:
        volume.positions_mm = [None] * len(volume.slices)
    volume.warnings = warnings
    if header_flag is not None:
        volume.header_flag = header_flag
        warnings.append(f"flagged by its DICOM header: {header_flag}")
    volume.gaps_after = find_gaps(volume.positions_mm)
    first = ordered[0][0].dataset
    volume.series = SeriesInfo(
        series_uid=str(first.get("SeriesInstanceUID", "")),
        study_uid=str(first.get("StudyInstanceUID", "")),
        description=str(first.get("SeriesDescription", "") or ""),
        modality=str(first.get("Modality", "") or ""),
        orientation=volume.acquisition_orientation,
        n_images=len(ordered),
        # The headers of the files the volume was made of, each once, in slice order: a report's evidence.
        datasets=list({id(frame.dataset): frame.dataset for frame, _ in ordered}.values()),
    )
    return volume
