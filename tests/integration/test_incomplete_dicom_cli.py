"""The CLI on clinical DICOM that is incomplete or not brain MR: a series without PatientBirthDate gets its
DICOM SR (the attribute left empty), a CT series is a one-line refusal, a knee MR is read and marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from braintumor.cli import app as cli_app  # noqa: E402
from braintumor.data.synthetic_volumes import series_datasets, to_bytes, tumour_stack  # noqa: E402
from braintumor.inference.dicom_sr import read_report_finding  # noqa: E402
from tests.serving.test_serving_guard import save_guarded_bundle  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_guarded_bundle(tmp_path_factory.mktemp("incomplete") / "bundle", name="volume-tiny")


def _series(folder: Path, **attributes: Any) -> Path:
    folder.mkdir(parents=True)
    for index, dataset in enumerate(series_datasets(tumour_stack(6, 32, tumour_slices=range(2, 5), seed=4))):
        for keyword, value in attributes.items():
            if value is None:
                delattr(dataset, keyword)
            else:
                setattr(dataset, keyword, value)
        (folder / f"slice_{index}.dcm").write_bytes(to_bytes(dataset))
    return folder


def _out(result: Any) -> str:
    return " ".join(result.output.split())


def test_a_series_without_birth_date_gets_its_report(bundle_dir: Path, tmp_path: Path) -> None:
    series = _series(tmp_path / "study" / "series", PatientBirthDate=None)
    out = tmp_path / "out"
    result = runner.invoke(
        cli_app,
        ["predict", str(bundle_dir), str(series), "--as-volume", "--json", str(out / "v.json"),
         "--dicom-sr", str(out / "sr.dcm")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "AttributeError" not in result.output
    assert read_report_finding(out / "sr.dcm")["patient_id"] == "SYN-0001"
    assert pydicom.dcmread(out / "sr.dcm").PatientBirthDate == ""


def test_a_ct_series_is_refused_in_one_line(bundle_dir: Path, tmp_path: Path) -> None:
    series = _series(tmp_path / "ct", Modality="CT")
    result = runner.invoke(cli_app, ["predict", str(bundle_dir), str(series), "--as-volume"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "modality CT: this model reads MR images" in _out(result)


def test_a_knee_mr_series_is_read_and_marked(bundle_dir: Path, tmp_path: Path) -> None:
    series = _series(tmp_path / "knee", BodyPartExamined="KNEE")
    out = tmp_path / "v.json"
    result = runner.invoke(cli_app, ["predict", str(bundle_dir), str(series), "--as-volume", "--json", str(out)])
    assert result.exit_code == 0, result.output
    volume = json.loads(out.read_text())["volume"]
    assert volume["header_flag"] == "body part examined KNEE: this model reads brain MR images"
