"""Shared fixtures: small synthetic data sets and a tiny trained bundle, built once per session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from braintumor.config import Recipe
from braintumor.data.synthetic import make_synthetic_dataset

# Test models are tiny: one thread avoids OpenMP barrier stalls that make every small op slow when
# the two cores are busy (measured: 10 ms per elementwise op under load with two threads).
torch.set_num_threads(1)

TINY_RECIPE = {
    "name": "tiny-cnn",
    "data": {"image_size": 32, "batch_size": 16, "val_fraction": 0.25},
    "model": {"architecture": "custom_cnn", "conv_channels": [8, 16, 32], "head_hidden": 32, "dropout": 0.2},
    "augment": {"enabled": False},
    "train": {"max_epochs": 15, "learning_rate": 0.003, "early_stopping_patience": 6},
}


# A two-block vision transformer on 32 px images (8 px patches): the tests' ViT.
TINY_VIT = {
    "name": "tiny-vit",
    "data": {"image_size": 32},
    "model": {
        "architecture": "transfer",
        "backbone": "deit_tiny_patch16_224",
        "pretrained": False,
        "freeze_backbone": False,
        "head": "linear",
        "backbone_args": {"patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2},
    },
}


@pytest.fixture(autouse=True)
def _seeded_torch() -> None:
    """Every test starts from the same torch seed: what a test draws must not depend on which tests ran
    before it in the same xdist worker (the split of tests over workers differs between machines)."""
    torch.manual_seed(0)


def tiny_recipe(**sections: dict) -> Recipe:
    """The tiny test recipe with some sections updated (``tiny_recipe(train={"max_epochs": 2})``)."""
    raw = {key: dict(value) if isinstance(value, dict) else value for key, value in TINY_RECIPE.items()}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return Recipe.model_validate(raw)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training 16 per class, Testing 8 per class, 48 px JPEGs, Sartaj folder names."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class=16, test_per_class=8, size=48)


@pytest.fixture(scope="session")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny custom-CNN run trained once for the whole session (a few seconds)."""
    from braintumor.workflows.train import train_recipe

    return train_recipe(tiny_recipe(), synthetic_root, tmp_path_factory.mktemp("run") / "tiny", show_progress=False)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The shared Brain Tumor MRI data set; tests using it skip when BRAINTUMOR_DATA is unset."""
    value = os.environ.get("BRAINTUMOR_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("BRAINTUMOR_DATA is not set to the shared brain-tumor-mri folder")
    return Path(value)


BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as a script would run it (its folder on ``sys.path`` for shared helpers)."""
    if str(BENCHMARKS_DIR) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
