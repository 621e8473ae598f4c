"""Inference stage: batch prediction, test-time augmentation, ensembles, ONNX export and runtime.

Names are imported lazily, so the CLI can read :mod:`braintumor.inference.defaults` without loading torch.

Example:
    >>> from braintumor.inference import Predictor
    >>> Predictor.__name__
    'Predictor'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from braintumor.lazy import lazy_exports

if TYPE_CHECKING:
    from braintumor.inference.predictor import Prediction, Predictor, expand_inputs

_EXPORTS = {name: "braintumor.inference.predictor" for name in ("Prediction", "Predictor", "expand_inputs")}

__all__ = ["Prediction", "Predictor", "expand_inputs"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
