"""A bundle as an MLflow ``pyfunc`` model: ``mlflow.pyfunc.load_model(uri).predict(frame)`` classifies images.

The model's input is a DataFrame with one column ``image``: each row the bytes of one JPEG, PNG or DICOM slice
(``mlflow models serve`` takes them base64-encoded in its JSON, as MLflow does for binary columns). The output has
one row per image: ``class``, ``confidence``, ``p_<class>`` for every class, ``ood_score`` (NaN without an input
guard; an image is flagged above 1), ``flagged`` and ``flag_reason``. A flagged image gets no diagnosis: its
``class`` is null and ``flag_reason`` says why; its probabilities stay, but they are not a diagnosis. The bundle
travels as the model's artifact and is loaded with the usual safetensors loader; the Python code is logged as code
(MLflow's "models from code", :mod:`braintumor.inference.mlflow_entry`), so nothing is pickled. Serving needs
braintumor installed (``mlflow models serve -m URI --env-manager local``).

Example:
    >>> signature(["glioma", "no_tumor"]).inputs.input_names()
    ['image']
    >>> signature(["glioma", "no_tumor"]).outputs.input_names()
    ['class', 'confidence', 'p_glioma', 'p_no_tumor', 'ood_score', 'flagged', 'flag_reason']
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.data.images import decode_image_bytes
from braintumor.errors import BrainTumorError, ImageDecodeError

BUNDLE_ARTIFACT = "bundle"
IMAGE_COLUMN = "image"
ENTRY_FILE = Path(__file__).with_name("mlflow_entry.py")

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # without mlflow the class below still defines (and cannot be logged)
    PythonModel = object  # type: ignore[assignment,misc]


def signature(class_names: list[str]) -> Any:
    """The model signature: image bytes in; class (null when flagged), confidence, per-class probabilities,
    ``ood_score``, ``flagged`` and ``flag_reason`` out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "class"), ColSpec("double", "confidence")]
    outputs += [ColSpec("double", f"p_{name}") for name in class_names]
    outputs += [ColSpec("double", "ood_score"), ColSpec("boolean", "flagged"), ColSpec("string", "flag_reason")]
    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]), outputs=Schema(outputs))


def _as_bytes(value: Any) -> bytes:
    """Bytes from what a DataFrame cell may hold: bytes, or base64 text (a JSON client)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    raise BrainTumorError(f"column {IMAGE_COLUMN!r} must hold image bytes, got {type(value).__name__}")


class BundlePyfunc(PythonModel):  # type: ignore[misc,valid-type]
    """MLflow's wrapper around a bundle's predictor (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from braintumor.bundle import load_bundle
        from braintumor.inference.onnx_export import make_predictor

        self.predictor = make_predictor(load_bundle(context.artifacts[BUNDLE_ARTIFACT]), "auto")

    # No annotation on model_input: MLflow reads it as a schema hint and warns about ``Any``; the signature
    # logged with the model (a DataFrame with an ``image`` column) is the contract.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> Any:  # type: ignore[no-untyped-def]
        """One row per image of ``model_input[IMAGE_COLUMN]``: class (None when flagged), confidence, probabilities,
        ``ood_score``, ``flagged`` and ``flag_reason``."""
        if IMAGE_COLUMN not in getattr(model_input, "columns", []):
            raise BrainTumorError(f"the input needs a column {IMAGE_COLUMN!r} of image bytes")
        images = []
        for row, value in enumerate(model_input[IMAGE_COLUMN]):
            try:
                images.append(decode_image_bytes(_as_bytes(value), f"row {row}"))
            except (ImageDecodeError, ValueError) as error:
                raise BrainTumorError(f"row {row}: {getattr(error, 'reason', error)}") from None
        probabilities, verdicts = self.predictor.predict_images_checked(images)
        if verdicts is None:
            return prediction_frame(probabilities, None, self.predictor.class_names)
        reasons = [verdicts.flag_reason(index) for index in range(len(images))]
        return prediction_frame(probabilities, verdicts.ood_score, self.predictor.class_names, reasons)


def prediction_frame(
    probabilities: np.ndarray, scores: np.ndarray | None, names: list[str], reasons: list[str | None] | None = None
) -> Any:
    """The pyfunc's output for probabilities ``[N, C]`` and ``ood_score`` ``[N]`` (None without a guard); ``reasons``
    are the guard's words per flagged image (default :data:`FLAG_REASON`).

    Example:
        >>> frame = prediction_frame(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0.3, 5.0]), ["a", "b"])
        >>> frame["class"].tolist(), frame["flagged"].tolist()
        (['a', None], [False, True])
    """
    import pandas as pd

    from braintumor.inference.volume_outputs import FLAG_REASON

    flagged = np.zeros(len(probabilities), dtype=bool) if scores is None else ~(np.asarray(scores) <= 1.0)
    frame = pd.DataFrame({f"p_{name}": probabilities[:, i].astype(np.float64) for i, name in enumerate(names)})
    frame.insert(0, "confidence", probabilities.max(axis=1).astype(np.float64))
    top = probabilities.argmax(axis=1)
    # Object columns, so that "no class" stays None (null in JSON) rather than becoming NaN.
    classes = [None if flag else names[i] for i, flag in zip(top, flagged, strict=True)]
    frame.insert(0, "class", pd.Series(classes, dtype=object))
    frame["ood_score"] = np.nan if scores is None else np.asarray(scores, dtype=np.float64)
    frame["flagged"] = flagged
    words = reasons or [None] * len(flagged)
    frame["flag_reason"] = pd.Series(
        [(reason or FLAG_REASON) if flag else None for flag, reason in zip(flagged, words, strict=True)], dtype=object
    )
    return frame
