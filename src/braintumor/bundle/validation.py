"""The validation split a bundle was trained with, read again from disk (calibration, reports, the guard)."""

from __future__ import annotations

from pathlib import Path

from braintumor.bundle.store import Bundle
from braintumor.data.layout import Sample, normalise_class_name
from braintumor.errors import BrainTumorError


def validation_samples(bundle: Bundle, data_root: Path | str | None = None) -> list[Sample]:
    """The bundle's validation files with labels from their class folders.

    The paths were recorded under the training data root; when ``data_root`` is given, paths under the
    recorded root are looked up under ``data_root`` instead (the data moved or is mounted elsewhere).
    """
    training = bundle.config.training
    recorded = training.val_paths
    if not recorded:
        raise BrainTumorError(
            f"{bundle.path} records no validation files (training.val_paths): calibration needs the validation "
            "split the bundle was trained with; train it again with this version of braintumor"
        )
    recorded_root = Path(training.data_root) if training.data_root else None
    samples: list[Sample] = []
    for value in recorded:
        path = Path(str(value))
        if data_root is not None and recorded_root is not None and path.is_relative_to(recorded_root):
            path = Path(data_root) / path.relative_to(recorded_root)
        elif data_root is not None and not path.is_absolute() and "Training" in path.parts:
            # Bundles before 0.1 recorded paths as given on the command line, relative to where train ran.
            path = Path(data_root).joinpath(*path.parts[path.parts.index("Training") :])
        if not path.is_file():
            raise BrainTumorError(
                f"validation file {path} of bundle {bundle.path} does not exist; pass --data with the data root "
                f"the bundle was trained on (recorded: {recorded_root or 'unknown'})"
            )
        class_name = normalise_class_name(path.parent.name)
        if class_name not in bundle.class_names:
            raise BrainTumorError(
                f"validation file {path}: its folder {path.parent.name!r} is not a class of this bundle "
                f"({', '.join(bundle.class_names)})"
            )
        samples.append(Sample(path, bundle.class_names.index(class_name)))
    return samples
