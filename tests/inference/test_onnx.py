"""ONNX export: parity with PyTorch, dynamic batch, the onnxruntime predictor and its use by the service,
the input guard through onnxruntime, and graphs exported before the guard."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
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
from braintumor.inference.defaults import DEFAULT_OPSET
from braintumor.inference.onnx_export import (
    FEATURES_NAME,
    ONNX_FILE,
    OOD_PARITY_TOLERANCE,
    PARITY_TOLERANCE,
    OnnxExportError,
    OnnxPredictor,
    export_onnx,
    make_predictor,
    ood_difference,
    parity_samples,
)
from braintumor.models import create_model, resolve_preprocessing
from tests.serving.test_serving_guard import (
    HELD_OUT_SEED,
    blank_white,
    colour_noise,
    make_client,
    png_bytes,
    save_guarded_bundle,
    synthetic_slices,
)

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def _save(folder: Path, model_spec: dict, size: int, extras: dict | None = None) -> Path:
    # fp32: these tests check that the fp32 graph reproduces the fp32 network (a bf16 bundle's PyTorch path
    # differs from its graph by bf16 rounding; tests/test_fast_path.py covers that default).
    recipe = Recipe.model_validate(
        {"name": folder.name, "data": {"image_size": size}, "model": model_spec, "train": {"precision": "32"}}
    )
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


# --- the input guard through onnxruntime ------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with an input guard fitted on synthetic slices, exported with its features output."""
    folder = save_guarded_bundle(tmp_path_factory.mktemp("onnx-guard") / "guarded", extras={"temperature": 1.5})
    result = export_onnx(load_bundle(folder))
    assert result.passed and result.max_ood_diff is not None and result.max_ood_diff <= OOD_PARITY_TOLERANCE
    return folder


def _guard_images() -> list[Image.Image]:
    return [*synthetic_slices(8, HELD_OUT_SEED), colour_noise(), colour_noise(90, seed=2), blank_white()]


def test_onnx_guard_matches_pytorch(guarded_onnx: Path) -> None:
    bundle = load_bundle(guarded_onnx)
    onnx_predictor = OnnxPredictor(bundle, batch_size=4)
    assert onnx_predictor.guard is not None and onnx_predictor.guard_note is None
    assert FEATURES_NAME in {output.name for output in onnx_predictor.session.get_outputs()}
    images = _guard_images()
    for tta in (False, True):
        reference, reference_ood = Predictor(bundle, tta=tta).predict_images_guarded(images)
        exported, exported_ood = OnnxPredictor(bundle, tta=tta, batch_size=4).predict_images_guarded(images)
        assert np.abs(reference - exported).max() <= PARITY_TOLERANCE
        assert reference_ood is not None and exported_ood is not None
        assert ood_difference(reference_ood, exported_ood) <= OOD_PARITY_TOLERANCE
        assert ((reference_ood > 1) == (exported_ood > 1)).all()
        assert (exported_ood[-3:] > 1).all() and (exported_ood[:8] <= 1).sum() >= 6
    empty_probabilities, empty_scores = onnx_predictor.predict_images_guarded([])
    assert empty_probabilities.shape == (0, 4) and empty_scores is not None and empty_scores.shape == (0,)
    prediction = onnx_predictor.to_prediction("noise", exported[-1], float(exported_ood[-1]))
    assert prediction.out_of_distribution is True


def test_service_gives_the_same_flags_with_both_backends(guarded_onnx: Path) -> None:
    onnx_client, torch_client = make_client(guarded_onnx, backend="auto"), make_client(guarded_onnx, backend="torch")
    assert onnx_client.get("/v1/health").json()["model"]["backend"] == "onnxruntime"
    assert onnx_client.get("/v1/model").json()["guard"]["detector"] == "mahalanobis"
    for image in _guard_images():
        files = {"file": ("a.png", png_bytes(image), "image/png")}
        via_onnx, via_torch = (c.post("/v1/predict", files=files).json() for c in (onnx_client, torch_client))
        assert via_onnx["out_of_distribution"] is via_torch["out_of_distribution"]
        assert via_onnx["warning"] == via_torch["warning"]
        assert abs(via_onnx["ood_score"] - via_torch["ood_score"]) <= OOD_PARITY_TOLERANCE * max(
            1.0, abs(via_torch["ood_score"])
        )


def test_guard_parity_failure_leaves_no_graph(
    guarded_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "OOD_PARITY_TOLERANCE", -1.0)
    destination = tmp_path / "out" / "model.onnx"
    with pytest.raises(OnnxExportError, match="input guard"):
        export_onnx(load_bundle(guarded_onnx), out=destination)
    assert list(destination.parent.iterdir()) == []


class _LogitsOnly(torch.nn.Module):
    """What ``braintumor export`` wrote before the input guard: the logits, no features."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images)[0]


def test_a_graph_exported_before_the_guard_still_serves(guarded_onnx: Path, tmp_path: Path) -> None:
    bundle = load_bundle(guarded_onnx)
    legacy = tmp_path / "legacy.onnx"
    wrapper = _LogitsOnly(onnx_export._Uint8Network(bundle.model, bundle.preprocessing).eval())
    onnx_export._run_exporter(wrapper, parity_samples(32, 2), legacy, DEFAULT_OPSET, ["logits"])
    predictor = OnnxPredictor(bundle, onnx_path=legacy)
    assert predictor.guard is None and "export it again" in (predictor.guard_note or "")
    images = _guard_images()
    probabilities, scores = predictor.predict_images_guarded(images)
    assert scores is None and np.abs(Predictor(bundle).predict_images(images) - probabilities).max() <= PARITY_TOLERANCE
    # Served from the bundle folder, the old graph gives null guard fields and says how to fix it.
    copy = shutil.copytree(guarded_onnx, tmp_path / "bundle")
    (copy / ONNX_FILE).write_bytes(legacy.read_bytes())
    client = make_client(copy, backend="auto")
    body = client.post("/v1/predict", files={"file": ("n.png", png_bytes(colour_noise()), "image/png")}).json()
    assert body["model"]["backend"] == "onnxruntime" and body["out_of_distribution"] is None
    card = client.get("/v1/model").json()
    assert card["guard"] is None and "braintumor export BUNDLE --onnx" in card["guard_note"]
