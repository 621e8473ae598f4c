"""Explanations of a vision transformer: Grad-CAM on patch tokens, attention rollout, sanity checks, the CLI."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

from braintumor.bundle import load_bundle, save_bundle
from braintumor.bundle.examples import tiny_bundle
from braintumor.cli import app
from braintumor.config import Recipe
from braintumor.errors import BrainTumorError
from braintumor.explain import Explainer, ExplainError, explain_paths, find_target_layer, gradcam_overlay
from braintumor.explain.attributions import LabelledImages
from braintumor.explain.gradcam import class_activation_maps
from braintumor.explain.run import cam_grid, parse_methods, sanity_checks, summarise_sanity
from braintumor.explain.sanity import randomised_copy
from braintumor.explain.transformer import (
    NotATransformerError,
    TokenLayout,
    attention_rollout,
    block_inputs,
    blocks_onwards,
    capture_attentions,
    find_transformer,
    from_block,
    rollout,
    rollout_relevance,
)
from braintumor.models import create_model, resolve_preprocessing
from tests.conftest import TINY_VIT

SIZE = TINY_VIT["data"]["image_size"]


def _tiny_vit(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(Recipe.model_validate(TINY_VIT)).eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return _tiny_vit()


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recipe = Recipe.model_validate(TINY_VIT)
    torch.manual_seed(0)
    model = create_model(recipe)
    return save_bundle(tmp_path_factory.mktemp("vit") / "bundle", model, recipe, resolve_preprocessing(recipe, model))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three grey 'slices': a bright disc at different places on a dark background."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, (cx, cy) in enumerate([(16, 16), (10, 22), (24, 9)]):
        yy, xx = np.mgrid[0:40, 0:40]
        disc = ((xx - cx * 1.25) ** 2 + (yy - cy * 1.25) ** 2 < 60).astype(np.uint8) * 180 + 30
        path = folder / f"slice{index}.png"
        Image.fromarray(np.stack([disc] * 3, axis=-1)).save(path)
        paths.append(path)
    return paths


def _inputs(count: int = 3) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_the_target_layer_is_the_last_attention_input(vit) -> None:
    name, layer = find_target_layer(vit)
    # A class-token ViT: after the last attention the patch tokens no longer reach the output.
    assert name == "backbone.blocks.1.norm1" and layer is vit.backbone.blocks[1].norm1


def test_token_layout_drops_prefix_tokens_and_keeps_row_major_order() -> None:
    layout = TokenLayout(prefix_tokens=2, grid=(2, 3))  # e.g. DeiT's class and distillation tokens
    patches = torch.arange(6, dtype=torch.float32).view(1, 6, 1).expand(1, 6, 4)
    tokens = torch.cat([torch.full((1, 2, 4), -1.0), patches], dim=1)
    grid = layout.to_grid(tokens)
    assert grid.shape == (1, 4, 2, 3)
    assert torch.equal(grid[0, 0], torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]))
    assert torch.equal(grid[0, 3], grid[0, 0])
    # The patch embedding's own output has no prefix tokens yet; a wrong token count is explained.
    assert torch.equal(layout.to_grid(patches), grid)
    with pytest.raises(ExplainError, match="7 tokens"):
        layout.to_grid(torch.zeros(1, 7, 4))


def test_gradcam_on_patch_tokens_has_the_input_size_and_is_not_flat(vit) -> None:
    _, layer = find_target_layer(vit)
    inputs = _inputs()
    for method in ("gradcam", "gradcam++"):
        maps = class_activation_maps(vit, layer, inputs, [0, 1, 2], method)
        assert maps.shape == (3, SIZE, SIZE)
        assert bool(torch.isfinite(maps).all()) and float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
        assert any(float(single.std()) > 0 for single in maps)  # gradients reached the patch tokens
    assert not any(p.requires_grad for p in vit.parameters())


def test_a_named_token_layer_and_the_patch_grid(vit_bundle: Path) -> None:
    bundle = load_bundle(vit_bundle)
    explainer = Explainer(bundle, layer="blocks.0")
    inputs = explainer.to_inputs([Image.new("RGB", (40, 40), (90, 90, 90))])
    assert explainer.maps(inputs, [0], "gradcam").shape == (1, SIZE, SIZE)
    assert cam_grid(explainer, inputs) == (4, 4) and explainer.map_grid("rollout", inputs) == (4, 4)
    assert explainer.is_transformer and "rollout" in explainer.methods_available()


def test_captured_attention_is_timms_own(vit) -> None:
    inputs = _inputs(2)
    captured = capture_attentions(vit.backbone, inputs)
    assert len(captured) == 2 and captured[0].shape == (2, 2, 17, 17)
    assert torch.allclose(captured[0].sum(dim=-1), torch.ones(2, 2, 17))
    # timm's unfused path materialises the softmax before its (inactive) dropout: compare with that.
    reference = _tiny_vit()
    seen: list[torch.Tensor] = []
    for block in reference.backbone.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda _m, _i, output: seen.append(output))
    with torch.no_grad():
        reference.backbone(inputs)
    for mine, theirs in zip(captured, seen, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_rollout_rows_sum_to_one_and_a_hand_checked_case(vit) -> None:
    matrix = rollout(capture_attentions(vit.backbone, _inputs(2)))
    assert matrix.shape == (2, 17, 17)
    assert torch.allclose(matrix.sum(dim=-1), torch.ones(2, 17), atol=1e-5)
    layout = TokenLayout(1, (2, 2))
    # Identity attention: every token keeps to itself, the class token takes nothing from the patches.
    identity = torch.eye(5).expand(1, 3, 5, 5)
    assert torch.equal(rollout_relevance(rollout([identity]), layout), torch.zeros(1, 2, 2))
    # Uniform attention: half of each row stays (residual), the other half spreads evenly: a uniform map.
    uniform = torch.full((1, 3, 5, 5), 0.2)
    assert torch.allclose(rollout_relevance(rollout([uniform]), layout), torch.full((1, 2, 2), 0.1))
    # The class token looking only at the last patch, in both of two layers: (I + A)/2 squared.
    looking = torch.eye(5).clone()
    looking[0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    relevance = rollout_relevance(rollout([looking.expand(1, 2, 5, 5)] * 2), layout)
    assert torch.allclose(relevance, torch.tensor([[[0.0, 0.0], [0.0, 0.75]]]))


def test_attention_rollout_maps(vit) -> None:
    maps = attention_rollout(vit, _inputs())
    assert maps.shape == (3, SIZE, SIZE)
    assert bool(torch.isfinite(maps).all()) and float(maps.min()) >= 0.0
    assert torch.allclose(maps.amax(dim=(1, 2)), torch.ones(3))


def test_rollout_on_a_cnn_is_a_clear_error(tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle(tmp_path / "cnn"))
    explainer = Explainer(bundle)
    inputs = explainer.to_inputs([Image.new("RGB", (40, 40), (90, 90, 90))])
    assert "rollout" not in explainer.methods_available()
    with pytest.raises(NotATransformerError, match=r"needs a vision transformer.*use gradcam, gradcam\+\+ or shap"):
        explainer.maps(inputs, [0], "rollout")
    assert issubclass(NotATransformerError, ExplainError) and issubclass(NotATransformerError, BrainTumorError)
    with pytest.raises(ExplainError, match="needs a vision transformer"):
        gradcam_overlay(bundle, Image.new("RGB", (40, 40)), method="rollout")
    image = tmp_path / "grey.png"
    Image.new("RGB", (40, 40), (90, 90, 90)).save(image)
    with pytest.raises(ExplainError, match=r"rollout needs a vision transformer.*SeedCNN"):
        explain_paths(bundle, [image], tmp_path / "out", methods=["rollout"], show_progress=False)
    # "all" means every method that applies: rollout is left out, with a note.
    run = explain_paths(bundle, [image], tmp_path / "all", methods=parse_methods("all"), show_progress=False)
    assert run.images[0]["methods"] == ["gradcam", "gradcam++", "shap"]
    assert any("rollout left out" in note for note in run.notes)


def test_randomisation_redraws_the_tokens_and_sanity_checks_run(vit_bundle: Path, images: list[Path]) -> None:
    bundle = load_bundle(vit_bundle)
    explainer = Explainer(bundle)
    clone, reset = randomised_copy(explainer.model)
    assert not torch.equal(clone.backbone.cls_token, explainer.model.backbone.cls_token)
    assert not torch.equal(clone.backbone.pos_embed, explainer.model.backbone.pos_embed)
    assert reset > 0
    inputs = explainer.to_inputs([Image.open(path).convert("RGB") for path in images])
    targets = explainer.probabilities(inputs).argmax(dim=1).tolist()
    size = bundle.preprocessing.image_size
    generator = torch.Generator().manual_seed(0)
    labelled = LabelledImages(
        torch.randint(0, 256, (24, 3, size, size), dtype=torch.uint8, generator=generator), torch.arange(24) % 4
    )
    sanity = sanity_checks(
        explainer, inputs, targets, ["gradcam", "rollout"], steps=4, random_orders=1, labelled=labelled
    )
    assert sanity["layer"] == "backbone.blocks.1.norm1"
    for method in ("gradcam", "rollout"):
        values = sanity["methods"][method]
        assert len(values["randomisation"]["rank_correlations"]) == 3
        # The transformer trained end to end: the blocks the method reads learn the shuffled labels with the head
        # (Grad-CAM reads the last block; rollout multiplies every block's attention).
        labels = values["label_randomisation"]
        scope = "last block and head" if method == "gradcam" else "every block and head"
        assert labels["scope"] == scope and labels["n_labelled"] == 24
        assert len(labels["rank_correlations"]) == 3 and labels["fit_accuracy"] > 0.25
        assert values["deletion"]["random_grid"] == [4, 4]
        assert np.isfinite(values["deletion"]["auc_attributed"])
        assert "note" not in labels
    # Rollout reads the attention, which the re-fitted blocks changed: its maps no longer agree exactly.
    rollout_labels = sanity["methods"]["rollout"]["label_randomisation"]
    assert rollout_labels["mean_abs_rank_correlation"] < 0.999


def test_rollout_after_a_head_only_refit_says_why_it_cannot_change(vit_bundle: Path, images: list[Path]) -> None:
    """A head-only re-fit (the test of a frozen backbone) leaves rollout's maps exactly as they were, and says why."""
    explainer = Explainer(load_bundle(vit_bundle))
    inputs = explainer.to_inputs([Image.open(path).convert("RGB") for path in images])
    targets = explainer.probabilities(inputs).argmax(dim=1).tolist()
    size = explainer.bundle.preprocessing.image_size
    labelled = LabelledImages(torch.randint(0, 256, (12, 3, size, size), dtype=torch.uint8), torch.arange(12) % 4)
    explainer.model.frozen_backbone = True  # as a probe on a frozen transformer would be
    sanity = sanity_checks(explainer, inputs, targets, ["rollout"], steps=4, random_orders=1, labelled=labelled)
    rollout_labels = sanity["methods"]["rollout"]["label_randomisation"]
    assert rollout_labels["scope"].startswith("head")
    assert rollout_labels["mean_abs_rank_correlation"] > 0.999 and not rollout_labels["passed"]
    assert "does not read the head" in rollout_labels["note"]
    assert "does not read the head" in summarise_sanity(sanity)[0][2]


