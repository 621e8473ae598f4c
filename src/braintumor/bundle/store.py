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

import platform
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from braintumor.bundle.schema import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    CONFIG_FILE,
    WEIGHTS_FILE,
    BundleConfig,
    BundleExtras,
    EnsembleSpec,
    TrainingRecord,
)
from braintumor.classes import CLASS_NAMES
from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing
from braintumor.errors import BundleError
from braintumor.guard import GUARD_FILE, InputGuard
from braintumor.io import read_json_object, write_json_atomic
from braintumor.models import create_model
from braintumor.models.ensemble import EnsembleNet
from braintumor.models.network import BrainTumorNet
from braintumor.runtime import one_thread

if TYPE_CHECKING:
    import torch

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


@dataclass(frozen=True)
class _Deferred:
    """A network that :func:`load_bundle` checked against the weights but has not built yet."""

    weights: Path
    config: BundleConfig
    state: dict[str, torch.Tensor]

    def build(self) -> BrainTumorNet | EnsembleNet:
        return _with_weights(_build_network(self.config), self.state, self.weights)


class _Network:
    """:attr:`Bundle.model`: a network, or a :class:`_Deferred` one that is built on first read.

    A required dataclass field (``__get__`` on the class raises AttributeError, so there is no default).
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, bundle: Bundle | None, owner: type | None = None) -> BrainTumorNet | EnsembleNet:
        if bundle is None:
            raise AttributeError(self.slot)
        value = bundle.__dict__[self.slot]
        if isinstance(value, _Deferred):
            value = bundle.__dict__[self.slot] = value.build()
        return value

    def __set__(self, bundle: Bundle, value: BrainTumorNet | EnsembleNet | _Deferred) -> None:
        bundle.__dict__[self.slot] = value


@dataclass
class Bundle:
    """A loaded model bundle, ready for inference (the model is in eval mode).

    ``model`` is built from the recipe and loaded with the weights on first read: a bundle served through its
    ONNX graph never builds it, so predicting never imports timm, torchvision or torch's compiler.
    """

    path: Path
    model: BrainTumorNet | EnsembleNet = _Network()  # type: ignore[assignment]
    config: BundleConfig
    guard: InputGuard | None = None

    @property
    def name(self) -> str:
        return self.config.recipe.name

    @property
    def recipe(self) -> Recipe:
        return self.config.recipe

    @property
    def preprocessing(self) -> Preprocessing:
        return self.config.preprocessing

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names


def save_bundle(
    folder: Path | str,
    model: BrainTumorNet | EnsembleNet,
    recipe: Recipe,
    preprocessing: Preprocessing,
    *,
    training: TrainingRecord | dict[str, Any] | None = None,
    extras: BundleExtras | dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
    ensemble: EnsembleSpec | dict[str, Any] | None = None,
    guard: InputGuard | None = None,
) -> Path:
    """Write a bundle atomically and return its folder. An existing bundle there is replaced whole.

    For an :class:`EnsembleNet`, ``ensemble`` lists its members (``{"members": [{"name": ..., "recipe": ...}],
    "weights": [...]}``) so that :func:`load_bundle` can rebuild them; ``recipe`` is then the first member's.
    """
    if isinstance(model, EnsembleNet) != (ensemble is not None):
        raise ValueError("pass ensemble= exactly when saving an EnsembleNet")
    config = BundleConfig.model_validate(
        {
            "name": recipe.name,
            "class_names": list(CLASS_NAMES),
            "preprocessing": preprocessing,
            "recipe": recipe,
            "training": training or {},
            "extras": extras or {},
            "manifest": manifest or {},
            "ensemble": ensemble,
            "versions": library_versions(),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    config.extras.guard = guard.spec if guard is not None else None
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in model.state_dict().items()}
    return _write_bundle_folder(Path(folder), state, config, guard)


def _write_bundle_folder(folder: Path, state: dict[str, Any], config: BundleConfig, guard: InputGuard | None) -> Path:
    # Written into a temporary sibling and renamed into place: a crash never leaves a half bundle that loads.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
        if guard is not None:
            _save_guard_state(staging / GUARD_FILE, guard)
        write_json_atomic(staging / CONFIG_FILE, config.to_json_dict())
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


def _save_guard_state(path: Path, guard: InputGuard) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in guard.state.items()}, str(temporary), metadata={"format": BUNDLE_FORMAT})
    temporary.replace(path)


def write_bundle_guard(folder: Path | str, guard: InputGuard) -> None:
    """Store a newly fitted input guard in an existing bundle (``braintumor guard``, ``braintumor calibrate``)."""
    folder = Path(folder)
    config = read_bundle_config(folder)
    _save_guard_state(folder / GUARD_FILE, guard)
    config.extras.guard = guard.spec
    write_bundle_config(folder, config)


def _load_guard(folder: Path, config: BundleConfig) -> InputGuard | None:
    if config.extras.guard is None:
        return None
    try:
        state = load_file(str(folder / GUARD_FILE))
    except (SafetensorError, OSError) as error:
        raise BundleError(
            f"{folder / GUARD_FILE} is missing or unreadable ({error}): refit it with `braintumor guard {folder}`"
        ) from None
    return InputGuard(config.extras.guard, state)


def write_bundle_config(folder: Path | str, config: BundleConfig) -> None:
    """Replace a bundle's ``config.json`` atomically (calibration and later fitted state); weights are untouched."""
    write_json_atomic(Path(folder) / CONFIG_FILE, config.to_json_dict())


