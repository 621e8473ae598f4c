"""The DICOM header gate before the network: another modality than MR is refused (a single file, a series
folder, a zip), an MR whose header names another body region is flagged with the reason, a head or brain MR
and a header that says nothing pass."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset  # noqa: E402

from braintumor.data.dicom import HEADER_FLAG_KEY, dicom_frames  # noqa: E402
from braintumor.data.images import decode_image_bytes  # noqa: E402
from braintumor.data.synthetic_volumes import series_datasets, to_bytes, tumour_stack  # noqa: E402
from braintumor.data.volumes import load_volume, load_volume_bytes  # noqa: E402
from braintumor.errors import ImageDecodeError  # noqa: E402
from braintumor.guard.dicom_header import HeaderRefusedError, HeaderVerdict, check_dicom_header  # noqa: E402

REFUSED_MODALITIES = ("CT", "US", "NM", "CR", "DX")


def _datasets(**attributes: Any) -> list[Any]:
    datasets = series_datasets(tumour_stack(4, 16, seed=5))
    for dataset in datasets:
        for keyword, value in attributes.items():
            if value is None:
                delattr(dataset, keyword)
            else:
                setattr(dataset, keyword, value)
    return datasets


def _zip(datasets: list[Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index, dataset in enumerate(datasets):
            archive.writestr(f"series/slice_{index}.dcm", to_bytes(dataset))
    return buffer.getvalue()


def _folder(tmp_path: Path, datasets: list[Any]) -> Path:
    folder = tmp_path / "series"
    folder.mkdir()
    for index, dataset in enumerate(datasets):
        (folder / f"slice_{index}.dcm").write_bytes(to_bytes(dataset))
    return folder


def _header(**attributes: Any) -> Dataset:
    dataset = Dataset()
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


def test_the_verdicts_of_the_pure_function() -> None:
    assert check_dicom_header(_header(Modality="CT")) == HeaderVerdict(
        "refuse", "modality CT: this model reads MR images"
    )
    assert check_dicom_header(_header(Modality="MR", BodyPartExamined="HEAD")).action == "pass"
    assert check_dicom_header(_header()).action == "pass"  # nothing known: the pixel guard decides
    assert check_dicom_header(_header(Modality="MR", BodyPartExamined="FOO")).action == "pass"
    flagged = check_dicom_header(_header(Modality="MR", StudyDescription="MRI L-SPINE w/o"))
    assert flagged.action == "flag" and flagged.reason.startswith("study description MRI L-SPINE w/o: ")
    assert check_dicom_header(_header(SeriesDescription="T2_AX_BRAIN", StudyDescription="HEAD NECK")).action == "pass"
    region = _header(Modality="MR")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-D4000", "SRT", "Abdomen"
    region.AnatomicRegionSequence = [item]
    assert check_dicom_header(region) == HeaderVerdict(
        "flag", "anatomic region Abdomen: this model reads brain MR images"
    )


@pytest.mark.parametrize("modality", REFUSED_MODALITIES)
def test_another_modality_is_refused_as_a_file_a_folder_and_a_zip(modality: str, tmp_path: Path) -> None:
    datasets = _datasets(Modality=modality)
    expected = f"modality {modality}: this model reads MR images"
    with pytest.raises(HeaderRefusedError) as single:
        decode_image_bytes(to_bytes(datasets[0]), "slice_0.dcm")
    assert str(single.value) == f"slice_0.dcm: {expected}" and isinstance(single.value, ImageDecodeError)
    with pytest.raises(HeaderRefusedError) as folder:
        load_volume(_folder(tmp_path, datasets))
    assert "\n" not in str(folder.value) and str(folder.value).endswith(expected) and "slice_" in str(folder.value)
    with pytest.raises(HeaderRefusedError) as archive:
        load_volume_bytes(_zip(datasets), "export.zip")
    assert str(archive.value).startswith("export.zip: series/slice_") and str(archive.value).endswith(expected)


@pytest.mark.parametrize("part", ["KNEE", "ABDOMEN"])
def test_an_mr_of_another_body_part_is_flagged_with_the_reason(part: str, tmp_path: Path) -> None:
    datasets = _datasets(BodyPartExamined=part)
    reason = f"body part examined {part}: this model reads brain MR images"
    image = decode_image_bytes(to_bytes(datasets[0]), "slice_0.dcm")
    assert image.info[HEADER_FLAG_KEY] == reason
    volume = load_volume_bytes(_zip(datasets), "export.zip")
    assert volume.header_flag == reason and volume.describe()["header_flag"] == reason
    assert f"flagged by its DICOM header: {reason}" in volume.warnings
    assert load_volume(_folder(tmp_path, datasets)).header_flag == reason


@pytest.mark.parametrize("attributes", [{"BodyPartExamined": "HEAD"}, {"BodyPartExamined": "BRAIN"}, {}])
def test_a_head_or_brain_mr_passes(attributes: dict[str, str]) -> None:
    datasets = _datasets(**attributes)
    image = decode_image_bytes(to_bytes(datasets[0]), "slice_0.dcm")
    assert HEADER_FLAG_KEY not in image.info
    volume = load_volume_bytes(_zip(datasets), "export.zip")
    assert volume.header_flag is None and volume.describe()["header_flag"] is None


def test_a_series_without_modality_passes_to_the_pixel_guard() -> None:
    volume = load_volume_bytes(_zip(_datasets(Modality=None)), "export.zip")
    assert volume.header_flag is None and len(volume.slices) == 4


def test_a_multi_frame_file_of_another_modality_is_refused() -> None:
    dataset = _datasets(Modality="CT")[0]
    dataset.NumberOfFrames = 2
    dataset.PixelData = np.zeros((2, 16, 16), dtype=np.uint16).tobytes()
    with pytest.raises(HeaderRefusedError, match="modality CT: this model reads MR images"):
        dicom_frames(to_bytes(dataset), "multi.dcm")
    with pytest.raises(HeaderRefusedError, match=r"^multi\.dcm: multi\.dcm: modality CT"):
        load_volume_bytes(to_bytes(dataset), "multi.dcm")
