"""What a cold ``braintumor predict`` relies on: which modules it imports, and that its shortcuts change no number.

A bundle with ``model.onnx`` predicts with onnxruntime and never builds its network, so the predict path avoids
timm (and with it torchvision and torch's compiler), pytorch-ood (scipy.stats), scipy.ndimage, Lightning, MLflow
and scikit-learn. These tests check the imports in fresh processes and compare every shortcut with the code it
replaces, bit for bit. They time nothing (``benchmarks/cli_latency.py`` does).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import braintumor
from braintumor.bundle import load_bundle, save_bundle
from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing, eval_transform, largest_region
from braintumor.errors import BundleError
from braintumor.guard import fit_guard, model_outputs
from braintumor.guard.detectors import energy_score, mahalanobis_score, max_logit_score
from braintumor.models import create_model, resolve_preprocessing
from braintumor.runtime import one_thread, tuning_enabled
from braintumor.workflows.export import export_bundle_onnx

# Modules a one-image prediction must not import: each costs from a tenth of a second to seconds at start-up.
HEAVY_MODULES = (
    "timm",
    "torchvision",
    "torch._dynamo",
    "pytorch_ood",
    "scipy.stats",
    "scipy.ndimage",
    "sklearn",
    "lightning",
    "mlflow",
    "kornia",
    "onnxruntime",
    "matplotlib",
    "sympy",
)
SIZE = 64


def _imported_heavy_modules(code: str) -> list[str]:
    """The :data:`HEAVY_MODULES` in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=240)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lite_recipe(backbone: str = "tf_efficientnet_lite0", **data: object) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "lite-cold",
            "data": {"image_size": SIZE, **data},
            "model": {"architecture": "transfer", "backbone": backbone, "pretrained": False, "head": "linear"},
        }
    )


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    # Fresh BatchNorm statistics are 0 and 1: random ones make folding change the weights for real.
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def _images(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def lite_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EfficientNet-Lite0 bundle (random weights, random BatchNorm statistics) with a Mahalanobis input guard."""
    recipe = _lite_recipe(crop_to_head=True)
    model = create_model(recipe, load_pretrained=False).eval()
    _randomise_batchnorm(model)
    prep = resolve_preprocessing(recipe, model)
    normalise, labels = eval_transform(prep), torch.arange(48) % 4
    guard = fit_guard(
        model_outputs(model, normalise, _images(48, 1)), labels, model_outputs(model, normalise, _images(16, 2))
    )
    return save_bundle(tmp_path_factory.mktemp("cold") / "bundle", model, recipe, prep, guard=guard)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A grey slice with a bright disc on black (the head crop finds the disc)."""
    yy, xx = np.mgrid[:90, :120]
    pixels = np.where((yy - 45) ** 2 + (xx - 70) ** 2 < 35**2, 60 + (xx % 50) * 3, 0).astype(np.uint8)
    path = tmp_path_factory.mktemp("scan") / "scan.png"
    Image.fromarray(pixels).convert("RGB").save(path)
    return path


def test_predictor_module_imports_nothing_heavy() -> None:
    assert _imported_heavy_modules("import braintumor.inference.predictor, braintumor.bundle") == []


def test_help_imports_neither_torch_nor_heavy_modules() -> None:
    assert _imported_heavy_modules("import braintumor.cli") == []
    done = subprocess.run(
        [sys.executable, "-c", "import sys, braintumor.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"


@pytest.mark.slow
def test_cli_predict_of_an_onnx_bundle_imports_nothing_heavy(lite_bundle: Path, scan: Path, tmp_path: Path) -> None:
    # A bundle with model.onnx (every bundle train writes) predicts with onnxruntime: its network is never built.
    folder = Path(shutil.copytree(lite_bundle, tmp_path / "bundle"))
    export_bundle_onnx(folder)
    argv = ["braintumor", "predict", str(folder), str(scan)]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module('braintumor.cli', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code"
    )
    assert _imported_heavy_modules(code) == ["onnxruntime"]


@pytest.mark.slow
def test_onnx_and_pytorch_predictions_agree(lite_bundle: Path, scan: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(lite_bundle, tmp_path / "bundle"))
    export_bundle_onnx(folder)
    onnx = braintumor.load(folder).predict(scan)[0]
    torch_path = braintumor.load(lite_bundle).predict(scan)[0]
    assert onnx.probabilities == pytest.approx(torch_path.probabilities, abs=1e-4)
    assert onnx.ood_score == pytest.approx(torch_path.ood_score, rel=1e-3)


def test_weights_of_another_lite_variant_are_refused_when_the_network_is_built(
    lite_bundle: Path, tmp_path: Path
) -> None:
    config = json.loads((lite_bundle / "config.json").read_text())
    config["recipe"]["model"]["backbone"] = "tf_efficientnet_lite1"
    folder = tmp_path / "mismatch"
    folder.mkdir()
    for item in lite_bundle.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="does not match the bundle's recipe"):
        _ = load_bundle(folder).model


def test_normalise_equals_torchvision() -> None:
    from torchvision.transforms import v2

    prep = Preprocessing(image_size=SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=prep.mean, std=prep.std)])
    images = _images(3)
    for batch in (images, images[0], images.float() / 255.0):
        assert torch.equal(eval_transform(prep)(batch), reference(batch))
    before = images.clone()
    eval_transform(prep)(images)
    assert torch.equal(images, before)


def test_largest_region_equals_ndimage_label() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for _ in range(400):
        mask = rng.random(tuple(rng.integers(1, 24, size=2))) < rng.random()
        labels, count = ndimage.label(mask)
        expected = None
        if count:
            largest = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
            rows, cols = np.flatnonzero(largest.any(axis=1)), np.flatnonzero(largest.any(axis=0))
            expected = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        assert largest_region(mask) == expected


def test_guard_scores_equal_pytorch_ood() -> None:
    from pytorch_ood.detector import EnergyBased, Mahalanobis, MaxLogit

    generator = torch.Generator().manual_seed(3)
    features, labels = torch.randn(200, 16, generator=generator), torch.arange(200) % 4
    fitted = Mahalanobis(None).fit_features(features.double(), labels)
    # As the guard stores and reads them: float32 on disk, float64 to score.
    fitted.mu, fitted.precision = fitted.mu.float().double(), fitted.precision.float().double()
    queries = torch.randn(9, 16, generator=generator).double() * 3
    expected = fitted.predict_features(queries)
    assert torch.equal(mahalanobis_score(fitted.mu, fitted.precision, queries), expected)
    logits = torch.randn(9, 4, generator=generator) * 4
    assert torch.equal(energy_score(logits), EnergyBased.score(logits))
    assert torch.equal(max_logit_score(logits), MaxLogit.score(logits))


def test_one_thread_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == (1 if tuning_enabled() else before)
    assert torch.get_num_threads() == before


def test_the_benchmark_never_writes_its_results_file_in_quick_mode(lite_bundle: Path, scan: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    results = root / "benchmarks" / "results" / "cli_latency.json"
    command = [sys.executable, str(root / "benchmarks" / "cli_latency.py"), "--bundle", str(lite_bundle)]
    command += ["--image", str(scan), "--quick", "--out", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert "--quick never writes" in done.stderr
