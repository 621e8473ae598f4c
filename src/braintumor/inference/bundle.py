"""Model bundles: a folder with ``model.safetensors`` and ``config.json``; loading never unpickles.

``config.json`` holds the recipe, the class names, the preprocessing, the training record and the
library versions. A bundle is written into a temporary sibling folder and renamed into place, so a
crash never leaves a half-written bundle that loads.

Example:
    >>> import tempfile
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model, resolve_preprocessing
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe)
    >>> folder = save_bundle(tempfile.mkdtemp() + "/b", model, recipe, resolve_preprocessing(recipe, model))
    >>> load_bundle(folder).class_names
    ['glioma', 'meningioma', 'no_tumor', 'pituitary']
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing
from braintumor.errors import BundleError
from braintumor.layout_constants import CLASS_NAMES
from braintumor.models import create_model
from braintumor.models.ensemble import EnsembleNet
from braintumor.models.network import BrainTumorNet

BUNDLE_FORMAT = "braintumor-bundle"
BUNDLE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_VERSIONED_LIBRARIES = ("braintumor", "torch", "torchvision", "timm", "lightning", "numpy", "pillow")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that decide a model's numbers, plus Python and the platform."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _VERSIONED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Bundle:
    """A loaded model bundle, ready for inference (the model is in eval mode)."""

    path: Path
    model: BrainTumorNet | EnsembleNet
    recipe: Recipe
    preprocessing: Preprocessing
    class_names: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.recipe.name


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
        temporary = Path(f.name)
    temporary.replace(path)


def save_bundle(
    folder: Path | str,
    model: BrainTumorNet | EnsembleNet,
    recipe: Recipe,
    preprocessing: Preprocessing,
    *,
    training: dict[str, Any] | None = None,
    extras: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
    ensemble: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically and return its folder. An existing bundle there is replaced whole.

    For an :class:`EnsembleNet`, ``ensemble`` lists its members (``{"members": [{"recipe": ...}, ...],
    "weights": [...]}``) so that :func:`load_bundle` can rebuild them; ``recipe`` is then the first member's.
    """
    if isinstance(model, EnsembleNet) != (ensemble is not None):
        raise ValueError("pass ensemble= exactly when saving an EnsembleNet")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "name": recipe.name,
        "class_names": list(CLASS_NAMES),
        "preprocessing": preprocessing.model_dump(mode="json"),
        "recipe": recipe.model_dump(mode="json"),
        "training": training or {},
        "extras": extras or {},
        "manifest": manifest or {},
        **({"ensemble": ensemble} if ensemble is not None else {}),
        "versions": library_versions(),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
        write_json_atomic(staging / CONFIG_FILE, config)
        if folder.exists():
            previous = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
            staging.rename(folder)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def read_bundle_config(folder: Path | str) -> dict[str, Any]:
    """Read and check a bundle's ``config.json`` without building the model."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder} does not exist or is not a folder")
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise BundleError(f"{folder} is not a model bundle: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{config_path} is not a {BUNDLE_FORMAT} config")
    if config.get("format_version", 0) > BUNDLE_VERSION:
        raise BundleError(
            f"{folder} was written by a newer braintumor (bundle format {config['format_version']}); upgrade"
        )
    return config


def _build_network(
    config: dict[str, Any], recipe: Recipe, num_classes: int, folder: Path
) -> BrainTumorNet | EnsembleNet:
    ensemble = config.get("ensemble")
    if ensemble is None:
        return create_model(recipe, load_pretrained=False, num_classes=num_classes)
    try:
        recipes = [Recipe.model_validate(member["recipe"]) for member in ensemble["members"]]
        weights = [float(w) for w in ensemble.get("weights") or [1.0] * len(recipes)]
        members = [create_model(member, load_pretrained=False, num_classes=num_classes) for member in recipes]
        return EnsembleNet(members, weights)
    except (KeyError, TypeError, ValueError, ValidationError) as error:
        raise BundleError(f"{folder / CONFIG_FILE} has an invalid ensemble section: {error}") from None


def load_bundle(folder: Path | str) -> Bundle:
    """Rebuild the network from the recipe and load its safetensors weights (strict)."""
    folder = Path(folder)
    config = read_bundle_config(folder)
    try:
        recipe = Recipe.model_validate(config["recipe"])
        preprocessing = Preprocessing.model_validate(config["preprocessing"])
        class_names = [str(name) for name in config["class_names"]]
    except (KeyError, ValidationError) as error:
        raise BundleError(f"{folder / CONFIG_FILE} is incomplete or invalid: {error}") from None
    model = _build_network(config, recipe, len(class_names), folder)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise BundleError(f"{folder / WEIGHTS_FILE} does not match the bundle's recipe: {error}") from None
    model.eval()
    return Bundle(folder, model, recipe, preprocessing, class_names, config)
