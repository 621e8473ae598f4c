"""Grad-CAM, Grad-CAM++ and SHAP maps, their target layers, the sanity checks and the explain command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import braintumor
from braintumor.api import FLAG_REASON
from braintumor.bundle import load_bundle
from braintumor.cli import app
from braintumor.config import Recipe
from braintumor.errors import BrainTumorError
from braintumor.explain import Explainer, ExplainError, find_target_layer, gradcam_overlay, resolve_layer
from braintumor.explain.attributions import background_images
from braintumor.explain.gradcam import class_activation_maps
from braintumor.explain.run import cam_grid, method_explain_function
from braintumor.explain.sanity import (
    DeletionSettings,
    deletion_curve,
    label_randomisation_test,
    model_randomisation_test,
    random_label_copy,
)
from braintumor.guard.reasons import NOT_AN_MRI
from braintumor.inference import Predictor
from braintumor.models import create_model


@pytest.fixture(scope="module")
def bundle(trained_run):
    return load_bundle(trained_run.bundle_dir)


@pytest.fixture(scope="module")
def test_images(synthetic_root: Path) -> list[Path]:
    """Two Testing images of every class."""
    return [p for folder in sorted((synthetic_root / "Testing").iterdir()) for p in sorted(folder.iterdir())[:2]]


def _timm_recipe(backbone: str, size: int = 64) -> Recipe:
    return Recipe.model_validate(
        {
            "name": f"tiny-{backbone}",
            "data": {"image_size": size},
            "model": {"architecture": "transfer", "backbone": backbone, "pretrained": False, "head_hidden": 8},
        }
    )


def test_target_layer_of_the_custom_cnn_is_its_last_conv_block(bundle) -> None:
    name, layer = find_target_layer(bundle.model)
    blocks = bundle.model.backbone.blocks
    assert name == f"backbone.blocks.{len(blocks) - 1}"
    assert layer is blocks[-1]
    assert any(isinstance(m, torch.nn.Conv2d) for m in layer.modules())


@pytest.mark.parametrize(
    ("backbone", "expected_layer"),
    [
        ("resnet18", "backbone.layer4"),
        ("tf_efficientnet_lite0", "backbone.bn2"),
        ("mobilenetv3_small_050", "backbone.blocks.5"),
    ],
)
def test_target_layer_and_maps_for_timm_families(backbone: str, expected_layer: str) -> None:
    # A randomly initialised head can have every hidden unit dead for these two inputs (all maps zero):
    # seed it so the test does not depend on what ran before it in the same worker.
    torch.manual_seed(0)
    model = create_model(_timm_recipe(backbone), load_pretrained=False).eval()
    assert model.frozen_backbone and not any(p.requires_grad for p in model.backbone.parameters())
    name, layer = find_target_layer(model)
    assert name == expected_layer
    assert layer is model.get_submodule(expected_layer)
    inputs = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).repeat_interleave(4, dim=0)
    targets = [0, 1, 2, 3] * 2
    for method in ("gradcam", "gradcam++"):
        maps = class_activation_maps(model, layer, inputs, targets, method)
        assert maps.shape == (8, 64, 64)
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
        # Gradients reached the frozen backbone's activations: some class has positive evidence (ReLU'd
        # maps of the others may be empty), and each non-empty map is scaled to a peak of 1.
        peaks = maps.amax(dim=(1, 2))
        assert bool((peaks > 0).any())
        assert torch.allclose(peaks[peaks > 0], torch.ones(int((peaks > 0).sum())))
    # The frozen backbone stayed frozen.
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_a_layer_can_be_named_and_a_wrong_name_is_explained(bundle) -> None:
    name, layer = resolve_layer(bundle.model, "blocks.0")
    assert name == "backbone.blocks.0" and layer is bundle.model.backbone.blocks[0]
    with pytest.raises(ExplainError, match=r"no layer 'backbone\.blokcs\.1'.*backbone\.blocks\.1"):
        resolve_layer(bundle.model, "backbone.blokcs.1")
    explainer = Explainer(bundle, layer="backbone.blocks.0")
    inputs = explainer.to_inputs([Image.new("RGB", (48, 48), (90, 90, 90))])
    size = bundle.preprocessing.image_size
    assert explainer.maps(inputs, [0], "gradcam").shape == (1, size, size)


def test_map_shapes_and_value_ranges(bundle, test_images: list[Path]) -> None:
    explainer = Explainer(bundle)
    size = bundle.preprocessing.image_size
    inputs = explainer.to_inputs([Image.open(p).convert("RGB") for p in test_images[:4]])
    background = background_images(bundle, count=8)
    assert background.images is not None and background.images.shape == (8, 3, size, size)
    assert "Training" in background.source
    for method in ("gradcam", "gradcam++"):
        maps = explainer.maps(inputs, [0, 1, 2, 3], method)
        assert maps.shape == (4, size, size) and maps.dtype == torch.float32
        assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    shap = explainer.maps(inputs, [0, 1, 2, 3], "shap", background=background, n_samples=8)
    assert shap.shape == (4, size, size)
    assert float(shap.min()) >= -1.0 and float(shap.max()) <= 1.0
    assert float(shap.min()) < 0.0 < float(shap.max())  # signed: evidence for and against
    with pytest.raises(ExplainError, match="unknown method"):
        explainer.maps(inputs, [0, 1, 2, 3], "lime")


def test_shap_falls_back_to_black_and_blurred_baselines_without_training_images(bundle, tmp_path: Path) -> None:
    config = bundle.config.model_copy(deep=True)
    config.training.data_root = str(tmp_path / "moved-away")
    moved = replace(bundle, config=config)
    background = background_images(moved)
    assert background.images is None and "--background-dir" in (background.note or "")
    explainer = Explainer(moved)
    inputs = explainer.to_inputs([Image.new("RGB", (48, 48), (120, 120, 120))])
    maps = explainer.maps(inputs, [1], "shap", background=background, n_samples=4)
    assert maps.shape[0] == 1 and float(maps.abs().max()) <= 1.0
    with pytest.raises(BrainTumorError, match="does not exist"):
        background_images(bundle, background_dir=tmp_path / "missing")


def test_gradcam_overlay_api(bundle, test_images: list[Path]) -> None:
    image = Image.open(test_images[0]).convert("RGB").resize((70, 50))
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    flags = [p.requires_grad for p in bundle.model.parameters()]
    overlay, target = gradcam_overlay(bundle, image)
    predicted = Predictor(bundle).to_prediction("x", Predictor(bundle).predict_images([image])[0]).class_name
    assert target == predicted
    assert overlay.mode == "RGB" and overlay.size == (70, 50)
    assert not np.array_equal(np.asarray(overlay), np.asarray(image))
    overlay_pp, named = gradcam_overlay(bundle, image, target="pituitary", method="gradcam++")
    assert named == "pituitary" and overlay_pp.size == (70, 50)
    with pytest.raises(ExplainError, match="unknown class 'astrocytoma'"):
        gradcam_overlay(bundle, image, target="astrocytoma")
    with pytest.raises(ExplainError, match="unknown method"):
        gradcam_overlay(bundle, image, method="shap")
    # The served model is untouched: same weights, same trainable flags, still in eval mode.
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())
    assert [p.requires_grad for p in bundle.model.parameters()] == flags
    assert not bundle.model.training


def _edges(model: torch.nn.Module, inputs: torch.Tensor, targets) -> torch.Tensor:
    """An 'explainer' that ignores the model: the image's gradient magnitude (an edge detector)."""
    grey = inputs.mean(dim=1)
    dx = torch.nn.functional.pad(grey.diff(dim=2).abs(), (0, 1))
    dy = torch.nn.functional.pad(grey.diff(dim=1).abs(), (0, 0, 0, 1))
    return dx + dy


