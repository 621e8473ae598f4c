"""Inference stage: batch prediction, test-time augmentation, ensembles, ONNX export and runtime.

Names are imported lazily, so the CLI can read :mod:`braintumor.inference.defaults` without loading torch.

Example:
    >>> from braintumor.inference import Predictor
    >>> Predictor.__name__
    'Predictor'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from braintumor.inference.predictor import Prediction, Predictor, expand_inputs

_EXPORTS = {name: "braintumor.inference.predictor" for name in ("Prediction", "Predictor", "expand_inputs")}

__all__ = ["Prediction", "Predictor", "expand_inputs"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'braintumor.inference' has no attribute {name!r}")
