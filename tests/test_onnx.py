"""ONNX export: parity with PyTorch, dynamic batch, the onnxruntime predictor and its use by the service."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner

from braintumor.bundle import load_bundle, save_bundle
from braintumor.cli import app as cli_app
from braintumor.config import Recipe
from braintumor.data.synthetic import synthetic_image
from braintumor.errors import BrainTumorError, BundleError
from braintumor.inference import Predictor, onnx_export
from braintumor.inference.onnx_export import (
    ONNX_FILE,
    PARITY_TOLERANCE,
    OnnxExportError,
    OnnxPredictor,
    export_onnx,
    make_predictor,
    parity_samples,
)
from braintumor.models import create_model, resolve_preprocessing

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _save(folder: Path, model_spec: dict, size: int, extras: dict | None = None) -> Path:
    recipe = Recipe.model_validate({"name": folder.name, "data": {"image_size": size}, "model": model_spec})
    model = create_model(recipe, load_pretrained=False)
    return save_bundle(folder, model, recipe, resolve_preprocessing(recipe, model), extras=extras)


def _images(count: int, size: int = 48) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [synthetic_image(CLASSES[index % 4], size, rng) for index in range(count)]


@pytest.fixture(scope="module")
def exported_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNN bundle with a temperature, exported once through the CLI."""
    folder = _save(
        tmp_path_factory.mktemp("onnx") / "cnn",
        {"architecture": "custom_cnn", "conv_channels": [4, 8]},
        32,
        extras={"temperature": 2.5},
    )
    result = CliRunner().invoke(cli_app, ["export", str(folder), "--onnx"])
    assert result.exit_code == 0, result.output
    match = re.search(r"max \|p_onnx - p_torch\| = ([0-9.e+-]+)", result.output)
    assert match and float(match.group(1)) <= PARITY_TOLERANCE, result.output
    return folder


def test_cli_export_writes_a_graph_that_matches_pytorch(exported_cnn: Path) -> None:
    assert (exported_cnn / ONNX_FILE).is_file()
    bundle = load_bundle(exported_cnn)
    torch_predictor, onnx_predictor = Predictor(bundle), OnnxPredictor(bundle, batch_size=4)
    images = _images(11)  # 11 = 4 + 4 + 3: several batch sizes through the dynamic axis
    reference = torch_predictor.predict_images(images)
    exported = onnx_predictor.predict_images(images)
    assert exported.shape == (11, 4)
    assert np.abs(reference - exported).max() <= PARITY_TOLERANCE
    # The temperature is applied in both backends: probabilities are softer than at T=1.
    assert float(reference.max()) < 0.999
    assert onnx_predictor.predict_images([]).shape == (0, 4)
    # Test-time augmentation averages the same views' logits in both backends.
    with_tta = OnnxPredictor(bundle, tta=True).predict_images(images[:3])
    assert np.abs(Predictor(bundle, tta=True).predict_images(images[:3]) - with_tta).max() <= PARITY_TOLERANCE
    prediction = onnx_predictor.to_prediction("a", exported[0])
    assert prediction.class_name == CLASSES[int(reference[0].argmax())]


def test_timm_backbone_parity(tmp_path: Path) -> None:
    # timm's smallest EfficientNet (depthwise convs, BatchNorm, SiLU), random weights.
    folder = _save(tmp_path / "effnet", {"architecture": "transfer", "backbone": "test_efficientnet"}, 64)
    result = export_onnx(load_bundle(folder), out=tmp_path / "elsewhere" / "effnet.onnx")
    assert result.passed and result.max_abs_diff <= PARITY_TOLERANCE
    assert result.path == tmp_path / "elsewhere" / "effnet.onnx" and not (folder / ONNX_FILE).exists()
    bundle = load_bundle(folder)
    images = _images(3, size=80)
    exported = OnnxPredictor(bundle, onnx_path=result.path).predict_images(images)
    assert np.abs(Predictor(bundle).predict_images(images) - exported).max() <= PARITY_TOLERANCE


def test_a_failed_parity_check_leaves_no_graph(
    exported_cnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)
    destination = tmp_path / "out" / "model.onnx"
    with pytest.raises(OnnxExportError, match="disagrees with PyTorch"):
        export_onnx(load_bundle(exported_cnn), out=destination)
    assert list(destination.parent.iterdir()) == []


def test_parity_samples_cover_extremes() -> None:
    samples = parity_samples(16, count=8)
    assert samples.shape == (8, 3, 16, 16) and samples.dtype.is_floating_point is False
    assert int(samples[1].max()) == 0 and int(samples[2].min()) == 255


def test_backend_choice_and_bad_graphs(exported_cnn: Path, tmp_path: Path) -> None:
    bundle = load_bundle(exported_cnn)
    assert isinstance(make_predictor(bundle), OnnxPredictor)
    assert not isinstance(make_predictor(bundle, "torch"), OnnxPredictor)
    with pytest.raises(BrainTumorError, match="backend"):
        make_predictor(bundle, "tensorflow")

    plain = load_bundle(_save(tmp_path / "plain", {"architecture": "custom_cnn", "conv_channels": [4]}, 16))
    assert not isinstance(make_predictor(plain), OnnxPredictor)
    with pytest.raises(BundleError, match="braintumor export"):
        make_predictor(plain, "onnx")
    (plain.path / ONNX_FILE).write_bytes(b"not an onnx graph")
    with pytest.raises(BundleError, match="not a usable ONNX model"):
        OnnxPredictor(plain)
    # A graph exported for another image size is refused, not silently misused.
    with pytest.raises(BundleError, match="export it again"):
        OnnxPredictor(plain, onnx_path=exported_cnn / ONNX_FILE)


def test_service_uses_onnxruntime_when_the_bundle_has_a_graph(exported_cnn: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from braintumor.serving.app import create_app
    from braintumor.serving.settings import ServeSettings

    image = _images(1, size=40)[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    client = TestClient(create_app(exported_cnn))
    assert client.get("/v1/health").json()["model"]["backend"] == "onnxruntime"
    body = client.post("/v1/predict", files={"file": ("a.png", buffer.getvalue(), "image/png")}).json()
    assert body["model"]["backend"] == "onnxruntime" and body["calibrated"] is True
    expected = Predictor(load_bundle(exported_cnn)).predict_images([image])[0]
    got = np.array([body["probabilities"][name] for name in CLASSES])
    assert np.abs(got - expected).max() <= PARITY_TOLERANCE
    # Grad-CAM still runs on the PyTorch model next to the ONNX predictor.
    explained = client.post("/v1/explain", files={"file": ("a.png", buffer.getvalue(), "image/png")})
    assert explained.status_code == 200 and explained.headers["content-type"] == "image/png"

    forced = TestClient(create_app(exported_cnn, ServeSettings(backend="torch")))
    assert forced.get("/v1/health").json()["model"]["backend"] == "pytorch"
