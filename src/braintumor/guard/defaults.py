"""Defaults of the input guard, light to import so the CLI's help texts can quote them."""

DEFAULT_DETECTOR = "mahalanobis"
# Each component's threshold: this quantile of the validation images' scores (about 1% flagged per component).
DEFAULT_QUANTILE = 0.99
# The registered detectors (braintumor.guard.detectors); a test checks the two lists agree.
DETECTOR_NAMES = ("energy", "knn", "mahalanobis", "max_logit")

# A flagged image's reason when no more specific one is known (the guard's own reasons, guard/reasons.py, say more).
FLAG_REASON = "unlike the training images"

# The bone-ring rule (guard/evidence.py, bone_ring_score): an image looks like a head CT in a brain window when at
# least 9% of its head is white, white stands apart from near white (a gap ratio of at least 0.5), at least 45% of
# the white lies on the head's rim, and at most a quarter of that rim has a dark band just inside. Set on the
# Training split of the Sartaj data (its train part holds 25 head CTs, which the rule finds, and no MR slice that it
# flags) and on brain MR slices windowed to saturate, made from Training; never on Testing.
BONE_RING_RULE = (0.09, 0.5, 0.45, 0.25)
