"""Fine-tuning stages on cached activations of the frozen lower layers (``cache_frozen_layers``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from braintumor.bundle import load_bundle
from braintumor.config import FineTuneStage, Recipe, RecipeError, apply_overrides
from braintumor.data.dataset import ImageSet
from braintumor.models import create_model
from braintumor.training import stages
from braintumor.training.features import build_view_features, encode_stored_views
from braintumor.training.finetune import prepare_stage, split_backbone, stage_split
from braintumor.training.fitting import RunOptions
from braintumor.workflows.train import train_recipe
from tests.conftest import tiny_recipe

TINY_LITE = {"architecture": "transfer", "backbone": "tf_efficientnet_lite0", "pretrained": False}


@pytest.mark.parametrize("unfreeze", [1, 2, 3, 7])
def test_split_at_the_unfrozen_groups_reproduces_the_backbone(unfreeze: int) -> None:
    model = create_model(tiny_recipe(model={**TINY_LITE, "head": "linear", "freeze_backbone": True}))
    prepare_stage(model, FineTuneStage(epochs=1, unfreeze=unfreeze), weight_decay=0.0)
    model.eval()
    bottom, top = split_backbone(model.backbone)
    # The bottom holds no trainable parameter and the top all of them.
    assert not any(p.requires_grad for p in bottom.parameters())
    assert {id(p) for p in top.parameters()} == {id(p) for p in model.backbone.parameters() if p.requires_grad}
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(top(bottom(x)), model.backbone(x))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_features_through_the_stage_bottom_are_bitwise_the_backbone_features(precision: str) -> None:
    """The probe's features computed as top(bottom(views)) (so that the first cached stage can reuse the bottom's
    activations) are exactly those of the whole backbone over the same seeded views."""
    model = create_model(tiny_recipe(model={**TINY_LITE, "head": "linear", "freeze_backbone": True}))
    stage = FineTuneStage(epochs=1, unfreeze=3, cache_frozen_layers=True)
    bottom, top = stage_split(model.backbone, stage)
    # Computed before the stage unfreezes anything: the split the stage itself will find after prepare_stage.
    assert not any(p.requires_grad for p in model.backbone.parameters())
    pixels = torch.randint(0, 256, (20, 3, 48, 48), dtype=torch.uint8)
    images = ImageSet(pixels, torch.zeros(20, dtype=torch.long), [Path(f"{i}.png") for i in range(20)], ["x"] * 20)
    clean = lambda batch: batch.float() / 255.0  # noqa: E731
    mirrored = lambda image: image.flip(-1).float() / 255.0  # noqa: E731
    run = {"views": 2, "seed": 3, "show_progress": False, "precision": precision}
    whole = build_view_features(model.backbone, images, clean, mirrored, **run)
    activations = build_view_features(bottom, images, clean, mirrored, **run)
    staged = encode_stored_views(top, activations, show_progress=False, precision=precision)
    assert torch.equal(staged, whole)
    prepare_stage(model, stage, weight_decay=0.0)
    after_bottom, _ = split_backbone(model.backbone)
    assert [id(m) for m in after_bottom] == [id(m) for m in bottom]


def test_split_handles_resnets_and_refuses_what_it_cannot_cache() -> None:
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0).eval().requires_grad_(False)
    resnet.layer4.requires_grad_(True)
    bottom, top = split_backbone(resnet)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(top(bottom(x)), resnet(x))
    # A trainable layer below a frozen one has no single cut point.
    resnet.layer2.requires_grad_(True)
    assert split_backbone(resnet) is None
    # Trainable stem: nothing to cache. Unknown layout: no split.
    resnet.requires_grad_(True)
    assert split_backbone(resnet) is None
    assert split_backbone(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))) is None


def test_cached_stages_need_a_frozen_lower_part() -> None:
    recipe = tiny_recipe(model={**TINY_LITE, "freeze_backbone": True})
    with pytest.raises(RecipeError, match="cache_frozen_layers"):
        apply_overrides(recipe, ["train.finetune_stages=[{epochs: 1, unfreeze: all, cache_frozen_layers: true}]"])
    with pytest.raises(RecipeError, match="cache_frozen_layers"):
        apply_overrides(
            recipe,
            [
                "train.finetune_stages=[{epochs: 1, unfreeze: 2, cache_frozen_layers: true}]",
                "train.finetune_batchnorm=train",
            ],
        )


@pytest.mark.slow
def test_cached_stage_trains_the_same_network_as_the_image_path(synthetic_root: Path, tmp_path: Path) -> None:
    """Without augmentation the cached activations are exact: both paths must give the same weights."""

    def recipe_for(cached: bool) -> Recipe:
        return tiny_recipe(
            model={**TINY_LITE, "head": "linear", "freeze_backbone": True},
            augment={"enabled": False},
            train={
                "max_epochs": 2,
                "finetune_stages": [{"epochs": 2, "unfreeze": 2, "learning_rate": 1e-3, "cache_frozen_layers": cached}],
            },
        )

    results = {}
    for cached in (True, False):
        result = train_recipe(recipe_for(cached), synthetic_root, tmp_path / str(cached), show_progress=False)
        results[cached] = (load_bundle(result.bundle_dir).model.state_dict(), result.history, result.bundle_dir)
    for key, value in results[True][0].items():
        torch.testing.assert_close(value, results[False][0][key], atol=1e-4, rtol=1e-3, msg=key)
    # Over the memory budget the activations are memory-mapped files: the same network, the files gone after.
    on_disk = train_recipe(recipe_for(True), synthetic_root, tmp_path / "disk", show_progress=False,
                           options=RunOptions(show_progress=False, cache_memory_mb=0))  # fmt: skip
    for key, value in load_bundle(on_disk.bundle_dir).model.state_dict().items():
        assert torch.equal(value, results[True][0][key]), key
    assert not list((on_disk.run_dir / "feature_cache").glob("stage-*"))
    stage_losses = {c: [r["val_loss"] for r in results[c][1] if r["stage"] == "finetune-1"] for c in results}
    assert len(stage_losses[True]) == 2
    assert stage_losses[True] == pytest.approx(stage_losses[False], rel=1e-4)
    config = json.loads((results[True][2] / "config.json").read_text())
    assert config["recipe"]["train"]["finetune_stages"][0]["cache_frozen_layers"] is True


@pytest.mark.slow
def test_cached_stage_uses_augmented_views(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(
        model={**TINY_LITE, "head": "linear", "head_standardize": False, "freeze_backbone": True},
        augment={"enabled": True, "horizontal_flip": True},
        train={
            "max_epochs": 1,
            "cache_views": 2,
            "finetune_stages": [{"epochs": 2, "unfreeze": 3, "cache_frozen_layers": True}],
            "wise_alphas": [0.0, 1.0],
        },
    )
    result = train_recipe(recipe, synthetic_root, tmp_path / "views", show_progress=False)
    config = json.loads((result.bundle_dir / "config.json").read_text())
    assert [row["stage"] for row in result.history].count("finetune-1") == 2
    assert config["training"]["finetuning"]["wise_ft"]["alpha"] in (0.0, 1.0)
    # A head without the BatchNorm standardiser round-trips through the bundle.
    model = load_bundle(result.bundle_dir).model
    assert isinstance(model.head[0], torch.nn.Identity)
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, 4)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_wise_ft_on_cached_validation_activations_gives_the_image_paths_losses(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """WiSE-FT's validation passes run only the top on the last stage's cached bottom activations: the same losses
    per alpha (so the same choice) as passes over the validation images."""
    recipe = tiny_recipe(
        model={**TINY_LITE, "head": "linear", "head_standardize": False, "freeze_backbone": True},
        augment={"enabled": False},
        train={
            "max_epochs": 1,
            "precision": precision,
            "finetune_stages": [{"epochs": 1, "unfreeze": 2, "cache_frozen_layers": True}],
            "wise_alphas": [0.0, 0.5, 1.0],
        },
    )

    def wise_losses(name: str) -> dict[str, float]:
        result = train_recipe(recipe, synthetic_root, tmp_path / name, show_progress=False)
        return json.loads((result.bundle_dir / "config.json").read_text())["training"]["finetuning"]["wise_ft"]

    with monkeypatch.context() as patch:

        def no_image_pass(*_: object) -> None:
            raise AssertionError("WiSE-FT ran the whole network over the validation images")

        patch.setattr(stages, "validation_metrics", no_image_pass)
        cached = wise_losses("cached")
    monkeypatch.setattr(stages, "_bottom_unchanged", lambda *_: False)
    images = wise_losses("images")
    assert cached == images
