"""Defaults of the input guard, light to import so the CLI's help texts can quote them."""

DEFAULT_DETECTOR = "mahalanobis"
# Each component's threshold: this quantile of the validation images' scores (about 1% flagged per component).
DEFAULT_QUANTILE = 0.99
# The registered detectors (braintumor.guard.detectors); a test checks the two lists agree.
DETECTOR_NAMES = ("energy", "knn", "mahalanobis", "max_logit")
