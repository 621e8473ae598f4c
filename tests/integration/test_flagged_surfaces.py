"""An input the input guard flags gets no diagnosis on any surface.

Inputs nothing like a brain MRI slice (a photo-like image of saturated colours, a white page with dark lines of
"text", and the four uploads that used to get a diagnosis beside their flag: a colour gradient, colour noise, a
blank white image and 16-bit grey noise) go through every surface: the Python API, ``predict --json`` and
``--csv``, ``/v1/predict``, ``/v1/explain``, ``braintumor explain``, ``evaluate``'s ``predictions.csv``, the MLflow
pyfunc model, TTA, an ensemble and batch prediction's shards. None of them gives a class; each says the input was
flagged and why. A CT stored as DICOM is refused by its header on every surface that reads DICOM, with the
modality as the reason.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import braintumor
from braintumor.api import FLAG_REASON
from braintumor.cli import app
from tests.serving.test_serving_guard import make_client

KINDS = ("photo", "text", "gradient", "colour_noise", "blank_white", "grey_noise_16bit")


def photo_like(seed: int = 0) -> Image.Image:
    """Blocks of random saturated colours, smoothed a little: a holiday photo as far as the guard can tell."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    blocks[..., rng.integers(0, 3)] = 255  # one channel at full strength: saturated colours
    return Image.fromarray(blocks).resize((160, 120), Image.Resampling.BILINEAR)


def text_like() -> Image.Image:
    """A white page with dark lines where text would be."""
    page = Image.new("RGB", (120, 160), (250, 250, 250))
    draw = ImageDraw.Draw(page)
    for top in range(14, 150, 12):
        draw.text((10, top), "The quick brown fox jumps", fill=(20, 20, 20))
    return page


def gradient() -> Image.Image:
    """A smooth colour gradient, as a photo's sky or a slide background."""
    x, y = np.meshgrid(np.linspace(0, 1, 160), np.linspace(0, 1, 120))
    return Image.fromarray((np.stack([x, y, 1 - x], axis=-1) * 255).astype(np.uint8))


def colour_noise(seed: int = 1) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8))


def grey_noise_16bit(seed: int = 2) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 65536, (120, 160), dtype=np.uint16))


@pytest.fixture(scope="module")
def flagged_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("flagged-inputs")
    images = {
        "photo": photo_like(),
        "text": text_like(),
        "gradient": gradient(),
        "colour_noise": colour_noise(),
        "blank_white": Image.new("RGB", (120, 160), (255, 255, 255)),
        "grey_noise_16bit": grey_noise_16bit(),
    }
    files = {kind: folder / f"{kind}.png" for kind in KINDS}
    for kind, image in images.items():
        image.save(files[kind])
    return files


def _assert_no_class(record: dict[str, Any], class_key: str = "class_name") -> None:
    assert record[class_key] in (None, ""), record
    # The reason says what the guard saw (e.g. a colour image); every surface gives one.
    assert record["flagged"] in (True, "1", 1) and isinstance(record["flag_reason"], str), record
    assert record["flag_reason"], record