def _format_errors(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in error.errors()[:5])


def read_bundle_config(folder: Path | str) -> BundleConfig:
    """Read and check a bundle's ``config.json`` without building the model."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder} does not exist or is not a folder")
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise BundleError(f"{folder} is not a model bundle: it needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    raw = read_json_object(config_path, BUNDLE_FORMAT)
    if isinstance(raw, str):
        raise BundleError(f"{config_path} is not a {BUNDLE_FORMAT} config: {raw}")
    version = raw.get("format_version", 0)
    if isinstance(version, int) and version > BUNDLE_VERSION:
        raise BundleError(f"{folder} was written by a newer braintumor (bundle format {version}); upgrade")
    try:
        return BundleConfig.model_validate(raw)
    except ValidationError as error:
        raise BundleError(f"{config_path} is incomplete or invalid: {_format_errors(error)}") from None


def _build_network(config: BundleConfig) -> BrainTumorNet | EnsembleNet:
    num_classes = len(config.class_names)
    if config.ensemble is None:
        return create_model(config.recipe, load_pretrained=False, num_classes=num_classes)
    members = [create_model(m.recipe, load_pretrained=False, num_classes=num_classes) for m in config.ensemble.members]
    return EnsembleNet(members, config.ensemble.member_weights())


def _with_weights(
    network: BrainTumorNet | EnsembleNet, state: dict[str, torch.Tensor], weights: Path, *, assign: bool = False
) -> BrainTumorNet | EnsembleNet:
    """``network`` with the bundle's weights (strict: every tensor, each of the right shape), in eval mode.

    ``assign``: the network's tensors become clones of the loaded ones (for a network built on the meta device).
    Copied on one thread: two threads writing fresh memory were several times slower (:func:`one_thread`).
    """
    try:
        with one_thread():
            values = {key: tensor.clone() for key, tensor in state.items()} if assign else state
            network.load_state_dict(values, strict=True, assign=assign)
    except RuntimeError as error:
        raise BundleError(f"{weights} does not match the bundle's recipe: {error}") from None
    return network.eval()


def load_bundle(folder: Path | str) -> Bundle:
    """Read the config, the safetensors weights and the guard; ``Bundle.model`` is built on first read.

    A weights file that does not fit the recipe's network (strict: every tensor, each of the right shape) is a
    :class:`~braintumor.errors.BundleError` when the network is built.
    """
    folder = Path(folder)
    config = read_bundle_config(folder)
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise BundleError(f"{weights} does not match the bundle's recipe: {error}") from None
    return Bundle(folder, _Deferred(weights, config, state), config, _load_guard(folder, config))
