"""Vision transformers from a recipe: timm's ViT/DeiT built at the recipe's size, in bundles, exported to ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from braintumor.bundle import load_bundle, save_bundle
from braintumor.config import Recipe, RecipeError, load_recipe
from braintumor.inference.onnx_export import PARITY_TOLERANCE, export_onnx
from braintumor.models import create_model, resolve_preprocessing
from tests.conftest import TINY_VIT


def _recipe(**model: object) -> Recipe:
    return Recipe.model_validate({**TINY_VIT, "model": {**TINY_VIT["model"], **model}})


def test_a_tiny_vit_is_built_at_the_recipes_size_with_its_backbone_args() -> None:
    model = create_model(_recipe())
    backbone = model.backbone
    assert tuple(backbone.patch_embed.grid_size) == (4, 4) and backbone.num_prefix_tokens == 1
    assert len(backbone.blocks) == 2 and backbone.embed_dim == 48 and model.num_features == 48
    assert all(p.requires_grad for p in model.parameters())  # from scratch: everything trains
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    preprocessing = resolve_preprocessing(_recipe(), model)
    assert preprocessing.image_size == 32 and preprocessing.interpolation == "bicubic"


def test_the_vit_tiny_recipe_is_deit_tiny_at_128_px() -> None:
    recipe = load_recipe("vit-tiny")
    assert recipe.model.backbone == "deit_tiny_patch16_224" and not recipe.model.pretrained
    assert not recipe.model.freeze_backbone and recipe.data.image_size == 128
    backbone = create_model(recipe).backbone
    assert tuple(backbone.patch_embed.grid_size) == (8, 8) and len(backbone.blocks) == 12


def test_backbone_args_cannot_override_what_the_recipe_decides_elsewhere() -> None:
    for key in ("img_size", "num_classes", "pretrained"):
        with pytest.raises(ValueError, match=f"backbone_args must not set {key}"):
            _recipe(backbone_args={key: 1})
    with pytest.raises(RecipeError, match="backbone_args must not set img_size"):
        load_recipe("vit-tiny", ["model.backbone_args={img_size: 64}"])


def test_backbone_args_timm_refuses_are_a_recipe_error() -> None:
    recipe = _recipe(backbone_args={"embed_dim": 48, "num_heads": 5})  # 48 does not split into 5 heads
    with pytest.raises(RecipeError, match="cannot build backbone 'deit_tiny_patch16_224'"):
        create_model(recipe)
    with pytest.raises(RecipeError, match="cannot build backbone"):
        create_model(_recipe(backbone_args={"no_such_argument": 1}))


def test_a_cnn_is_built_as_before_whatever_the_image_size() -> None:
    recipe = Recipe.model_validate(
        {"name": "r", "data": {"image_size": 48}, "model": {"backbone": "resnet18", "pretrained": False}}
    )
    assert create_model(recipe).eval()(torch.rand(1, 3, 48, 48)).shape == (1, 4)


def test_a_vit_bundle_round_trips_and_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    recipe = _recipe()
    torch.manual_seed(0)
    model = create_model(recipe).eval()
    folder = save_bundle(tmp_path / "bundle", model, recipe, resolve_preprocessing(recipe, model))
    bundle = load_bundle(folder)
    inputs = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(bundle.model(inputs), model(inputs), atol=1e-6)
    result = export_onnx(bundle)
    assert result.passed and result.max_abs_diff <= PARITY_TOLERANCE
