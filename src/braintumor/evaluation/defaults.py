"""Defaults of the evaluation stage, light to import so the CLI's help texts can quote them."""

# Share of validation images a calibrated bundle answers; the least confident rest is referred.
DEFAULT_TARGET_COVERAGE = 0.9
