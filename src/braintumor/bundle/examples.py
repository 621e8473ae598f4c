"""A tiny untrained bundle for examples and tests: the one preamble every docstring example shares.

Example:
    >>> from braintumor.bundle import load_bundle
    >>> bundle = load_bundle(tiny_bundle())
    >>> bundle.class_names
    ['glioma', 'meningioma', 'no_tumor', 'pituitary']
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from braintumor.bundle.store import save_bundle

TINY_RECIPE = {
    "name": "tiny",
    "data": {"image_size": 32},
    "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]},
}


def tiny_bundle(folder: Path | str | None = None, *, seed: int = 0) -> Path:
    """Write a randomly initialised two-block CNN bundle (32 px) to ``folder`` (default: a new temporary folder).

    Its predictions mean nothing; it has the layout and behaviour of a real bundle, in milliseconds.
    """
    import torch

    from braintumor.config import Recipe
    from braintumor.models import create_model, resolve_preprocessing

    recipe = Recipe.model_validate(TINY_RECIPE)
    torch.manual_seed(seed)
    model = create_model(recipe)
    target = Path(folder) if folder is not None else Path(tempfile.mkdtemp()) / "bundle"
    return save_bundle(target, model, recipe, resolve_preprocessing(recipe, model))
