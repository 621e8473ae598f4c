"""braintumor: train, evaluate, explain and serve brain-tumour MRI classifiers."""

from braintumor.layout_constants import CLASS_NAMES

__all__ = ["CLASS_NAMES", "__version__"]
__version__ = "0.1.0"
