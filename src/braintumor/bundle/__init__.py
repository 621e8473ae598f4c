"""Model bundles: ``model.safetensors`` plus a typed ``config.json`` (:class:`BundleConfig`); never a pickle."""

from braintumor.bundle.schema import (
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    CONFIG_FILE,
    ONNX_FILE,
    WEIGHTS_FILE,
    AdaptationRecord,
    BundleConfig,
    BundleExtras,
    EnsembleMember,
    EnsembleSpec,
    TrainingRecord,
)
from braintumor.bundle.store import (
    Bundle,
    library_versions,
    load_bundle,
    read_bundle_config,
    save_bundle,
    write_bundle_config,
    write_bundle_guard,
)

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "CONFIG_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "AdaptationRecord",
    "Bundle",
    "BundleConfig",
    "BundleExtras",
    "EnsembleMember",
    "EnsembleSpec",
    "TrainingRecord",
    "library_versions",
    "load_bundle",
    "read_bundle_config",
    "save_bundle",
    "write_bundle_config",
    "write_bundle_guard",
]
