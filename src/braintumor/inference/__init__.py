"""Inference stage: batch prediction, test-time augmentation, ensembles, ONNX export and runtime."""

from braintumor.inference.predictor import Prediction, Predictor, expand_inputs

__all__ = ["Prediction", "Predictor", "expand_inputs"]
