"""Issue 16, predicting volumes: per-slice results, the study rule, the CLI (CSV, JSON, montage, DICOM SR read
back) and ``POST /v1/predict/volume`` with every hostile input answered clearly while the service keeps going."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("nibabel")
pytest.importorskip("highdicom")

from typer.testing import CliRunner  # noqa: E402

from braintumor.bundle import load_bundle  # noqa: E402
from braintumor.cli import app as cli_app  # noqa: E402
from braintumor.data.synthetic_volumes import (  # noqa: E402
    dicom_series_bytes,
    nifti_bytes,
    series_datasets,
    stack_to_ras,
    to_bytes,
    tumour_stack,
)
from braintumor.data.volumes import load_volume, load_volume_bytes  # noqa: E402
from braintumor.inference import Predictor  # noqa: E402
from braintumor.inference.dicom_sr import read_report_finding  # noqa: E402
from braintumor.inference.volume import StudyRule, predict_volume, study_finding  # noqa: E402
from tests.serving.test_serving_guard import make_client, save_guarded_bundle  # noqa: E402

NAMES = ["glioma", "meningioma", "no_tumor", "pituitary"]
runner = CliRunner()


def _out(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_guarded_bundle(tmp_path_factory.mktemp("volume") / "bundle", name="volume-tiny")


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return tumour_stack(10, 48, tumour_slices=range(3, 7), seed=2)


@pytest.fixture(scope="module")
def series_files(stack: np.ndarray) -> list[tuple[str, bytes]]:
    return dicom_series_bytes(stack)


@pytest.fixture()
def series_folder(tmp_path: Path, series_files: list[tuple[str, bytes]]) -> Path:
    folder = tmp_path / "study" / "series"
    folder.mkdir(parents=True)
    for name, data in series_files:
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def client(bundle_dir: Path):
    return make_client(bundle_dir, max_volume_upload_bytes=2_000_000, max_archive_bytes=4_000_000)


def _zip(members: dict[str, bytes], *, ratio_safe: bool = False) -> bytes:
    """Members deflated; with ``ratio_safe`` at level 1 with a pinch of noise, so each expands under 200 times."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1 if ratio_safe else None) as archive:
        for index, (name, data) in enumerate(members.items()):
            if ratio_safe:
                data = data[:-20_000] + np.random.default_rng(index).bytes(20_000)
            archive.writestr(name, data)
    return buffer.getvalue()


def test_study_rule_needs_consecutive_unflagged_slices() -> None:
    probabilities = np.array([[0.1, 0.1, 0.8, 0.0]] * 2 + [[0.8, 0.1, 0.1, 0.0]] * 3 + [[0.1, 0.1, 0.8, 0.0]])
    found = study_finding(probabilities, NAMES, flagged=[False] * 6, gaps_after=[])
    assert (found.finding, found.run, found.peak_slice) == ("glioma", [2, 4], 2)
    assert found.per_class["glioma"]["longest_run"] == 3 and not found.per_class["meningioma"]["qualifies"]
    flagged = study_finding(probabilities, NAMES, flagged=[False, False, False, True, False, False], gaps_after=[])
    assert flagged.finding == "no_tumor"  # the guard broke the run
    assert study_finding(probabilities, NAMES, flagged=[True] * 5 + [False], gaps_after=[]).finding == "indeterminate"
    assert study_finding(probabilities, NAMES, flagged=[False] * 6, gaps_after=[],
                         rule=StudyRule(threshold=0.9)).finding == "no_tumor"  # fmt: skip
    # Two qualifying classes: the higher probability inside its run wins.
    two = np.array([[0.6, 0.3, 0.1, 0.0]] * 3 + [[0.1, 0.05, 0.05, 0.8]] * 3)
    assert study_finding(two, NAMES, flagged=[False] * 6, gaps_after=[]).finding == "pituitary"


