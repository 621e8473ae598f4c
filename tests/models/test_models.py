from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from braintumor.config import Recipe, load_recipe
from braintumor.errors import WeightsUnavailableError
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.pretrained import create_backbone


def _count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def test_seed_cnn_matches_the_published_architecture() -> None:
    model = create_model(load_recipe("seed-cnn"))
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.backbone.modules()) == 5
    conv_params = sum(
        3 * 3 * cin * cout + cout for cin, cout in zip([3, 32, 64, 128, 256], [32, 64, 128, 256, 512], strict=True)
    )
    flat = 512 * 7 * 7  # 224 / 2**5 = 7
    head_params = (flat * 128 + 128) + 2 * 128 + (128 * 4 + 4)
    assert _count(model) == conv_params + head_params == 4_780_740
    model.eval()
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 4)


def test_seed_resnet50_freezes_the_backbone_and_trains_the_head() -> None:
    recipe = load_recipe("seed-resnet50", ["model.pretrained=false"])
    model = create_model(recipe)
    assert model.num_features == 2048
    assert _count(model, trainable_only=True) == (2048 * 128 + 128) + 2 * 128 + (128 * 4 + 4)
    assert _count(model.backbone) == _count(timm.create_model("resnet50", num_classes=0))
    model.train()
    assert not model.backbone.training  # frozen BatchNorm statistics stay frozen
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_preprocessing_follows_the_pretrained_config() -> None:
    lite0 = load_recipe("lite0-frozen", ["model.pretrained=false"])
    prep = resolve_preprocessing(lite0, create_model(lite0))
    assert prep.mean == (0.5, 0.5, 0.5) and prep.std == (0.5, 0.5, 0.5)
    resnet = load_recipe("seed-resnet50", ["model.pretrained=false"])
    prep = resolve_preprocessing(resnet, create_model(resnet))
    assert prep.mean == pytest.approx((0.485, 0.456, 0.406), abs=1e-3) and prep.interpolation == "bicubic"
    cnn = load_recipe("seed-cnn")
    assert resolve_preprocessing(cnn, create_model(cnn)).std == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_is_loaded_through_timm(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    backbone = create_backbone("resnet18", pretrained=True, weights=path)
    assert torch.equal(backbone.conv1.weight, source.conv1.weight)


def test_weights_dir_environment_variable_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = timm.create_model("resnet18")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    monkeypatch.setenv("BRAINTUMOR_WEIGHTS_DIR", str(tmp_path))
    backbone = create_backbone("resnet18", pretrained=True)
    assert torch.equal(backbone.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_no_network_and_no_file_says_how_to_pass_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BRAINTUMOR_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        create_backbone("resnet50", pretrained=True)


def test_bad_weights_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_backbone("resnet18", pretrained=True, weights=tmp_path / "missing.safetensors")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"x": torch.zeros(2)}, str(wrong))
    with pytest.raises(WeightsUnavailableError, match="does not fit backbone"):
        create_backbone("resnet18", pretrained=True, weights=wrong)
    with pytest.raises(WeightsUnavailableError, match=r"unknown timm backbone 'resnet5O'.*resnet50"):
        create_backbone("resnet5O", pretrained=False)


def test_shared_lite0_weights_classify_like_imagenet(real_data_root: Path) -> None:
    weights = real_data_root.parents[1] / "weights" / "tf_efficientnet_lite0.safetensors"
    if not weights.is_file():
        pytest.skip("shared EfficientNet-Lite0 weights not found")
    recipe = Recipe.model_validate(
        {"name": "lite0", "model": {"backbone": "tf_efficientnet_lite0", "weights": str(weights)}}
    )
    model = create_model(recipe)
    reference = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    assert not torch.equal(model.backbone.conv_stem.weight, reference.conv_stem.weight)