def test_randomisation_test_fails_for_a_map_that_ignores_the_weights(bundle, test_images: list[Path]) -> None:
    explainer = Explainer(bundle)
    inputs = explainer.to_inputs([Image.open(p).convert("RGB") for p in test_images])
    targets = explainer.probabilities(inputs).argmax(dim=1).tolist()
    edges = model_randomisation_test(explainer.model, inputs, targets, _edges)
    assert not edges.passed
    assert edges.mean_abs_rank_correlation == pytest.approx(1.0)
    assert edges.reinitialised_modules > 0
    gradcam = model_randomisation_test(explainer.model, inputs, targets, method_explain_function(explainer, "gradcam"))
    assert gradcam.passed, gradcam
    assert gradcam.mean_abs_rank_correlation < edges.mean_abs_rank_correlation


def test_label_randomisation_memorises_shuffled_labels_and_catches_a_map_that_ignores_them(
    bundle, test_images: list[Path]
) -> None:
    explainer = Explainer(bundle)
    inputs = explainer.to_inputs([Image.open(p).convert("RGB") for p in test_images])
    targets = explainer.probabilities(inputs).argmax(dim=1).tolist()
    size = bundle.preprocessing.image_size
    labelled = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(0))  # 32 distinct images
    with torch.no_grad():
        features = explainer.model.forward_features(labelled).float()
    labels = torch.arange(len(features)) % 4
    head_before = [p.clone() for p in explainer.model.head.parameters()]
    shuffled, accuracy = random_label_copy(explainer.model, features, labels, seed=0)
    assert accuracy >= 0.9  # the head memorised labels that say nothing about the images
    assert all(torch.equal(a, b) for a, b in zip(head_before, explainer.model.head.parameters(), strict=True))
    assert not torch.equal(shuffled.head[-1].weight, explainer.model.head[-1].weight)
    edges = label_randomisation_test(explainer.model, inputs, targets, _edges, features, labels, scope="head only")
    assert not edges.passed and edges.mean_abs_rank_correlation == pytest.approx(1.0)
    assert edges.n_labelled == len(labels) and edges.scope == "head only"
    gradcam = method_explain_function(explainer, "gradcam")
    result = label_randomisation_test(explainer.model, inputs, targets, gradcam, features, labels, scope="head only")
    assert result.mean_abs_rank_correlation < edges.mean_abs_rank_correlation


