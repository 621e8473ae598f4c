"""What a cold ``braintumor predict`` relies on: which modules it imports, and that its shortcuts change no number.

The predict path avoids timm (and with it torchvision and torch's compiler), pytorch-ood (scipy.stats),
scipy.ndimage, Lightning, MLflow and scikit-learn, and folds a timm-free copy of EfficientNet-Lite without the
parity check. These tests check the imports in fresh processes and compare every shortcut with the code it
replaces, bit for bit. They time nothing (``benchmarks/cli_latency.py`` does).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from braintumor.bundle import load_bundle, save_bundle
from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing, eval_transform, largest_region
from braintumor.errors import BundleError
from braintumor.guard import fit_guard, model_outputs
from braintumor.guard.detectors import energy_score, mahalanobis_score, max_logit_score
from braintumor.inference.predictor import Predictor
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.efficientnet_lite import LITE_VARIANTS, lite_backbone
from braintumor.models.fusion import fold_batchnorm, fold_known_layout
from braintumor.runtime import one_thread, tuning_enabled

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


def test_predicting_a_lite_bundle_imports_nothing_heavy_and_matches_the_timm_network(
    lite_bundle: Path, scan: Path
) -> None:
    code = (
        "import json\n"
        "from braintumor.bundle import load_bundle\n"
        "from braintumor.inference.predictor import Predictor\n"
        f"predictions, _ = Predictor(load_bundle({str(lite_bundle)!r})).predict_paths([{str(scan)!r}])\n"
        "print(json.dumps([(p.probabilities, p.ood_score) for p in predictions]))"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\n" + f"import sys; print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    )
    *_, fast_line, modules_line = done.stdout.strip().splitlines()
    assert json.loads(modules_line) == []
    # The reference: timm's network (built first, so the predictor folds it with the checked fold).
    bundle = load_bundle(lite_bundle)
    assert type(bundle.model.backbone).__module__.startswith("timm.")
    predictions, _ = Predictor(bundle).predict_paths([scan])
    assert json.loads(fast_line) == [[p.probabilities, p.ood_score] for p in predictions]


def test_cli_predict_imports_nothing_heavy(lite_bundle: Path, scan: Path) -> None:
    # The bundle has no model.onnx, so the command predicts with PyTorch (and must not import onnxruntime).
    argv = ["braintumor", "predict", str(lite_bundle), str(scan)]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module('braintumor.cli', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code"
    )
    assert _imported_heavy_modules(code) == []


@pytest.mark.parametrize("name", sorted(LITE_VARIANTS))
def test_timm_free_lite_backbone_is_timm_bit_for_bit(name: str) -> None:
    import timm

    from braintumor.models.padding import use_fast_same_padding

    reference = timm.create_model(name, pretrained=False, num_classes=0).eval()
    use_fast_same_padding(reference)
    _randomise_batchnorm(reference)
    copy = lite_backbone(name)
    assert copy is not None
    state = reference.state_dict()
    assert [(k, v.shape) for k, v in copy.state_dict().items()] == [(k, v.shape) for k, v in state.items()]
    copy.load_state_dict(state, strict=True)
    copy.eval()
    inputs = torch.randn(2, 3, 72, 72, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(copy(inputs), reference(inputs))


def test_known_layout_fold_equals_the_checked_fold() -> None:
    import timm

    from braintumor.models.padding import use_fast_same_padding

    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    use_fast_same_padding(reference)
    _randomise_batchnorm(reference)
    copy = lite_backbone("tf_efficientnet_lite0")
    assert copy is not None
    copy.load_state_dict(reference.state_dict())
    inputs = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    checked = fold_batchnorm(reference, inputs)
    known = fold_known_layout(copy.eval())
    assert known.model is copy
    assert (known.folded_layers, known.fused_activations) == (checked.folded_layers, checked.fused_activations)
    if tuning_enabled():
        assert known.folded_layers > 0
    with torch.inference_mode():
        assert torch.equal(known.model(inputs), checked.model(inputs))


def test_bundle_hands_out_the_timm_free_network_once(lite_bundle: Path) -> None:
    bundle = load_bundle(lite_bundle)
    network, own = bundle.take_inference_network()
    assert own and type(network.backbone).__name__ == "EfficientNetLite"
    assert not any(p.is_meta for p in network.parameters())
    again, own_again = bundle.take_inference_network()
    assert not own_again and again is bundle.model
    # A bundle whose model was read first (and may have been changed) never hands out the copy.
    read_first = load_bundle(lite_bundle)
    model = read_first.model
    assert read_first.take_inference_network() == (model, False)
    moved = dataclasses.replace(read_first, path=Path("elsewhere"))
    assert moved.model is model and moved.config is read_first.config


def test_weights_of_another_lite_variant_are_refused_at_load(lite_bundle: Path, tmp_path: Path) -> None:
    config = json.loads((lite_bundle / "config.json").read_text())
    config["recipe"]["model"]["backbone"] = "tf_efficientnet_lite1"
    folder = tmp_path / "mismatch"
    folder.mkdir()
    for item in lite_bundle.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="does not match the bundle's recipe"):
        load_bundle(folder)


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