def test_shuffled_series_predicts_the_same_per_slice_result(bundle_dir: Path, series_files: list) -> None:
    predictor = Predictor(load_bundle(bundle_dir))
    shuffled = series_files[:]
    random.Random(7).shuffle(shuffled)
    ordered = predict_volume(predictor, load_volume_bytes(_zip(dict(series_files)), "ordered.zip"))
    mixed = predict_volume(predictor, load_volume_bytes(_zip(dict(shuffled)), "shuffled.zip"))
    assert [s.probabilities for s in mixed.slices] == [s.probabilities for s in ordered.slices]
    assert [s.sop_instance_uid for s in mixed.slices] == [s.sop_instance_uid for s in ordered.slices]
    assert [s.ood_score for s in mixed.slices] == [s.ood_score for s in ordered.slices]
    assert mixed.study == ordered.study
    # Each slice is predicted exactly as the same image given to predict as a 2D slice.
    probabilities, _ = predictor.predict_images_guarded(ordered.volume.slices[:2])
    assert ordered.slices[1].probabilities["glioma"] == pytest.approx(float(probabilities[1][0]), abs=1e-6)


def test_cli_predict_writes_csv_json_montage_and_a_dicom_sr(
    bundle_dir: Path, series_folder: Path, tmp_path: Path, stack: np.ndarray
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        cli_app,
        ["predict", str(bundle_dir), str(series_folder), "--as-volume", "--csv", str(out / "s.csv"),
         "--json", str(out / "s.json"), "--montage", str(out / "m.png"), "--dicom-sr", str(out / "sr.dcm")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "study finding:" in _out(result)
    rows = list(csv.DictReader((out / "s.csv").open()))
    assert len(rows) == len(stack) and {"position_mm", "p_glioma", "ood_score", "sop_instance_uid"} <= set(rows[0])
    payload = json.loads((out / "s.json").read_text())
    assert payload["study"]["rule"].startswith("a tumour class is reported") and len(payload["slices"]) == len(stack)
    assert (out / "m.png").stat().st_size > 10_000
    source = pydicom.dcmread(series_folder / "slice_000.dcm")
    report = read_report_finding(out / "sr.dcm")
    assert report["finding"] == payload["study"]["finding"]
    assert (report["study_uid"], report["series_uid"]) == (source.StudyInstanceUID, source.SeriesInstanceUID)
    peak = payload["slices"][payload["study"]["peak_slice"]]
    assert report["peak_sop_instance_uid"] == peak["sop_instance_uid"]
    assert (report["algorithm_name"], report["algorithm_version"]) == ("volume-tiny", payload["model"]["version"])
    sr = pydicom.dcmread(out / "sr.dcm")
    assert sr.Modality == "SR" and sr.PatientID == source.PatientID and sr.PatientName == source.PatientName
    assert "PatientBirthDate" not in sr or sr.PatientBirthDate == source.PatientBirthDate
    assert not list(series_folder.glob("*sr*"))  # nothing was written into the source folder


def test_cli_refuses_sr_in_the_source_folder_and_for_nifti(bundle_dir: Path, series_folder: Path, tmp_path: Path,
                                                            stack: np.ndarray) -> None:  # fmt: skip
    inside = runner.invoke(
        cli_app,
        ["predict", str(bundle_dir), str(series_folder), "--as-volume", "--dicom-sr", str(series_folder / "sr.dcm")],
    )
    assert inside.exit_code == 2 and "source series folder" in _out(inside) and "Traceback" not in _out(inside)
    assert not (series_folder / "sr.dcm").exists()
    allowed = runner.invoke(
        cli_app,
        ["predict", str(bundle_dir), str(series_folder), "--as-volume", "--dicom-sr", str(series_folder / "sr.dcm"),
         "--sr-in-source"],
    )  # fmt: skip
    assert allowed.exit_code == 0 and (series_folder / "sr.dcm").exists()
    voxels, affine = stack_to_ras(stack)
    nifti = tmp_path / "scan.nii.gz"
    nifti.write_bytes(nifti_bytes(voxels, affine))
    refused = runner.invoke(cli_app, ["predict", str(bundle_dir), str(nifti), "--dicom-sr", str(tmp_path / "x.dcm")])
    assert refused.exit_code == 2 and "--dicom-sr needs DICOM input" in _out(refused)
    explained = runner.invoke(cli_app, ["explain", str(bundle_dir), str(nifti), "--out", str(tmp_path / "ex")])
    assert explained.exit_code == 0, explained.output
    assert {p.name for p in (tmp_path / "ex").iterdir()} == {"montage.png", "slices.csv", "explanations.json"}
    assert len(json.loads((tmp_path / "ex" / "explanations.json").read_text())["montage"]["slices"]) == 6


def test_cli_mixed_series_folder_stops_with_the_list(bundle_dir: Path, tmp_path: Path, stack: np.ndarray) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for prefix, files in (("a", dicom_series_bytes(stack)), ("b", dicom_series_bytes(stack[:3], description="B"))):
        for name, data in files:
            (folder / f"{prefix}_{name}").write_bytes(data)
    result = runner.invoke(cli_app, ["predict", str(bundle_dir), str(folder), "--as-volume"])
    assert result.exit_code == 2 and "holds 2 series: choose one with --series UID" in _out(result)
    assert "Traceback" not in _out(result)
    uid = pydicom.dcmread(folder / "b_slice_000.dcm").SeriesInstanceUID
    chosen = runner.invoke(cli_app, ["predict", str(bundle_dir), str(folder), "--series", uid])
    assert chosen.exit_code == 0 and "3 axial slices" in _out(chosen)


def test_cli_bad_volumes_are_one_line_errors(bundle_dir: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat.nii.gz"
    flat.write_bytes(nifti_bytes(np.zeros((8, 8), dtype=np.int16)))
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(_zip({"a.dcm": bytes(8_000_000)}))
    for path, message in ((flat, "is a 2D image"), (bomb, "zip bomb")):
        result = runner.invoke(cli_app, ["predict", str(bundle_dir), str(path)])
        assert result.exit_code == 2 and message in _out(result) and "Traceback" not in _out(result)


def _post(client, data: bytes, name: str, **params: object):
    return client.post("/v1/predict/volume", params=params, files={"file": (name, data, "application/octet-stream")})


def test_api_predicts_a_nifti_and_a_zipped_series(client, stack: np.ndarray, series_files: list) -> None:
    voxels, affine = stack_to_ras(stack)
    response = _post(client, nifti_bytes(voxels, affine), "scan.nii.gz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["volume"]["format"] == "NIFTI" and len(body["slices"]) == len(stack)
    assert body["study"]["finding"] in {*NAMES, "indeterminate"} and body["study"]["threshold"] == 0.5
    assert body["slices"][0]["out_of_distribution"] in (True, False) and body["peak_image_kind"] == "gradcam"
    assert base64.b64decode(body["peak_image_png"]).startswith(b"\x89PNG")
    series = client.post(
        "/v1/predict/volume", content=_zip(dict(series_files)), headers={"content-type": "application/zip"}
    )
    assert series.status_code == 200, series.text
    uid = pydicom.dcmread(io.BytesIO(series_files[0][1])).SeriesInstanceUID
    assert series.json()["volume"]["series_uid"] == uid and series.json()["slices"][0]["sop_instance_uid"]


def _hostile_uploads(stack: np.ndarray, series_files: list) -> list[tuple[str, bytes, int, str]]:
    link = io.BytesIO()
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    mixed = {**{f"a/{n}": d for n, d in series_files}, **{f"b/{n}": d for n, d in dicom_series_bytes(stack[:3])}}
    gap = dict(series_files[:4] + series_files[6:])
    junk = {**dict(series_files), "readme.txt": b"hello"}
    no_pixels = series_datasets(stack[:1])[0]
    del no_pixels.PixelData
    truncated = {name: data[: len(data) // 3] for name, data in series_files}
    return [
        ("bomb.zip", _zip({"a.dcm": bytes(3_000_000)}), 422, "zip bomb"),
        ("evil.zip", _zip({"../evil.dcm": series_files[0][1]}), 422, "points outside the archive"),
        ("link.zip", link.getvalue(), 422, "symbolic link"),
        ("mixed.zip", _zip(mixed), 422, "holds 2 series: choose one"),
        ("gap.zip", _zip(gap), 200, "missing slices"),
        ("junk.zip", _zip(junk), 200, "skipped readme.txt: not a DICOM file"),
        ("cut.zip", _zip(truncated), 422, "no image of the series could be decoded"),
        ("report.dcm", to_bytes(no_pixels), 422, "has no pixel data"),
        ("flat.nii.gz", nifti_bytes(np.zeros((8, 8), dtype=np.int16)), 422, "is a 2D image"),
        ("5d.nii.gz", nifti_bytes(np.zeros((4, 4, 4, 2, 2), dtype=np.int16)), 422, "is a 5D image"),
        ("huge.zip", _zip({f"{i}.dcm": np.random.default_rng(i).bytes(1_100_000) for i in range(4)}), 413, "larger"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(100), 415, "not a volume"),
    ]


def test_api_hostile_volumes_are_clear_and_the_service_keeps_answering(
    client, stack: np.ndarray, series_files: list
) -> None:
    for name, data, status, message in _hostile_uploads(stack, series_files):
        response = _post(client, data, name)
        assert response.status_code == status, (name, response.text)
        text = json.dumps(response.json())
        assert message in text, (name, text)
        assert client.get("/v1/health").json()["status"] == "ok"
    # An archive that expands past the service's limit, though its upload is small.
    spread = _zip({f"{i}.dcm": bytes(1_000_000) for i in range(5)}, ratio_safe=True)
    over = _post(client, spread, "spread.zip")
    assert over.status_code == 422 and "over the limit of 4,000,000 bytes" in over.json()["detail"]
    mixed = {**{f"a/{n}": d for n, d in series_files}, **{f"b/{n}": d for n, d in dicom_series_bytes(stack[:3])}}
    uid = pydicom.dcmread(io.BytesIO(mixed["b/slice_000.dcm"])).SeriesInstanceUID
    chosen = _post(client, _zip(mixed), "mixed.zip", series=uid)
    assert chosen.status_code == 200 and len(chosen.json()["slices"]) == 3


def test_folder_and_zip_of_the_same_series_agree(series_folder: Path, series_files: list) -> None:
    folder = load_volume(series_folder)
    archive = load_volume_bytes(_zip(dict(series_files)), "series.zip")
    assert folder.positions_mm == archive.positions_mm and folder.series.series_uid == archive.series.series_uid


def test_service_volume_limits_default_to_the_readers_defaults() -> None:
    from braintumor.data import archives, volume_core
    from braintumor.serving import settings

    for name in ("DEFAULT_MAX_ARCHIVE_BYTES", "DEFAULT_MAX_MEMBERS", "DEFAULT_MAX_RATIO"):
        assert getattr(settings, name) == getattr(archives, name)
    for name in ("DEFAULT_MAX_VOXELS", "DEFAULT_MAX_SLICES"):
        assert getattr(settings, name) == getattr(volume_core, name)


def test_cli_reads_a_folder_of_one_series_as_a_volume_without_as_volume(
    bundle_dir: Path, series_folder: Path, tmp_path: Path
) -> None:
    result = runner.invoke(cli_app, ["predict", str(bundle_dir), str(series_folder)])
    assert result.exit_code == 0, _out(result)
    assert "holds one DICOM series" in _out(result) and "study finding" in _out(result)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(images / name)
    plain = runner.invoke(cli_app, ["predict", str(bundle_dir), str(images)])
    assert plain.exit_code == 0 and "DICOM series" not in _out(plain) and "study finding" not in _out(plain)
