"""A DICOM whose header names another body region than the head gets no diagnosis: the Python API, the CLI's
volume output and the service all mark it flagged with the header's reason; a non-MR DICOM is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")

from fastapi.testclient import TestClient  # noqa: E402

import braintumor  # noqa: E402
from braintumor.data.synthetic_volumes import series_datasets, to_bytes, tumour_stack  # noqa: E402
from braintumor.serving.app import create_app  # noqa: E402
from tests.serving.test_serving_guard import save_guarded_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_guarded_bundle(tmp_path_factory.mktemp("header") / "bundle")


def _series(folder: Path, **attributes: object) -> Path:
    folder.mkdir(parents=True)
    for index, dataset in enumerate(series_datasets(tumour_stack(4, 32, seed=3))):
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        (folder / f"slice_{index}.dcm").write_bytes(to_bytes(dataset))
    return folder


def test_a_knee_mr_slice_has_no_diagnosis_in_python_and_over_http(bundle: Path, tmp_path: Path) -> None:
    knee = _series(tmp_path / "knee", BodyPartExamined="KNEE") / "slice_0.dcm"
    prediction = braintumor.load(bundle).predict(knee)[0]
    assert prediction.flagged is True and prediction.class_name is None
    assert "DICOM header" in prediction.flag_reason and "KNEE" in prediction.flag_reason.upper()
    client = TestClient(create_app(bundle))
    answer = client.post("/v1/predict", files={"file": ("knee.dcm", knee.read_bytes(), "application/dicom")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["class_name"] is None and body["flagged"] is True and "DICOM header" in body["flag_reason"]


def test_a_head_mr_slice_goes_to_the_pixel_guard(bundle: Path, tmp_path: Path) -> None:
    head = _series(tmp_path / "head", BodyPartExamined="HEAD") / "slice_0.dcm"
    prediction = braintumor.load(bundle).predict(head)[0]
    assert prediction.flag_reason is None or "DICOM header" not in prediction.flag_reason


def test_a_knee_series_has_no_study_finding_and_every_slice_says_why(bundle: Path, tmp_path: Path) -> None:
    folder = _series(tmp_path / "knee-series", BodyPartExamined="KNEE")
    result = braintumor.load(bundle).predict_volume(folder)
    assert all(item.out_of_distribution and "DICOM header" in item.flag_reason for item in result.slices)
    assert result.study.finding == "indeterminate"


def test_a_ct_file_is_refused_with_the_modality(bundle: Path, tmp_path: Path) -> None:
    ct = _series(tmp_path / "ct", Modality="CT") / "slice_0.dcm"
    predictions = braintumor.load(bundle).predict(ct)
    assert len(predictions) == 0 and "CT" in predictions.skipped[0].reason
