"""Explain stage: Grad-CAM, Grad-CAM++, SHAP and (vision transformers) attention-rollout maps for a bundle's
predictions, and their sanity checks.

Names are imported lazily, so ``braintumor --help`` does not load torch and captum.

Example:
    >>> from braintumor.explain import METHODS
    >>> METHODS
    ('gradcam', 'gradcam++', 'shap', 'rollout')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from braintumor.lazy import lazy_exports

if TYPE_CHECKING:
    from braintumor.explain.explainer import METHODS, Explainer, explainer_for, gradcam_overlay
    from braintumor.explain.gradcam import ExplainError, find_target_layer, resolve_layer
    from braintumor.explain.run import explain_paths, sanity_checks
    from braintumor.explain.transformer import NotATransformerError, attention_rollout

_EXPORTS = {
    "METHODS": "braintumor.explain.explainer",
    "Explainer": "braintumor.explain.explainer",
    "explainer_for": "braintumor.explain.explainer",
    "gradcam_overlay": "braintumor.explain.explainer",
    "ExplainError": "braintumor.explain.gradcam",
    "find_target_layer": "braintumor.explain.gradcam",
    "resolve_layer": "braintumor.explain.gradcam",
    "explain_paths": "braintumor.explain.run",
    "sanity_checks": "braintumor.explain.run",
    "NotATransformerError": "braintumor.explain.transformer",
    "attention_rollout": "braintumor.explain.transformer",
}

__all__ = [
    "METHODS",
    "ExplainError",
    "Explainer",
    "NotATransformerError",
    "attention_rollout",
    "explain_paths",
    "explainer_for",
    "find_target_layer",
    "gradcam_overlay",
    "resolve_layer",
    "sanity_checks",
]

__getattr__ = lazy_exports(__name__, _EXPORTS)
