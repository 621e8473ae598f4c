"""What every volume reader returns: axial, display-ready slices with their positions, and the shared steps.

A :class:`Volume` holds the slices a 2D model is run on: reoriented to axial (nibabel's closest canonical
orientation, RAS+), ordered inferior to superior, shown the radiological way (patient right on the image's
left, anterior at the top, as a standard axial DICOM slice is stored), resampled to square pixels when the
in-plane spacing differs, and already through the display pipeline (8-bit grey as RGB). Readers build the
voxel array and its RAS affine; :func:`axial_volume` does the rest.

Example:
    >>> import numpy as np
    >>> voxels = np.zeros((4, 3, 2), dtype=np.uint8)  # x (to the right), y (anterior), z (superior)
    >>> voxels[3, 2, :] = 255  # the right, anterior corner of every slice
    >>> volume = axial_volume(voxels, np.eye(4), source="demo.nii", format="NIfTI")
    >>> len(volume.slices), volume.slices[0].size, volume.positions_mm
    (2, (4, 3), [0.0, 1.0])
    >>> np.asarray(volume.slices[0])[0, 0].tolist()  # top left: anterior, and the patient's right
    [255, 255, 255]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from braintumor.errors import ImageDecodeError

# 512 x 512 x 256: a large thin-slice MR volume; its float32 copy is 256 MB.
DEFAULT_MAX_VOXELS = 64 * 1024 * 1024
DEFAULT_MAX_SLICES = 1000
# The robust window of a volume without a VOI: these percentiles of its foreground voxels.
WINDOW_PERCENTILES = (0.5, 99.5)
# A spacing this much larger than the median one between neighbouring slices is reported as missing slices.
GAP_FACTOR = 1.5
_MAX_SIDE = 1024


class VolumeError(ImageDecodeError):
    """A volume input that cannot be used; names the file or folder and the reason."""


class SeriesChoiceError(VolumeError):
    """Several series (or 4D volumes) in one input: the user must choose one; ``choices`` lists them."""

    def __init__(self, path: Any, reason: str, choices: list[dict[str, Any]]) -> None:
        super().__init__(path, reason)
        self.choices = choices


@dataclass(frozen=True)
class VolumeLimits:
    """How large a volume may be: voxels in all, axial slices."""

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_slices: int = DEFAULT_MAX_SLICES


@dataclass(frozen=True)
class SliceRef:
    """The DICOM image an axial slice is: its instance (and frame, 1-based, in a multi-frame file)."""

    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None = None


@dataclass
class SeriesInfo:
    """The DICOM series a volume came from, and its instance headers (pixel data dropped) for a report."""

    series_uid: str
    study_uid: str
    description: str
    modality: str
    orientation: str
    n_images: int
    datasets: list[Any] = field(default_factory=list, repr=False)


@dataclass
class Volume:
    """Axial slices ready for a 2D model, with where each lies and what was noticed on the way."""

    source: str
    format: str
    slices: list[Image.Image]
    positions_mm: list[float | None]
    shape: tuple[int, ...]
    spacing_mm: tuple[float, float, float] | None
    acquisition_orientation: str
    warnings: list[str] = field(default_factory=list)
    slice_refs: list[SliceRef | None] = field(default_factory=list)
    series: SeriesInfo | None = None
    # Slice i with i in gaps_after: the spacing to slice i + 1 is larger than the volume's usual one.
    gaps_after: list[int] = field(default_factory=list)
    # Why the DICOM header gate flags the input (it names another body region than the head); None: not flagged.
    header_flag: str | None = None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (no pixels, no instance headers)."""
        series = self.series
        return {
            "source": self.source,
            "format": self.format,
            "n_slices": len(self.slices),
            "shape": list(self.shape),
            "spacing_mm": None if self.spacing_mm is None else [round(s, 4) for s in self.spacing_mm],
            "acquisition_orientation": self.acquisition_orientation,
            "series_uid": None if series is None else series.series_uid,
            "study_uid": None if series is None else series.study_uid,
            "series_description": None if series is None else series.description,
            "warnings": list(self.warnings),
            "header_flag": self.header_flag,
        }


