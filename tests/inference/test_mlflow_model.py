"""The MLflow model: ``train`` logs the bundle as a pyfunc model with a signature, in a temporary local
store; ``mlflow.pyfunc.load_model`` predicts a batch of images like the Predictor; ``braintumor runs`` shows the
model URI; ``--register-model`` puts it in the (SQLite) registry."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
pd = pytest.importorskip("pandas")

from typer.testing import CliRunner  # noqa: E402

from braintumor.bundle import load_bundle  # noqa: E402
from braintumor.cli import app as cli_app  # noqa: E402
from braintumor.data.images import decode_image_bytes  # noqa: E402
from braintumor.data.synthetic import synthetic_image  # noqa: E402
from braintumor.inference.onnx_export import make_predictor  # noqa: E402
from braintumor.training.tracking import list_runs, register_model  # noqa: E402
from braintumor.workflows.train import RunOptions, train_recipe  # noqa: E402
from tests.conftest import tiny_recipe  # noqa: E402


def _png(class_name: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    synthetic_image(class_name, 48, np.random.default_rng(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tracked_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("mlflow-model")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    options = RunOptions(show_progress=False, tracker="mlflow", tracking_uri=uri)
    result = train_recipe(tiny_recipe(train={"max_epochs": 1}), synthetic_root, folder / "run", options=options)
    return result, uri


def test_train_logs_a_pyfunc_model_that_predicts_a_batch(tracked_run) -> None:
    result, uri = tracked_run
    model_uri = result.tracking["model_uri"]
    assert model_uri.startswith("models:/")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["image"]
    assert signature.outputs.input_names()[:3] == ["class", "confidence", "p_glioma"]
    images = [_png("glioma", 1), _png("pituitary", 2), _png("no_tumor", 3)]
    frame = model.predict(pd.DataFrame({"image": images}))
    assert list(frame.columns) == ["class", "confidence", "p_glioma", "p_meningioma", "p_no_tumor", "p_pituitary",
                                   "ood_score", "flagged", "flag_reason"]  # fmt: skip
    assert len(frame) == 3
    # The pyfunc uses the backend `predict` would (onnxruntime when train wrote model.onnx).
    predictor = make_predictor(load_bundle(result.bundle_dir), "auto")
    expected, scores = predictor.predict_images_guarded([decode_image_bytes(b, "x") for b in images])
    probabilities = frame[["p_glioma", "p_meningioma", "p_no_tumor", "p_pituitary"]].to_numpy()
    assert np.allclose(probabilities, expected, atol=1e-6)
    assert np.allclose(frame["ood_score"].to_numpy(), scores, atol=1e-5)
    assert frame["flagged"].tolist() == [bool(score > 1.0) for score in scores]
    for row in frame.itertuples():
        assert (row[1] is None) is row.flagged and (row.flag_reason is None) is (not row.flagged)
    # What `mlflow models serve` receives: the same bytes base64-encoded in JSON.
    encoded = model.predict(pd.DataFrame({"image": [base64.b64encode(images[0]).decode()]}))
    assert encoded["class"][0] == frame["class"][0]


def test_runs_show_the_model_uri_and_registration_works(tracked_run) -> None:
    result, uri = tracked_run
    rows = list_runs(uri)
    assert rows[0]["model_uri"] == result.tracking["model_uri"]
    listed = CliRunner().invoke(cli_app, ["runs", "--tracking-uri", uri])
    # The table folds the URI over lines in a narrow terminal: its last characters are on one line.
    assert listed.exit_code == 0 and result.tracking["model_uri"][-4:] in listed.output
    model_uri, version = register_model(result.tracking, "braintumor-test")
    assert (model_uri, version) == (result.tracking["model_uri"], "1")
    mlflow.set_tracking_uri(uri)
    registered = mlflow.pyfunc.load_model("models:/braintumor-test/1")
    assert len(registered.predict(pd.DataFrame({"image": [_png("glioma", 4)]}))) == 1
