"""MLflow "models from code" entry point: the file :func:`braintumor.training.tracking.log_bundle_model` logs.

MLflow runs this file when the model is loaded; it names the model class, so no pickled object is stored.

Example:
    >>> MODEL.__class__.__name__
    'BundlePyfunc'
"""

from __future__ import annotations

from braintumor.inference.mlflow_model import BundlePyfunc

MODEL = BundlePyfunc()

try:
    from mlflow.models import set_model
except ImportError:  # pragma: no cover - only MLflow loads this file
    pass
else:
    set_model(MODEL)