def orientation_name(normal: np.ndarray) -> str:
    """axial, coronal or sagittal after the patient axis the slice normal is closest to (oblique: none within 30°).

    Example:
        >>> orientation_name(np.array([0.0, 0.0, 1.0])), orientation_name(np.array([0.7, 0.7, 0.1]))
        ('axial', 'oblique')
    """
    normal = np.abs(np.asarray(normal, dtype=np.float64))
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        return "unknown"
    axis = int(np.argmax(normal))
    if normal[axis] / norm < np.cos(np.radians(30)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def robust_window(values: np.ndarray) -> tuple[float, float]:
    """The :data:`WINDOW_PERCENTILES` of the foreground (values above the minimum), a subsample for speed.

    Example:
        >>> robust_window(np.concatenate([np.zeros(1000), np.arange(1, 1001.0)]))
        (5.995, 995.005)
    """
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 0.0
    # Every 7th voxel: percentiles of millions of voxels do not move, and this is 7 times faster.
    sample = flat[::7] if flat.size > 700_000 else flat
    foreground = sample[sample > sample.min()]
    chosen = foreground if foreground.size >= 0.01 * sample.size else sample
    low, high = np.percentile(chosen, WINDOW_PERCENTILES)
    return float(np.round(low, 4)), float(np.round(high, 4))


def find_gaps(positions: list[float | None]) -> list[int]:
    """Indices ``i`` whose spacing to slice ``i + 1`` is over :data:`GAP_FACTOR` times the median spacing.

    Example:
        >>> find_gaps([0.0, 1.0, 2.0, 5.0, 6.0])
        [2]
    """
    if len(positions) < 3 or any(p is None for p in positions):
        return []
    steps = np.abs(np.diff(np.asarray(positions, dtype=np.float64)))
    usual = float(np.median(steps))
    return [int(i) for i in np.flatnonzero(steps > GAP_FACTOR * usual)] if usual > 0 else []


def gap_warnings(positions: list[float | None], gaps: list[int]) -> list[str]:
    """One line per gap: where it is and how many slices seem to be missing."""
    if not gaps:
        return []
    steps = np.abs(np.diff(np.asarray(positions, dtype=np.float64)))
    usual = float(np.median(steps))
    lines = []
    for i in gaps:
        missing = max(1, round(steps[i] / usual) - 1)
        lines.append(
            f"missing slices: {steps[i]:.2f} mm between slices {i} and {i + 1} (positions {positions[i]:.2f} and "
            f"{positions[i + 1]:.2f} mm) where the spacing is {usual:.2f} mm, about {missing} slice(s) missing"
        )
    return lines


def _square_pixels(image: Image.Image, spacing_x: float, spacing_y: float) -> Image.Image:
    """Resample to square pixels (the finer spacing kept), capped at 1024 px, so anatomy keeps its shape."""
    if spacing_x <= 0 or spacing_y <= 0 or abs(spacing_x / spacing_y - 1.0) < 0.01:
        return image
    finest = min(spacing_x, spacing_y)
    width, height = image.width * spacing_x / finest, image.height * spacing_y / finest
    scale = min(1.0, _MAX_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, resample=Image.Resampling.BILINEAR)


def axial_volume(
    voxels: np.ndarray,
    affine_ras: np.ndarray,
    *,
    source: str,
    format: str,
    slice_refs: list[SliceRef | None] | None = None,
    slice_z: list[float] | None = None,
    acquisition_orientation: str | None = None,
    max_slices: int = DEFAULT_MAX_SLICES,
) -> Volume:
    """Reorient 8-bit display voxels ``[i, j, k]`` with a RAS affine to axial slices (see the module docstring).

    ``slice_refs`` name the source image of each ``k`` and ``slice_z`` its measured height (mm, superior
    positive; the affine's even step would hide missing slices). Both carry over only when the volume's
    slice axis is already the axial one (a reformatted slice is no stored image).
    """
    try:
        import nibabel as nib
    except ImportError:
        raise VolumeError(source, "volume input needs nibabel: pip install 'braintumor[volumes]'") from None
    image = nib.Nifti1Image(np.asarray(voxels, dtype=np.uint8), np.asarray(affine_ras, dtype=np.float64))
    orientation = nib.io_orientation(image.affine)
    canonical = nib.as_closest_canonical(image)
    if canonical.shape[2] > max_slices:
        raise VolumeError(source, f"has {canonical.shape[2]:,} axial slices, over the limit of {max_slices:,}")
    data = np.asarray(canonical.dataobj, dtype=np.uint8)
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    centre = canonical.affine @ np.array([(data.shape[0] - 1) / 2, (data.shape[1] - 1) / 2, 0.0, 1.0])
    step = canonical.affine[:3, 2]
    slices, positions = [], []
    for k in range(data.shape[2]):
        # x grows to the patient's right and y to anterior: flip both and transpose for the radiological view.
        plane = np.ascontiguousarray(data[::-1, ::-1, k].T)
        picture = _square_pixels(Image.fromarray(plane, mode="L"), zooms[0], zooms[1])
        slices.append(picture.convert("RGB"))
        positions.append(round(float(centre[2] + k * step[2]), 4))
    refs: list[SliceRef | None] = [None] * data.shape[2]
    if int(orientation[2][0]) == 2:  # the source slice axis became the axial one
        order = [data.shape[2] - 1 - k if orientation[2][1] < 0 else k for k in range(data.shape[2])]
        refs = [slice_refs[k] for k in order] if slice_refs is not None else refs
        positions = [round(float(slice_z[k]), 4) for k in order] if slice_z is not None else positions
    normal = np.asarray(affine_ras, dtype=np.float64)[:3, 2]
    volume = Volume(
        source=source,
        format=format,
        slices=slices,
        positions_mm=list(positions),
        shape=tuple(int(s) for s in voxels.shape),
        spacing_mm=zooms,
        acquisition_orientation=acquisition_orientation or orientation_name(normal),
        slice_refs=refs,
    )
    return volume
