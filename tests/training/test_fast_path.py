"""The CPU fast path (issue 14): precision as a recipe field, bf16 training, exact fast features, ONNX in bundles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from braintumor.bundle import ONNX_FILE, load_bundle, save_bundle
from braintumor.config import RecipeError, load_recipe
from braintumor.data.dataset import ImageSet, load_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, eval_transform
from braintumor.inference.onnx_export import PARITY_TOLERANCE, OnnxPredictor
from braintumor.inference.predictor import Predictor
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.fusion import fold_batchnorm
from braintumor.runtime import bf16_supported, resolve_precision
from braintumor.serving.service import ModelService
from braintumor.serving.settings import ServeSettings
from braintumor.training.features import extract_features
from braintumor.training.fitting import RunOptions
from braintumor.training.module import ClassifierModule
from braintumor.workflows import export as onnx_bundle
from braintumor.workflows.train import train_recipe
from tests.conftest import tiny_recipe
from tests.training.test_cached_stage import TINY_LITE

# Fast fp32 features (NHWC order, batched transform) against the old eager path: the same numbers up to the
# order of float additions.
FP32_FEATURE_TOLERANCE = 1e-4
# bf16 autocast rounds every matrix product to 8 mantissa bits: features keep their direction.
BF16_MIN_COSINE = 0.99


def test_precision_is_a_validated_recipe_field() -> None:
    assert load_recipe("seed-cnn", ["train.precision=32"]).train.precision == "32"  # YAML reads 32 as a number
    assert load_recipe("seed-cnn", ["train.precision=bf16-mixed"]).precision() == "bf16-mixed"
    assert load_recipe("seed-cnn", ["train.precision=32-true"]).precision() == "32-true"
    with pytest.raises(RecipeError, match=r"train\.precision"):
        load_recipe("seed-cnn", ["train.precision=16-mixed"])
    # auto: bf16 where the machine has native bf16 for trained networks, fp32 for frozen features (exact).
    assert load_recipe("seed-cnn").precision() == ("bf16-mixed" if bf16_supported() else "32-true")
    assert load_recipe("lite2-probe").precision() == "32-true"
    assert load_recipe("lite0-lpft").precision() == resolve_precision("auto")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_precision("fp8")


def test_auto_precision_is_fp32_when_onednn_is_capped_at_avx2() -> None:
    # How a machine with bf16 units is made to run as an AVX2-only CPU (benchmarks' --avx2): auto must follow.
    code = "from braintumor.config import load_recipe; print(load_recipe('seed-cnn').precision())"
    environment = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, **environment}
    )
    assert result.stdout.strip() == "32-true"


def test_a_bf16_training_step_runs_channels_last_under_autocast() -> None:
    recipe = tiny_recipe(train={"precision": "bf16-mixed"})
    network = create_model(recipe)
    seen: list[tuple[torch.dtype, bool]] = []
    first_conv = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(
        lambda module, inputs, output: seen.append(
            (output.dtype, inputs[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    before = {k: v.clone() for k, v in network.state_dict().items()}
    images, labels = torch.rand(32, 3, 32, 32), torch.arange(32) % 4
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    module = ClassifierModule(network, recipe.train, num_classes=4, channels_last=True)
    trainer = L.Trainer(
        max_epochs=1,
        precision="bf16-mixed",
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader, loader)
    assert seen and all(dtype == torch.bfloat16 and nhwc for dtype, nhwc in seen)  # training and validation
    after = network.state_dict()
    assert all(torch.isfinite(value.float()).all() for value in after.values())
    assert any(not torch.equal(before[key], after[key]) for key in before)
    # The master weights stay fp32: only the computation is bf16.
    assert first_conv.weight.dtype == torch.float32


def _image_set(count: int = 20, size: int = 64) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    paths = [Path(f"{index}.png") for index in range(count)]
    labels = torch.zeros(count, dtype=torch.long)
    return ImageSet(images=images, labels=labels, paths=paths, hashes=[str(p) for p in paths], skipped=[])


def test_fast_features_match_eager_fp32() -> None:
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    image_set = _image_set()
    transform = eval_transform(Preprocessing(image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3))
    common = {"batch_size": 8, "show_progress": False}
    eager = extract_features(backbone, image_set, transform, channels_last=False, precision="32", **common)
    backbone.to(memory_format=torch.contiguous_format)
    fast = extract_features(backbone, image_set, transform, per_image=False, precision="32", **common)
    scale = float(eager.abs().max())
    assert float((fast - eager).abs().max()) <= FP32_FEATURE_TOLERANCE * scale
    bf16 = extract_features(backbone, image_set, transform, per_image=False, precision="bf16-mixed", **common)
    assert bf16.dtype == torch.float32
    assert float(torch.nn.functional.cosine_similarity(bf16, eager).min()) >= BF16_MIN_COSINE


@pytest.mark.slow
def test_training_writes_an_onnx_graph_that_passes_parity(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(train={"max_epochs": 2})
    result = train_recipe(
        recipe, synthetic_root, tmp_path / "run", show_progress=False, options=RunOptions(tracker="none")
    )
    assert result is not None and (result.bundle_dir / ONNX_FILE).is_file()
    bundle = load_bundle(result.bundle_dir)
    images = load_images(discover_split(synthetic_root, "Testing"), bundle.preprocessing, show_progress=False).images
    reference = Predictor(bundle, precision="32").predict_uint8(images)
    exported = OnnxPredictor(load_bundle(result.bundle_dir)).predict_uint8(images)
    assert float(np.abs(reference - exported).max()) <= PARITY_TOLERANCE


def _old_bundle(folder: Path) -> Path:
    """A bundle as written before ONNX-at-training: no model.onnx."""
    recipe = tiny_recipe()
    model = create_model(recipe)
    return save_bundle(folder, model, recipe, resolve_preprocessing(recipe, model))


def test_serving_an_old_bundle_reads_it_only_and_says_how_to_add_onnx(tmp_path: Path) -> None:
    folder = _old_bundle(tmp_path / "old")
    before = sorted(path.name for path in folder.iterdir())
    service = ModelService(folder, ServeSettings())
    assert service.ref.backend == "pytorch" and not (folder / ONNX_FILE).exists()
    assert sorted(path.name for path in folder.iterdir()) == before
    assert service.onnx_note is not None and "braintumor export" in service.onnx_note


def test_ensure_onnx_says_why_it_cannot_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _old_bundle(tmp_path / "old")
    monkeypatch.setattr(onnx_bundle, "_missing_modules", lambda: ["onnxscript"])
    status = onnx_bundle.ensure_onnx(folder)
    assert not status.available and "onnxscript" in status.note and "braintumor export" in status.note

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(onnx_bundle, "_missing_modules", list)
    monkeypatch.setattr("braintumor.inference.onnx_export.tempfile.mkstemp", read_only)
    status = onnx_bundle.ensure_onnx(folder)
    assert not status.available and "read-only" in status.note
    assert not (folder / ONNX_FILE).exists()


def test_the_allocator_tuning_can_be_turned_off() -> None:
    code = "from braintumor.runtime import tune_cpu_runtime; print(tune_cpu_runtime())"
    run = [sys.executable, "-c", code]
    on = subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip()
    off = subprocess.run(run, capture_output=True, text=True, check=True, env={"BRAINTUMOR_CPU_TUNING": "0"})
    assert off.stdout.strip() == "False"
    assert on == ("True" if sys.platform == "linux" else "False")


def test_keras_options_reach_the_preprocessing_and_the_split(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(
        data={"interpolation": "nearest", "val_split": "keras", "drop_train_duplicates": False},
        model={"init": "keras"},
        train={"max_epochs": 1},
    )
    options = RunOptions(tracker="none", export_onnx=False)
    result = train_recipe(recipe, synthetic_root, tmp_path / "keras", show_progress=False, options=options)
    assert result is not None
    bundle = load_bundle(result.bundle_dir)
    assert bundle.preprocessing.interpolation == "nearest"
    # Keras takes the first files of each class in name order for validation.
    val_names = sorted(Path(p).name for p in bundle.config.training.val_paths)
    samples = discover_split(synthetic_root, "Training")
    by_class: dict[int, list[str]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample.path.name)
    expected = sorted(name for names in by_class.values() for name in sorted(names)[: int(0.25 * len(names))])
    assert val_names == expected


class _NormThenConv(torch.nn.Module):
    """A convolution registered before the BatchNorm that runs before it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def test_batchnorm_folding_keeps_the_outputs_and_leaves_the_bundle_alone() -> None:
    """The predictor runs a copy with BatchNorm folded into the convolutions; outputs stay within rounding."""
    model = create_model(tiny_recipe(model={**TINY_LITE, "head": "linear"})).eval()
    for layer in model.modules():  # non-trivial statistics, so a wrong fold would show
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    inputs = torch.randn(3, 3, 64, 64)
    folded = fold_batchnorm(model, inputs[:2])
    norms = [m for m in folded.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert folded.folded_layers > 10 and norms == [] and folded.max_difference < 1e-4
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.inference_mode():
        np.testing.assert_allclose(folded.model(inputs).numpy(), model(inputs).numpy(), atol=1e-4)
    # A layout whose registration order is not its order of use fails the parity check and is not folded.
    mixed = _NormThenConv()
    mixed.norm.running_mean.fill_(2.0)
    kept = fold_batchnorm(mixed.eval(), torch.randn(2, 3, 8, 8))
    assert kept.model is mixed and kept.folded_layers == 0 and kept.max_difference > 0.1


def test_the_predictor_runs_the_folded_network(tmp_path: Path) -> None:
    recipe = tiny_recipe(model={**TINY_LITE, "head": "linear"})
    model = create_model(recipe)
    bundle = load_bundle(save_bundle(tmp_path / "b", model, recipe, resolve_preprocessing(recipe, model)))
    predictor = Predictor(bundle, precision="32")
    images = torch.randint(
        0, 256, (4, 3, bundle.preprocessing.image_size, bundle.preprocessing.image_size), dtype=torch.uint8
    )
    logits = predictor.predict_logits_uint8(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.backbone.modules())
    with torch.inference_mode():
        unfolded = bundle.model(predictor._network_input(images)).numpy()
    np.testing.assert_allclose(logits, unfolded, atol=1e-4)


def test_the_border_pad_writes_what_f_pad_writes_and_keeps_gradients() -> None:
    """pad_border is bitwise F.pad (values, memory format, gradient); Lite backbones use it for TF "SAME"."""
    from braintumor.models.padding import FastConv2dSame, pad_border

    for layout in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(2, 5, 7, 6).contiguous(memory_format=layout).requires_grad_(True)
        for pads in [(0, 1, 0, 1), (1, 2, 2, 1), (0, 0, 3, 0), (0, 0, 0, 0)]:
            ours, reference = pad_border(x, pads, value=-1.5), torch.nn.functional.pad(x, pads, value=-1.5)
            assert torch.equal(ours, reference)
            assert ours.is_contiguous(memory_format=layout)
            weights = torch.randn_like(reference)
            (ours_grad,) = torch.autograd.grad((ours * weights).sum(), x)
            (reference_grad,) = torch.autograd.grad((reference * weights).sum(), x)
            assert torch.equal(ours_grad, reference_grad)
    backbone = create_model(tiny_recipe(model={**TINY_LITE, "head": "linear"})).backbone
    assert any(isinstance(m, FastConv2dSame) for m in backbone.modules())


def test_fused_activations_give_the_folded_outputs() -> None:
    """Conv + ReLU6 run as one oneDNN call in the predictor's copy: same outputs as conv then activation."""
    from braintumor.models.fusion import ConvActivation, fused_activation_supported

    if not fused_activation_supported():
        pytest.skip("this PyTorch build has no oneDNN fused convolution")
    model = create_model(tiny_recipe(model={**TINY_LITE, "head": "linear"})).eval()
    inputs = torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    folded = fold_batchnorm(model, inputs[:2])
    assert folded.fused_activations > 5
    assert sum(isinstance(m, ConvActivation) for m in folded.model.modules()) == folded.fused_activations
    with torch.inference_mode():
        np.testing.assert_allclose(folded.model(inputs).numpy(), model(inputs).numpy(), atol=1e-4)
    # Under autograd (explanations) the fused layer runs its two modules.
    with torch.enable_grad():
        assert folded.model(inputs.requires_grad_(True)).requires_grad