def test_deletion_curve_ranks_gradcam_above_random_and_inverted_orders(bundle, test_images: list[Path]) -> None:
    explainer = Explainer(bundle)
    inputs = explainer.to_inputs([Image.open(p).convert("RGB") for p in test_images])
    targets = explainer.probabilities(inputs).argmax(dim=1).tolist()
    maps = explainer.maps(inputs, targets, "gradcam")
    grid = cam_grid(explainer, inputs)
    size = bundle.preprocessing.image_size
    assert grid == (size // 2 ** len(bundle.model.backbone.blocks),) * 2
    result = deletion_curve(
        explainer.model, inputs, targets, maps, explainer.black, DeletionSettings(steps=8, grid=grid)
    )
    assert len(result.fractions) == 9 and result.fractions[0] == 0.0 and result.fractions[-1] == 1.0
    assert result.random_grid == list(grid)
    assert result.passed and result.auc_attributed < result.auc_random
    # Deleting the least attributed pixels first keeps the score up longer: the curve measures the ordering.
    inverted = deletion_curve(
        explainer.model, inputs, targets, 1.0 - maps, explainer.black, DeletionSettings(steps=8, grid=grid)
    )
    assert inverted.auc_attributed > result.auc_attributed


def test_explain_command_writes_figures_json_and_sanity(trained_run, test_images: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "explained"
    args = ["explain", str(trained_run.bundle_dir), str(test_images[0]), str(test_images[4]), str(broken)]
    result = CliRunner().invoke(
        app, [*args, "--out", str(out), "--method", "all", "--target", "all", "--shap-samples", "4", "--sanity", "-q"]
    )
    assert result.exit_code == 0, result.output
    # The terminal folds long paths at its width: read the output unfolded.
    assert "skipped" in result.output and "broken.jpg" in result.output.replace("\n", "")
    summary = json.loads((out / "explanations.json").read_text())
    assert [Path(item["path"]).name for item in summary["images"]] == [test_images[0].name, test_images[4].name]
    assert summary["methods"] == ["gradcam", "gradcam++", "shap"]
    assert summary["images"][0]["targets"] == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert "Training" in summary["shap_background"]
    for item in summary["images"]:
        with Image.open(item["figure"]) as figure:
            assert figure.format == "PNG" and figure.width > 600 and figure.height > 400
    sanity = json.loads((out / "sanity.json").read_text())
    assert set(sanity["methods"]) == {"gradcam", "gradcam++", "shap"}
    # The bundle's validation images are on this machine: the label randomisation test ran on them.
    for values in sanity["methods"].values():
        labels = values["label_randomisation"]
        assert labels["n_labelled"] > 0 and 0.0 <= labels["mean_abs_rank_correlation"] <= 1.0
        assert labels["scope"] == "head only"  # the custom CNN trained end to end
    assert (out / "deletion_curves.png").stat().st_size > 1000
    assert "Sanity checks" in result.output

    bad = CliRunner().invoke(
        app, ["explain", str(trained_run.bundle_dir), str(test_images[0]), "--out", str(out), "-t", "tumour"]
    )
    assert bad.exit_code == 2 and "unknown class 'tumour'" in bad.output
    bad_layer = CliRunner().invoke(
        app, ["explain", str(trained_run.bundle_dir), str(test_images[0]), "--out", str(out), "--layer", "head.9"]
    )
    assert bad_layer.exit_code == 2 and "no layer 'head.9'" in bad_layer.output


def test_a_flagged_image_is_listed_not_drawn_unless_asked(trained_run, test_images: list[Path], tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(photo)
    bundle = braintumor.load(trained_run.bundle_dir)
    run = bundle.explain([photo, test_images[0]], tmp_path / "default")
    assert [Path(item.source).name for item in run.images] == [test_images[0].name]
    assert run.images[0].class_name is not None
    # A colour photo: the guard says what it saw, not only that the image is unlike the training ones.
    assert any("photo.png" in note and NOT_AN_MRI in note for note in run.notes)
    summary = json.loads((tmp_path / "default" / "explanations.json").read_text())
    assert [Path(item["path"]).name for item in summary["flagged"]] == ["photo.png"]
    assert summary["flagged"][0]["flag_reason"].startswith(NOT_AN_MRI) and summary["images"][0]["flagged"] is False
    assert not (tmp_path / "default" / "photo.png").exists()

    drawn = bundle.explain([photo], tmp_path / "asked", explain_flagged=True)
    assert len(drawn.images) == 1 and drawn.images[0].class_name is None and drawn.images[0].figure.is_file()
    record = json.loads((tmp_path / "asked" / "explanations.json").read_text())["images"][0]
    assert (
        record["predicted_class"] is None and record["flagged"] is True and record["flag_reason"].startswith(NOT_AN_MRI)
    )


def test_figure_title_says_not_a_diagnosis_for_a_flagged_image(bundle) -> None:
    from braintumor.explain.run import _figure_title, _Verdict

    explainer = Explainer(bundle)
    probabilities = torch.tensor([0.7, 0.1, 0.1, 0.1])
    flagged = _figure_title(explainer, Path("a/photo.png"), probabilities, _Verdict(4.2, FLAG_REASON))
    assert f"not a diagnosis: flagged ({FLAG_REASON}" in flagged and "predicted" not in flagged
    assert "predicted glioma" in _figure_title(explainer, Path("a/b.png"), probabilities, _Verdict(0.1, None))


def test_explain_cli_lists_a_flagged_image_and_draws_it_on_request(trained_run, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(photo)
    listed = CliRunner().invoke(app, ["explain", str(trained_run.bundle_dir), str(photo), "--out", str(tmp_path / "a")])
    assert listed.exit_code == 0, listed.output
    assert "not a diagnosis" in " ".join(listed.output.split()) and not (tmp_path / "a" / "photo.png").exists()
    args = ["explain", str(trained_run.bundle_dir), str(photo), "--out", str(tmp_path / "b"), "--explain-flagged"]
    drawn = CliRunner().invoke(app, args)
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "b" / "photo.png").is_file() and "not a diagnosis" in " ".join(drawn.output.split())
