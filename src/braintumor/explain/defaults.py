"""Defaults of the explanation stage, light to import so the CLI's help texts can quote them."""

# GradientShap samples per image: 32 kept the maps stable between runs at a few seconds per image.
DEFAULT_SHAP_SAMPLES = 32
# Images the sanity checks (randomisation tests, deletion curve) use: the first N of the inputs.
DEFAULT_SANITY_IMAGES = 16
# Labelled images (from the bundle's validation split) whose shuffled labels the label randomisation test fits.
DEFAULT_LABELLED_IMAGES = 128