@pytest.mark.parametrize("kind", KINDS)
def test_python_api_and_predict_cli(trained_run, flagged_files: dict[str, Path], kind: str, tmp_path: Path) -> None:
    path = flagged_files[kind]
    prediction = braintumor.load(trained_run.bundle_dir).predict(path)[0]
    assert prediction.class_name is None and prediction.flagged is True and prediction.flag_reason
    assert prediction.diagnosis.startswith("no diagnosis")
    json_out, csv_out = tmp_path / "p.json", tmp_path / "p.csv"
    args = ["predict", str(trained_run.bundle_dir), str(path), "--json", str(json_out), "--csv", str(csv_out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    _assert_no_class(json.loads(json_out.read_text())["predictions"][0])
    with csv_out.open(encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    assert row["class"] == "" and row["out_of_distribution"] == "1" and row["flag_reason"]


@pytest.fixture(scope="module")
def client(trained_run) -> Any:
    return make_client(trained_run.bundle_dir)


@pytest.mark.parametrize("kind", KINDS)
def test_service_predict_and_explain(client: Any, flagged_files: dict[str, Path], kind: str) -> None:
    data = flagged_files[kind].read_bytes()
    body = client.post("/v1/predict", files={"file": ("x.png", data, "image/png")}).json()
    _assert_no_class(body)
    assert body["out_of_distribution"] is True and "not a diagnosis" in body["warning"]
    explained = client.post("/v1/explain", files={"file": ("x.png", data, "image/png")})
    assert explained.status_code == 409 and explained.headers["x-flagged"] == "true"
    assert explained.headers["content-type"].startswith("application/json")


def test_explain_cli_draws_no_heat_map(trained_run, flagged_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "explained"
    args = ["explain", str(trained_run.bundle_dir), *map(str, flagged_files.values()), "--out", str(out), "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["images"] == [] and {Path(item["path"]).stem for item in summary["flagged"]} == set(KINDS)
    assert all(item["flag_reason"] for item in summary["flagged"])
    assert not list(out.glob("*.png"))


def test_evaluate_predictions_csv(
    trained_run, synthetic_root: Path, flagged_files: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "data"
    for folder in sorted((synthetic_root / "Testing").iterdir()):
        (root / "Testing" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:2]:
            shutil.copy(image, root / "Testing" / folder.name / image.name)
    for kind, path in flagged_files.items():
        shutil.copy(path, root / "Testing" / "glioma_tumor" / f"{kind}.png")
    evaluation = braintumor.load(trained_run.bundle_dir).evaluate(data=root, split="Testing", out=tmp_path / "eval")
    assert evaluation.metrics.n_images == 8 + len(KINDS)  # every image counts in the metrics, as before
    with (tmp_path / "eval" / "predictions.csv").open(encoding="utf-8") as handle:
        rows = {Path(row["path"]).stem: row for row in csv.DictReader(handle)}
    for kind in KINDS:
        _assert_no_class(rows[kind], "predicted_class")


def test_mlflow_pyfunc(trained_run, flagged_files: dict[str, Path]) -> None:
    pytest.importorskip("mlflow")
    pd = pytest.importorskip("pandas")
    from braintumor.inference.mlflow_model import BUNDLE_ARTIFACT, BundlePyfunc

    model = BundlePyfunc()
    model.load_context(SimpleNamespace(artifacts={BUNDLE_ARTIFACT: str(trained_run.bundle_dir)}))
    frame = model.predict(None, pd.DataFrame({"image": [path.read_bytes() for path in flagged_files.values()]}))
    assert frame["class"].tolist() == [None] * len(KINDS)
    assert frame["flagged"].tolist() == [True] * len(KINDS) and all(frame["flag_reason"])


def test_every_surface_gives_the_same_reason() -> None:
    from braintumor.inference.volume_outputs import FLAG_REASON as OUTPUT_REASON

    assert OUTPUT_REASON == FLAG_REASON


def test_tta_ensemble_and_batch_predictions(trained_run, flagged_files: dict[str, Path], tmp_path: Path) -> None:
    from braintumor.batch import read_shards

    model = braintumor.load(trained_run.bundle_dir)
    tta = model.predict(list(flagged_files.values()), tta=True)
    assert len(tta) == len(KINDS)
    for prediction in tta:
        assert prediction.class_name is None and prediction.flagged and prediction.flag_reason
    pair = braintumor.ensemble([trained_run.bundle_dir, trained_run.bundle_dir], tmp_path / "pair", show_progress=False)
    for prediction in pair.predict(list(flagged_files.values())):
        assert prediction.class_name is None and prediction.flagged and prediction.flag_reason
    folder = tmp_path / "archive"
    folder.mkdir()
    for path in flagged_files.values():
        shutil.copy(path, folder / path.name)
    model.predict_batch(folder, tmp_path / "batch")
    records = read_shards(tmp_path / "batch").to_pylist()
    assert len(records) == len(KINDS)
    for record in records:
        _assert_no_class(record)


@pytest.fixture(scope="module")
def ct_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("pydicom")
    from braintumor.data.synthetic_volumes import series_datasets, to_bytes, tumour_stack

    dataset = series_datasets(tumour_stack(3, 32, seed=4))[0]
    dataset.Modality, dataset.BodyPartExamined = "CT", "HEAD"
    path = tmp_path_factory.mktemp("ct") / "head_ct.dcm"
    path.write_bytes(to_bytes(dataset))
    return path


def test_a_ct_dicom_gets_no_class_on_any_surface(trained_run, client: Any, ct_dicom: Path, tmp_path: Path) -> None:
    from braintumor.batch import read_shards

    model = braintumor.load(trained_run.bundle_dir)
    predictions = model.predict(ct_dicom)
    assert len(predictions) == 0 and "CT" in predictions.skipped[0].reason
    json_out = tmp_path / "p.json"
    result = CliRunner().invoke(app, ["predict", str(trained_run.bundle_dir), str(ct_dicom), "--json", str(json_out)])
    payload = json.loads(json_out.read_text()) if json_out.is_file() else {"predictions": [], "skipped": []}
    assert payload["predictions"] == [] and "CT" in result.output.replace("\n", "")
    for route in ("/v1/predict", "/v1/explain"):
        answer = client.post(route, files={"file": ("ct.dcm", ct_dicom.read_bytes(), "application/dicom")})
        assert answer.status_code != 200 or answer.json().get("class_name") is None, answer.text
        assert "CT" in answer.text
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(ct_dicom, folder / ct_dicom.name)
    model.predict_batch(folder, tmp_path / "batch")
    for record in read_shards(tmp_path / "batch").to_pylist():
        assert not record.get("class_name") and "CT" in str(record.get("error") or record.get("flag_reason")), record
