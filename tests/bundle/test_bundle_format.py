"""Bundles written by earlier versions keep loading: ``tests/fixtures/bundle-v1`` holds ``config.json`` files
written by braintumor at commit b48fcbc (before the typed bundle config), a single calibrated model and an
ensemble. The weights are rebuilt here from the recorded recipe (the safetensors layout did not change)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from braintumor.bundle import CONFIG_FILE, WEIGHTS_FILE, BundleConfig, load_bundle, read_bundle_config
from braintumor.bundle.store import _build_network
from braintumor.errors import BundleError
from braintumor.inference.predictor import Predictor

OLD_BUNDLES = Path(__file__).resolve().parents[1] / "fixtures" / "bundle-v1"


def _old_bundle(kind: str, tmp_path: Path) -> Path:
    folder = tmp_path / kind
    folder.mkdir()
    shutil.copy(OLD_BUNDLES / kind / CONFIG_FILE, folder / CONFIG_FILE)
    config = BundleConfig.model_validate_json((folder / CONFIG_FILE).read_text())
    save_file({k: v.contiguous() for k, v in _build_network(config).state_dict().items()}, str(folder / WEIGHTS_FILE))
    return folder


def test_a_calibrated_bundle_from_the_previous_format_loads_with_typed_fields(tmp_path: Path) -> None:
    bundle = load_bundle(_old_bundle("single", tmp_path))
    raw = json.loads((OLD_BUNDLES / "single" / CONFIG_FILE).read_text())
    config = bundle.config
    assert config.recipe.name == raw["recipe"]["name"] == bundle.name
    assert config.training.val_paths == raw["training"]["val_paths"] and len(config.training.val_paths) == 16
    assert config.training.val_metrics["accuracy"] == raw["training"]["val_metrics"]["accuracy"]
    assert config.extras.temperature == raw["extras"]["temperature"]
    assert config.extras.refer_threshold == raw["extras"]["refer_threshold"]
    assert config.manifest["git"]["commit"].startswith("b48fcbc")
    predictor = Predictor(bundle)
    assert predictor.temperature == raw["extras"]["temperature"]


def test_an_ensemble_bundle_from_the_previous_format_loads(tmp_path: Path) -> None:
    bundle = load_bundle(_old_bundle("ensemble", tmp_path))
    assert bundle.config.ensemble is not None
    assert [m.name for m in bundle.config.ensemble.members] == ["tiny-cnn", "tiny-b"]
    assert bundle.config.ensemble.member_weights() == [0.5, 0.5]
    assert bundle.config.training.ensemble_of == ["tiny-cnn", "tiny-b"]


def test_reading_then_writing_keeps_every_key_of_the_previous_format(tmp_path: Path) -> None:
    folder = _old_bundle("single", tmp_path)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    written = read_bundle_config(folder).to_json_dict()
    assert set(raw) <= set(written)
    assert set(raw["training"]) <= set(written["training"])
    # Every recipe value of the previous format survives; newer fields may be added with their defaults.
    assert _keeps(written["recipe"], raw["recipe"])


def _keeps(written: object, previous: object) -> bool:
    """Whether ``written`` holds every key of ``previous`` (recursively) with the same value."""
    if isinstance(previous, dict):
        return isinstance(written, dict) and all(k in written and _keeps(written[k], v) for k, v in previous.items())
    return written == previous


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extras": {"temperature": -1.0}}, "extras.temperature"),
        ({"extras": {"refer_threshold": "high"}}, "extras.refer_threshold"),
        ({"class_names": "glioma"}, "class_names"),
        ({"format_version": 99}, "newer braintumor"),
        ({"recipe": {"name": "x", "model": {"architecture": "vit"}}}, "recipe.model.architecture"),
    ],
)
def test_an_invalid_config_is_a_clear_bundle_error(tmp_path: Path, change: dict, message: str) -> None:
    folder = _old_bundle("single", tmp_path)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**raw, **change}))
    with pytest.raises(BundleError, match=message):
        load_bundle(folder)


def test_an_early_dict_threshold_is_read_as_a_number(tmp_path: Path) -> None:
    folder = _old_bundle("single", tmp_path)
    raw = json.loads((folder / CONFIG_FILE).read_text())
    raw["extras"]["refer_threshold"] = {"threshold": 0.7}
    (folder / CONFIG_FILE).write_text(json.dumps(raw))
    assert load_bundle(folder).config.extras.refer_threshold == 0.7
