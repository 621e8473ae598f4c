"""Defaults of the input guard, light to import so the CLI's help texts can quote them."""

DEFAULT_DETECTOR = "mahalanobis"
# Each component's threshold: this quantile of the validation images' scores (about 1% flagged per component).
DEFAULT_QUANTILE = 0.99
# The registered detectors (braintumor.guard.detectors); a test checks the two lists agree.
DETECTOR_NAMES = ("energy", "knn", "mahalanobis", "max_logit")

# A flagged image's reason when no more specific one is known (the guard's own reasons, guard/reasons.py, say more).
FLAG_REASON = "unlike the training images"
