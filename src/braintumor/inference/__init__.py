"""Inference stage: model bundles (safetensors + JSON) and batch prediction."""

from braintumor.inference.bundle import Bundle, load_bundle, save_bundle
from braintumor.inference.predictor import Prediction, Predictor, expand_inputs

__all__ = ["Bundle", "Prediction", "Predictor", "expand_inputs", "load_bundle", "save_bundle"]
