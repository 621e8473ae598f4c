"""Synthetic volumes for tests, demos and benchmarks: NIfTI files and DICOM series made from numpy arrays.

The DICOM series carry real geometry (``ImageOrientationPatient``, ``ImagePositionPatient``, ``PixelSpacing``),
study/series/instance UIDs and a made-up patient, so the readers' ordering, reorientation and the structured
report are exercised as with a scanner's export; ``transfer_syntax`` compresses them (RLE Lossless natively,
JPEG 2000 or JPEG-LS with the pylibjpeg/pyjpegls encoders). :func:`enhanced_multiframe_bytes` turns a series
into one Enhanced MR file with per-frame functional groups (highdicom's legacy conversion).

Example:
    >>> stack = tumour_stack(6, 32, tumour_class="glioma", tumour_slices=range(2, 5))
    >>> stack.shape, stack.dtype.name
    ((6, 32, 32), 'uint16')
    >>> files = dicom_series_bytes(stack)
    >>> len(files), files[0][0]
    (6, 'slice_000.dcm')
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable

import numpy as np

from braintumor.data.synthetic import synthetic_image

# Row and column direction cosines (LPS) per acquisition plane, as scanners write them.
ORIENTATIONS = {
    "axial": ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
    "coronal": ([1.0, 0.0, 0.0], [0.0, 0.0, -1.0]),
    "sagittal": ([0.0, 1.0, 0.0], [0.0, 0.0, -1.0]),
}


def tumour_stack(
    n_slices: int,
    size: int,
    *,
    tumour_class: str = "glioma",
    tumour_slices: Iterable[int] = (),
    seed: int = 0,
) -> np.ndarray:
    """``[slices, rows, cols]`` uint16 slices: synthetic heads, the tumour class's blob on ``tumour_slices``."""
    rng = np.random.default_rng(seed)
    chosen = set(tumour_slices)
    planes = []
    for index in range(n_slices):
        image = synthetic_image(tumour_class if index in chosen else "no_tumor", size, rng)
        planes.append(np.asarray(image.convert("L"), dtype=np.uint16) * 16)  # 12-bit-like stored values
    return np.stack(planes)


def _dataset(plane: np.ndarray, index: int, geometry: dict, uids: dict, options: dict):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Synthetic^Test", "SYN-0001", "19700101", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "SYN1", ""
    ds.StudyDate, ds.StudyTime, ds.SeriesDate, ds.SeriesTime = "20240101", "120000", "20240101", "120000"
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", options["series_number"], index + 1
    ds.SeriesDescription, ds.Manufacturer = options["description"], "braintumor synthetic"
    ds.ImageType, ds.ScanningSequence, ds.SequenceVariant = ["ORIGINAL", "PRIMARY"], "SE", "NONE"
    ds.ScanOptions, ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "", "2D", 10.0, 500.0
    ds.EchoTrainLength, ds.PatientPosition, ds.PositionReferenceIndicator = 1, "HFS", ""
    ds.ImageOrientationPatient = [*geometry["row"], *geometry["column"]]
    ds.ImagePositionPatient = [float(v) for v in geometry["origin"] + index * geometry["step"]]
    ds.PixelSpacing = [options["pixel_spacing"], options["pixel_spacing"]]
    ds.SliceThickness = ds.SpacingBetweenSlices = options["slice_spacing"]
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    if options["window"] is not None:
        ds.WindowCenter, ds.WindowWidth = options["window"]
    ds.PixelData = np.ascontiguousarray(plane, dtype=np.uint16).tobytes()
    return ds


def series_datasets(
    stack: np.ndarray,
    *,
    orientation: str = "axial",
    pixel_spacing: float = 1.0,
    slice_spacing: float = 2.5,
    description: str = "T1 axial (synthetic)",
    window: tuple[float, float] | None = (2048.0, 4096.0),
    series_number: int = 1,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str | None = None,
) -> list:
    """One pydicom dataset per slice of ``stack`` (``[slices, rows, cols]``), slice 0 first along the normal."""
    from pydicom.uid import generate_uid

    row, column = (np.asarray(v) for v in ORIENTATIONS[orientation])
    normal = np.cross(row, column)
    geometry = {
        "row": list(row),
        "column": list(column),
        "origin": np.array([-120.0, -120.0, -60.0]),
        "step": normal * slice_spacing,
    }
    uids = {
        "study": study_uid or generate_uid(),
        "series": series_uid or generate_uid(),
        "frame_of_reference": generate_uid(),
    }
    options = {
        "pixel_spacing": pixel_spacing,
        "slice_spacing": slice_spacing,
        "description": description,
        "window": window,
        "series_number": series_number,
    }
    datasets = [_dataset(plane, index, geometry, uids, options) for index, plane in enumerate(stack)]
    if transfer_syntax is not None:
        for ds in datasets:
            ds.compress(transfer_syntax)
    return datasets


def to_bytes(dataset) -> bytes:
    """A dataset as a DICOM file (preamble and file meta included)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_series_bytes(stack: np.ndarray, **options) -> list[tuple[str, bytes]]:
    """``(file name, DICOM bytes)`` per slice; the options are those of :func:`series_datasets`."""
    return [(f"slice_{index:03d}.dcm", to_bytes(ds)) for index, ds in enumerate(series_datasets(stack, **options))]


def enhanced_multiframe_bytes(stack: np.ndarray, **options) -> bytes:
    """The series of :func:`series_datasets` as one Enhanced MR multi-frame file (per-frame positions)."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage
    from pydicom.uid import generate_uid

    datasets = series_datasets(stack, **options)
    image = LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets,
        series_instance_uid=generate_uid(),
        series_number=datasets[0].SeriesNumber + 100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    return to_bytes(image)


def nifti_bytes(voxels: np.ndarray, affine: np.ndarray | None = None, *, compress: bool = True) -> bytes:
    """A NIfTI-1 file of ``voxels`` (any dimensions), gzipped like a ``.nii.gz`` unless ``compress`` is False."""
    import nibabel as nib

    raw = nib.Nifti1Image(np.asarray(voxels), np.eye(4) if affine is None else affine).to_bytes()
    return gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw


def stack_to_ras(stack: np.ndarray, slice_spacing: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Axial slices ``[slices, rows, cols]`` (radiological view) as NIfTI voxels ``[x, y, z]`` and a RAS affine.

    The inverse of the readers' display step, so a NIfTI made this way shows the same slices as the series.

    Example:
        >>> voxels, affine = stack_to_ras(np.zeros((3, 4, 5)))
        >>> voxels.shape, float(affine[2, 2])
        ((5, 4, 3), 2.5)
    """
    voxels = np.ascontiguousarray(np.transpose(stack, (2, 1, 0))[::-1, ::-1, :])
    return voxels, np.diag([1.0, 1.0, slice_spacing, 1.0])
