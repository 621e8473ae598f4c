"""braintumor: train, evaluate, audit, explain and serve brain-tumour MRI classifiers.

The public API (loaded on first use, so ``import braintumor`` stays fast)::

    import braintumor

    root = braintumor.demo_data("demo")
    run = braintumor.train("demo-cnn", data=root, out="runs/demo")
    predictions = run.bundle.predict(root / "Testing" / "glioma_tumor")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from braintumor.classes import CLASS_NAMES
from braintumor.errors import BrainTumorError
from braintumor.lazy import lazy_exports

if TYPE_CHECKING:
    from braintumor.api import Bundle, adapt, audit, demo_data, ensemble, export, load, recipes, resume, runs, train

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES",
    "BrainTumorError",
    "Bundle",
    "__version__",
    "adapt",
    "audit",
    "demo_data",
    "ensemble",
    "export",
    "load",
    "recipes",
    "resume",
    "runs",
    "train",
]
__getattr__ = lazy_exports(__name__, {name: "braintumor.api" for name in __all__[2:] if name != "__version__"})
