from __future__ import annotations

from pathlib import Path

import pytest

from braintumor.config import RecipeError, apply_overrides, builtin_recipes, list_recipes, load_recipe
from tests.conftest import load_benchmark


@pytest.mark.parametrize("name", list(builtin_recipes()))
def test_shipped_recipes_validate(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name
    sizes = {"demo-cnn": (64,), "vit-tiny": (128,), "vit-tiny-distilled": (128,), "vit-tiny-deit": (128,)}
    assert recipe.data.image_size in sizes.get(name, (224, 260))


def test_every_benchmarked_recipe_is_shipped() -> None:
    module = load_benchmark("accuracy")
    shipped = set(builtin_recipes())
    assert set(module.DEFAULT_RECIPES) <= shipped
    for ensemble in module.DEFAULT_ENSEMBLES:
        assert set(ensemble.split("=")[1].split("+")) <= set(module.DEFAULT_RECIPES)


def test_seed_recipes_are_the_seed_models() -> None:
    cnn, resnet, lite0 = load_recipe("seed-cnn"), load_recipe("seed-resnet50"), load_recipe("lite0-frozen")
    assert cnn.model.architecture == "custom_cnn" and cnn.model.conv_channels == [32, 64, 128, 256, 512]
    assert resnet.model.backbone == "resnet50" and resnet.model.freeze_backbone
    assert lite0.model.backbone == "tf_efficientnet_lite0" and lite0.model.freeze_backbone
    for recipe in (cnn, resnet, lite0):
        assert (recipe.model.head_hidden, recipe.model.dropout) == (128, 0.5)


def test_the_distilled_seed_cnn_is_the_seed_network_with_a_teacher() -> None:
    plain, distilled = load_recipe("seed-cnn"), load_recipe("seed-cnn-distilled")
    assert distilled.model == plain.model and distilled.train.distill is not None
    assert distilled.train.distill.teacher == "runs/lite0-lpft-cached"
    # The teacher reads head-cropped slices: the student's views must be cropped the same way.
    assert distilled.data.crop_to_head and load_recipe("lite0-lpft-cached").data.crop_to_head


def test_overrides_change_any_field() -> None:
    recipe = load_recipe("seed-cnn", ["train.max_epochs=2", "model.conv_channels=[4, 8]", "augment.enabled=false"])
    assert recipe.train.max_epochs == 2 and recipe.model.conv_channels == [4, 8] and not recipe.augment.enabled


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_epoch=3", "unknown field 'train.max_epoch'"),
        ("training.max_epochs=3", "'training' is not a recipe section"),
        ("train.max_epochs=-1", "train.max_epochs"),
        ("no-equals-sign", "section.field=value"),
    ],
)
def test_bad_overrides_are_clear(override: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe("seed-cnn", [override])


def test_unknown_keys_and_bad_values_in_a_file_are_reported_with_their_location(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\ntrain:\n  learning_rat: 0.1\ndata:\n  val_fraction: 2.0\n")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert str(path) in text and "train.learning_rat" in text and "data.val_fraction" in text


def test_invalid_yaml_and_unknown_recipe(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"not found .*seed-cnn"):
        load_recipe("no-such-recipe")
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")


def test_list_recipes_names_every_builtin_recipe_with_its_description() -> None:
    rows = dict(list_recipes())
    assert list(rows) == list(builtin_recipes()) and len(rows) >= 10
    assert all(description and not description.startswith("invalid") for description in rows.values())


def test_a_user_recipe_file_is_read_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("model: {architecture: custom_cnn}\ntrain: {max_epochs: 3}\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(str(path))
    assert (recipe.name, recipe.train.max_epochs) == ("mine", 3)


def test_architecture_is_checked() -> None:
    recipe = load_recipe("seed-cnn")
    with pytest.raises(RecipeError, match=r"model\.architecture"):
        apply_overrides(recipe, ["model.architecture=vit"])
