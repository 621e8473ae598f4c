"""Incomplete and odd clinical DICOM: a series missing a Type 2 or optional attribute, with broken geometry,
duplicated or missing positions or mixed orientations is read with a one-line warning or refused with a
one-line reason, never a traceback; the DICOM SR leaves a Type 2 attribute empty where the source has none."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from braintumor.data.synthetic_volumes import series_datasets, to_bytes, tumour_stack  # noqa: E402
from braintumor.data.volume_core import Volume  # noqa: E402
from braintumor.data.volumes import load_volume_bytes  # noqa: E402
from braintumor.errors import BrainTumorError  # noqa: E402
from braintumor.inference.dicom_sr import TYPE2_FROM_SOURCE, build_report, read_report_finding, save_report  # noqa: E402
from braintumor.inference.volume import SliceResult, VolumeResult, study_finding  # noqa: E402

NAMES = ["glioma", "meningioma", "no_tumor", "pituitary"]
# Type 2 and optional attributes highdicom or the readers touch, each removed in turn.
FUZZED = (
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyTime",
    "StudyDate",
    "PatientName",
    "PatientID",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelSpacing",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SeriesDescription",
    "WindowCenter",
    "RescaleSlope",
    "StudyInstanceUID",
    "SOPInstanceUID",
)


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def _series(edit: Callable[[Any, int], None]) -> bytes:
    """A zipped 5-slice synthetic series with ``edit(dataset, index)`` applied to every slice."""
    datasets = series_datasets(tumour_stack(5, 24, tumour_slices=range(1, 4), seed=3))
    for index, dataset in enumerate(datasets):
        edit(dataset, index)
    return _zip([(f"slice_{index}.dcm", to_bytes(dataset)) for index, dataset in enumerate(datasets)])


def _result(volume: Volume) -> VolumeResult:
    """A study result on ``volume`` without a model: glioma on every slice."""
    probabilities = np.tile([0.7, 0.1, 0.1, 0.1], (len(volume.slices), 1))
    study = study_finding(probabilities, NAMES, flagged=[False] * len(probabilities), gaps_after=volume.gaps_after)
    slices = [
        SliceResult(i, volume.positions_mm[i], "glioma", dict(zip(NAMES, row, strict=True)), False, 0.1,
                    None if ref is None else ref.sop_instance_uid, None if ref is None else ref.frame_number)
        for i, (row, ref) in enumerate(zip(probabilities, volume.slice_refs, strict=True))
    ]  # fmt: skip
    return VolumeResult(volume, slices, study, "fuzz-model", "0" * 12, NAMES)


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


def _read_and_report(data: bytes, tmp_path: Path) -> tuple[Volume | None, dict | str]:
    """The volume (None when refused) and the report read back, or the one-line refusal."""
    try:
        volume = load_volume_bytes(data, "series.zip")
    except BrainTumorError as error:
        return None, _one_line(error)
    try:
        path = save_report(build_report(_result(volume)), tmp_path / "sr.dcm")
    except BrainTumorError as error:
        return volume, _one_line(error)
    return volume, read_report_finding(path)


def _drop(keyword: str, only_first: bool) -> Callable[[Any, int], None]:
    def edit(dataset: Any, index: int) -> None:
        if keyword in dataset and (index == 0 or not only_first):
            delattr(dataset, keyword)

    return edit


@pytest.mark.parametrize("only_first", [False, True], ids=["every-slice", "first-slice"])
@pytest.mark.parametrize("keyword", FUZZED)
def test_a_missing_attribute_is_a_warning_a_clear_refusal_or_a_valid_report(
    keyword: str, only_first: bool, tmp_path: Path
) -> None:
    volume, report = _read_and_report(_series(_drop(keyword, only_first)), tmp_path)
    for warning in [] if volume is None else volume.warnings:
        assert "\n" not in warning
    if keyword in ("StudyInstanceUID", "SOPInstanceUID"):
        assert isinstance(report, str) and f"no {keyword}" in report and "cannot refer" in report
        return
    assert isinstance(report, dict), report
    assert report["finding"] == "glioma" and report["algorithm_name"] == "fuzz-model"
    if keyword in TYPE2_FROM_SOURCE:
        sr = pydicom.dcmread(tmp_path / "sr.dcm")
        assert keyword in sr
        if not only_first:  # the report copies the first image's patient and study
            assert sr[keyword].value in ("", None)
            assert any(keyword in w and "left empty in the DICOM SR" in w for w in volume.warnings)  # type: ignore[union-attr]


def test_a_series_without_patient_birth_date_gets_a_report_with_it_empty(tmp_path: Path) -> None:
    volume, report = _read_and_report(_series(_drop("PatientBirthDate", False)), tmp_path)
    assert isinstance(report, dict) and report["patient_id"] == "SYN-0001"
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert sr.PatientBirthDate == "" and sr.PatientSex == "O"
    assert volume is not None and "the source has no PatientBirthDate: left empty in the DICOM SR" in volume.warnings


def _set(keyword: str, value: Any, which: Callable[[int], bool] = lambda index: True) -> Callable[[Any, int], None]:
    def edit(dataset: Any, index: int) -> None:
        if which(index):
            setattr(dataset, keyword, value)

    return edit


ODD = {
    "zero pixel spacing": (_set("PixelSpacing", [0, 0]), "warning", "no usable PixelSpacing"),
    "one pixel spacing value": (_set("PixelSpacing", [1]), "warning", "no usable PixelSpacing"),
    "zero orientation": (_set("ImageOrientationPatient", [0] * 6), "warning", "ordered by InstanceNumber"),
    "parallel orientation": (_set("ImageOrientationPatient", [1, 0, 0, 1, 0, 0]), "warning", "InstanceNumber"),
    "two-value position": (_set("ImagePositionPatient", [0, 0]), "warning", "ordered by InstanceNumber"),
    "absurd position": (_set("ImagePositionPatient", [0, 0, 1e300], lambda i: i == 2), "warning", "InstanceNumber"),
    "one position missing": (_drop("ImagePositionPatient", True), "warning", "ordered by InstanceNumber"),
    "duplicated position": (_set("ImagePositionPatient", [0, 0, 0], lambda i: i < 2), "refused", "same position"),
    "mixed orientations": (
        _set("ImageOrientationPatient", [0, 1, 0, 0, 0, -1], lambda i: i == 3),
        "refused",
        "mixes image orientations",
    ),
    "zero window width": (_set("WindowWidth", 0), "refused", "display settings"),
    "zero slice thickness": (_set("SliceThickness", 0), "read", ""),
}


@pytest.mark.parametrize("case", sorted(ODD))
def test_odd_geometry_is_a_warning_or_a_one_line_refusal(case: str, tmp_path: Path) -> None:
    edit, outcome, text = ODD[case]
    volume, report = _read_and_report(_series(edit), tmp_path)
    if outcome == "refused":
        assert volume is None and isinstance(report, str) and text in report and report.startswith("series.zip: ")
        return
    assert volume is not None and len(volume.slices) == 5
    assert all("\n" not in warning for warning in volume.warnings)
    if outcome == "warning":
        assert any(text in warning for warning in volume.warnings), volume.warnings
    assert isinstance(report, dict), report