@pytest.mark.parametrize("backbone", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
@pytest.mark.parametrize("first", [-1, 0, 1])
def test_the_top_from_a_blocks_inputs_is_the_whole_transformer(backbone: str, first: int) -> None:
    transformer = timm.create_model(
        backbone, pretrained=False, num_classes=0, img_size=32, patch_size=8, depth=3, embed_dim=48, num_heads=2
    ).eval()
    x = torch.randn(3, 3, 32, 32)
    tokens = block_inputs(transformer, x, first)
    assert tokens.shape == (3, 16 + transformer.num_prefix_tokens, 48)
    with torch.no_grad():
        torch.testing.assert_close(from_block(transformer, tokens, first), transformer(x))
    parts = blocks_onwards(transformer, first)
    assert transformer.blocks[-1] in parts and transformer.norm in parts
    assert len([part for part in parts if part in list(transformer.blocks)]) == len(transformer.blocks[first:])


def test_overlay_with_rollout_for_a_transformer_bundle(vit_bundle: Path) -> None:
    bundle = load_bundle(vit_bundle)
    image = Image.new("RGB", (60, 45), (100, 100, 100))
    overlay, target = gradcam_overlay(bundle, image, method="rollout")
    assert overlay.size == (60, 45) and target in bundle.class_names
    overlay, named = gradcam_overlay(bundle, image, target="glioma")
    assert named == "glioma" and overlay.size == (60, 45)


def test_explain_command_with_rollout_on_a_transformer_bundle(vit_bundle: Path, images: list[Path], tmp_path) -> None:
    out = tmp_path / "explained"
    args = ["explain", str(vit_bundle), str(images[0]), str(images[1]), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--method", "rollout,gradcam", "--sanity", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "explanations.json").read_text())
    assert summary["methods"] == ["rollout", "gradcam"] and summary["layer"] == "backbone.blocks.1.norm1"
    for item in summary["images"]:
        with Image.open(item["figure"]) as figure:
            assert figure.format == "PNG"
    assert set(json.loads((out / "sanity.json").read_text())["methods"]) == {"rollout", "gradcam"}


def test_find_transformer_is_none_for_a_cnn(tmp_path: Path) -> None:
    assert find_transformer(load_bundle(tiny_bundle(tmp_path / "cnn")).model) is None


def test_the_server_draws_rollout_for_a_transformer_and_refuses_it_for_a_cnn(vit_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from braintumor.serving.app import create_app
    from braintumor.serving.settings import ServeSettings

    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 90, 90)).save(buffer, format="PNG")
    upload = {"file": ("a.png", buffer.getvalue(), "image/png")}
    settings = ServeSettings(backend="torch")
    response = TestClient(create_app(vit_bundle, settings)).post("/v1/explain?method=rollout", files=upload)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    cnn_app = create_app(tiny_bundle(tmp_path / "cnn"), settings)
    cnn = TestClient(cnn_app).post("/v1/explain?method=rollout", files=upload)
    assert cnn.status_code == 422 and "needs a vision transformer" in cnn.json()["detail"]


def test_a_vit_with_a_distillation_token_is_explained_on_its_patches(tmp_path: Path) -> None:
    raw = {**TINY_VIT, "model": {**TINY_VIT["model"], "backbone": "deit_tiny_distilled_patch16_224"}}
    recipe = Recipe.model_validate(raw)
    torch.manual_seed(0)
    model = create_model(recipe)
    bundle = load_bundle(save_bundle(tmp_path / "deit", model, recipe, resolve_preprocessing(recipe, model)))
    explainer = Explainer(bundle)
    assert explainer.tokens is not None and explainer.tokens.prefix_tokens == 2  # class and distillation tokens
    inputs = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    for method in ("gradcam", "rollout"):
        maps = explainer.maps(inputs, [0, 1], method)
        assert maps.shape == (2, SIZE, SIZE) and float(maps.max()) == pytest.approx(1.0)
