"""Issue 4's training options: shift augmentation, intensity normalisation, LP-FT/WiSE-FT, ensembles, cache parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from braintumor.bundle import load_bundle
from braintumor.config import AugmentConfig, FineTuneStage, RecipeError, apply_overrides
from braintumor.data.augment import RandomGamma, RandomGaussianNoise
from braintumor.data.preprocessing import Preprocessing, resize_to_uint8_tensor, train_transform
from braintumor.errors import BundleError
from braintumor.evaluation.report import _framing
from braintumor.inference.predictor import Predictor
from braintumor.models import create_model
from braintumor.models.ensemble import EnsembleNet
from braintumor.models.network import LinearHead
from braintumor.training.finetune import backbone_layer_groups, interpolate_weights, prepare_stage
from braintumor.workflows.ensemble import combine_bundles
from braintumor.workflows.train import train_recipe
from tests.conftest import tiny_recipe

TINY_TIMM = {"architecture": "transfer", "backbone": "tf_efficientnet_lite0", "pretrained": False}


def test_random_gamma_darkens_and_brightens_within_its_range() -> None:
    image = torch.full((3, 4, 4), 128, dtype=torch.uint8)
    assert RandomGamma(2.0, 2.0)(image)[0, 0, 0].item() == round(255 * (128 / 255) ** 2)
    values = {RandomGamma(0.5, 2.0)(image)[0, 0, 0].item() for _ in range(50)}
    assert min(values) >= round(255 * (128 / 255) ** 2) - 1 and max(values) <= round(255 * (128 / 255) ** 0.5) + 1
    assert len(values) > 5, "the exponent is drawn per call"
    with pytest.raises(ValueError):
        RandomGamma(2.0, 0.5)


def test_noise_needs_float_pixels_and_stays_in_range() -> None:
    with pytest.raises(TypeError, match="float"):
        RandomGaussianNoise(0.1)(torch.zeros(3, 4, 4, dtype=torch.uint8))
    torch.manual_seed(0)
    noisy = RandomGaussianNoise(0.5)(torch.full((3, 16, 16), 0.5))
    assert noisy.std() > 0 and noisy.min() >= 0 and noisy.max() <= 1


def test_shift_augmentations_change_framing_and_contrast_but_not_the_format() -> None:
    prep = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    plain = AugmentConfig(rotation_degrees=0, zoom=0, translate=0, horizontal_flip=False)
    strong = AugmentConfig(
        crop_scale=0.5, zoom_out=0.5, zoom_out_p=1.0, gamma=(0.5, 2.0), contrast=0.5, brightness=0.3,
        equalize_p=0.5, clahe_p=0.5, blur_p=0.5, noise_std=0.1,
    )  # fmt: skip
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 8:24, 8:24] = 150
    torch.manual_seed(0)
    assert torch.equal(train_transform(plain, prep)(image), train_transform(plain, prep)(image))
    outputs = [train_transform(strong, prep)(image) for _ in range(8)]
    assert all(out.shape == (3, 32, 32) and out.dtype == torch.float32 for out in outputs)
    assert len({round(float(out.mean()), 4) for out in outputs}) == 8
    with pytest.raises(ValueError, match="gamma"):
        AugmentConfig(gamma=(2.0, 0.5))


def test_equalize_intensity_is_part_of_the_stored_preprocessing() -> None:
    dim = Image.fromarray(np.tile(np.linspace(10, 60, 64).astype(np.uint8), (64, 1))).convert("RGB")
    plain = resize_to_uint8_tensor(dim, Preprocessing(image_size=32))
    equalised = resize_to_uint8_tensor(dim, Preprocessing(image_size=32, intensity="equalize"))
    assert int(plain.max()) <= 60 and int(equalised.max()) == 255
    clahe = resize_to_uint8_tensor(dim, Preprocessing(image_size=32, intensity="clahe"))
    assert clahe.dtype == torch.uint8 and int(clahe.max()) - int(clahe.min()) > int(plain.max()) - int(plain.min())
    recipe = tiny_recipe(data={"intensity": "equalize"})
    from braintumor.models import resolve_preprocessing

    assert resolve_preprocessing(recipe, create_model(recipe)).intensity == "equalize"


def test_window_intensity_makes_dim_and_bright_sources_alike() -> None:
    # The same head exported dim (one source's windowing) and bright (another's): after the window,
    # the two slices are nearly identical and the black background stays black.
    rng = np.random.default_rng(0)
    tissue = rng.uniform(0.2, 1.0, (48, 48))
    dim, bright = np.zeros((64, 64)), np.zeros((64, 64))
    dim[8:56, 8:56] = 20 + 40 * tissue
    bright[8:56, 8:56] = 60 + 190 * tissue
    prep = Preprocessing(image_size=64, intensity="window")
    windowed = [
        resize_to_uint8_tensor(Image.fromarray(a.astype(np.uint8)).convert("RGB"), prep).float() for a in (dim, bright)
    ]
    assert float((windowed[0] - windowed[1]).abs().mean()) < 4.0
    assert float(windowed[0][:, :4, :4].max()) == 0.0 and float(windowed[0].max()) == 255.0
    blank = resize_to_uint8_tensor(Image.new("RGB", (64, 64)), prep)  # nothing to window: unchanged
    assert int(blank.max()) == 0
    assert "contrast-windowed" in _framing(prep)


def test_linear_head_standardises_features() -> None:
    recipe = tiny_recipe(model={**TINY_TIMM, "head": "linear"})
    model = create_model(recipe)
    assert isinstance(model.head, LinearHead)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_stages_unfreeze_the_top_layer_groups_with_decaying_learning_rates() -> None:
    recipe = tiny_recipe(model=TINY_TIMM)
    model = create_model(recipe)
    groups = backbone_layer_groups(model.backbone)
    optimizer_groups = prepare_stage(
        model, FineTuneStage(epochs=1, unfreeze=2, learning_rate=1e-3, layer_decay=0.5), weight_decay=0.0
    )
    assert [g["lr"] for g in optimizer_groups] == pytest.approx([1e-3, 1e-3, 5e-4])
    trainable = {name for name, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == set(groups[-1][1]) | set(groups[-2][1])
    assert all(p.requires_grad for p in model.head.parameters())
    prepare_stage(model, FineTuneStage(epochs=1, unfreeze="all"), weight_decay=0.0)
    assert all(p.requires_grad for p in model.backbone.parameters())


def test_wise_interpolation_is_linear_in_float_tensors() -> None:
    start = {"w": torch.zeros(3), "steps": torch.tensor(1)}
    end = {"w": torch.full((3,), 2.0), "steps": torch.tensor(7)}
    mixed = interpolate_weights(start, end, 0.25)
    assert mixed["w"].tolist() == [0.5, 0.5, 0.5] and int(mixed["steps"]) == 7
    with pytest.raises(ValueError):
        interpolate_weights({"a": torch.zeros(1)}, end, 0.5)


def test_finetune_stages_need_a_frozen_transfer_backbone() -> None:
    recipe = tiny_recipe(model=TINY_TIMM)
    with pytest.raises(RecipeError, match="freeze_backbone"):
        apply_overrides(recipe, ["model.freeze_backbone=false", "train.finetune_stages=[{epochs: 1}]"])
    with pytest.raises(RecipeError, match="wise_alphas"):
        apply_overrides(recipe, ["train.wise_alphas=[0.5]"])


@pytest.mark.slow
def test_lp_ft_with_wise_trains_probe_then_stages_and_keeps_the_best_alpha(
    synthetic_root: Path, tmp_path: Path
) -> None:
    recipe = tiny_recipe(
        model={**TINY_TIMM, "head": "linear", "freeze_backbone": True},
        augment={"enabled": True, "gamma": [0.7, 1.4], "crop_scale": 0.7},
        data={"intensity": "equalize"},
        train={
            "max_epochs": 3,
            "cache_views": 2,
            "finetune_stages": [
                {"epochs": 1, "unfreeze": 1, "learning_rate": 1e-3},
                {"epochs": 1, "unfreeze": "all", "learning_rate": 3e-4, "layer_decay": 0.7},
            ],
            "wise_alphas": [0.0, 0.5, 1.0],
        },
    )
    result = train_recipe(recipe, synthetic_root, tmp_path / "lpft", show_progress=False)
    config = json.loads((result.bundle_dir / "config.json").read_text())
    finetuning = config["training"]["finetuning"]
    assert [s["stage"] for s in finetuning["stages"]] == [1, 2]
    assert finetuning["stages"][0]["trainable_parameters"] < finetuning["stages"][1]["trainable_parameters"]
    losses = finetuning["wise_ft"]["val_loss_per_alpha"]
    assert finetuning["wise_ft"]["alpha"] == float(min(losses, key=losses.__getitem__))
    assert [row["stage"] for row in result.history][-2:] == ["finetune-1", "finetune-2"]
    assert (tmp_path / "lpft" / "checkpoints" / "stage-2" / "final.safetensors").is_file()
    # The saved bundle is the chosen interpolation and predicts as the validation metrics say.
    assert config["preprocessing"]["intensity"] == "equalize"
    bundle = load_bundle(result.bundle_dir)
    val_paths = config["training"]["val_paths"]
    probabilities = Predictor(bundle).predict_images([Image.open(p).convert("RGB") for p in val_paths])
    labels = [
        next(i for i, c in enumerate(("glioma", "meningioma", "no_tumor", "pituitary")) if c in p) for p in val_paths
    ]
    accuracy = float(np.mean(probabilities.argmax(1) == np.array(labels)))
    assert accuracy == pytest.approx(config["training"]["val_metrics"]["accuracy"])


@pytest.mark.slow
def test_resuming_a_finished_lp_ft_run_reuses_probe_and_stages(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(
        model={**TINY_TIMM, "head": "linear", "freeze_backbone": True},
        augment={"enabled": False},
        train={"max_epochs": 2, "finetune_stages": [{"epochs": 1, "unfreeze": 1}], "wise_alphas": [0.0, 1.0]},
    )
    first = train_recipe(recipe, synthetic_root, tmp_path / "run", show_progress=False)
    before = load_bundle(first.bundle_dir).model.state_dict()
    again = train_recipe(recipe, synthetic_root, tmp_path / "run", show_progress=False, resume=True)
    config = json.loads((again.bundle_dir / "config.json").read_text())
    assert config["training"]["finetuning"]["stages"][0].get("reused") is True
    for key, value in load_bundle(again.bundle_dir).model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


@pytest.mark.slow
def test_feature_cache_trains_the_same_head_as_the_image_path(synthetic_root: Path, tmp_path: Path) -> None:
    """Without augmentation, cached features are exact: both paths must train the same head."""
    heads = {}
    for cached in (True, False):
        recipe = tiny_recipe(
            model={"architecture": "transfer", "backbone": "mobilenetv3_small_050", "pretrained": False},
            augment={"enabled": False},
            train={"max_epochs": 3, "feature_cache": cached, "early_stopping_patience": 5},
        )
        result = train_recipe(recipe, synthetic_root, tmp_path / str(cached), show_progress=False)
        heads[cached] = (load_bundle(result.bundle_dir).model.head.state_dict(), result.history)
    for key, value in heads[True][0].items():
        torch.testing.assert_close(value, heads[False][0][key], atol=1e-4, rtol=1e-4, msg=key)
    assert [r["val_loss"] for r in heads[True][1]] == pytest.approx([r["val_loss"] for r in heads[False][1]], rel=1e-4)


@pytest.mark.slow
def test_ensemble_bundle_averages_member_probabilities(trained_run, synthetic_root: Path, tmp_path: Path) -> None:
    second = train_recipe(
        tiny_recipe(train={"max_epochs": 3, "seed": 7}), synthetic_root, tmp_path / "second", show_progress=False
    )
    folder = combine_bundles([trained_run.bundle_dir, second.bundle_dir], tmp_path / "ensemble", weights=[3, 1])
    ensemble = load_bundle(folder)
    assert isinstance(ensemble.model, EnsembleNet) and ensemble.config.ensemble.weights == [0.75, 0.25]
    images = [Image.open(p).convert("RGB") for p in sorted((synthetic_root / "Testing").rglob("*.jpg"))[:6]]
    # fp32 throughout: bf16 rounds the members' and the ensemble's products differently.
    bundles = (trained_run.bundle_dir, second.bundle_dir)
    members = [Predictor(load_bundle(b), precision="32").predict_images(images) for b in bundles]
    np.testing.assert_allclose(
        Predictor(ensemble, precision="32").predict_images(images), 0.75 * members[0] + 0.25 * members[1], atol=1e-5
    )
    with pytest.raises(BundleError, match="at least two"):
        combine_bundles([trained_run.bundle_dir], tmp_path / "one")
    other_split = train_recipe(
        tiny_recipe(train={"max_epochs": 1}, data={"split_seed": 3}),
        synthetic_root,
        tmp_path / "s3",
        show_progress=False,
    )
    with pytest.raises(BundleError, match="validated on other files"):
        combine_bundles([trained_run.bundle_dir, other_split.bundle_dir], tmp_path / "bad")


def test_ensemble_command_and_explain_layer(trained_run, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from braintumor.cli import app
    from braintumor.explain.gradcam import find_target_layer

    runner = CliRunner()
    out = tmp_path / "ens"
    result = runner.invoke(app, ["ensemble", str(trained_run.bundle_dir), str(trained_run.bundle_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    name, _ = find_target_layer(load_bundle(out).model)
    assert name.startswith("members.0.backbone")
    bad = runner.invoke(app, ["ensemble", str(trained_run.bundle_dir), str(tmp_path / "missing"), "-o", str(out)])
    assert bad.exit_code == 2 and "missing" in bad.output


def test_ensemble_bundle_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    from braintumor.bundle import save_bundle
    from braintumor.inference.onnx_export import export_onnx
    from braintumor.models import resolve_preprocessing

    recipe = tiny_recipe()
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model(recipe)
        paths.append(save_bundle(tmp_path / f"m{seed}", model, recipe, resolve_preprocessing(recipe, model)))
    result = export_onnx(load_bundle(combine_bundles(paths, tmp_path / "ensemble")))
    assert result.max_abs_diff < 1e-4
