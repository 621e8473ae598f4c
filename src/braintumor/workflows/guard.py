"""Fit (or refit) the input guard of a trained bundle: ``braintumor guard`` and ``braintumor calibrate``.

The guard is fitted on the bundle's own training split and thresholded on its own validation split, both
rebuilt from ``Training/`` exactly as training built them (same duplicate removal, same seeded split);
``Testing/`` is never read.
"""

from __future__ import annotations

from pathlib import Path

from braintumor.bundle import Bundle, load_bundle, write_bundle_guard
from braintumor.data.dataset import ImageSet, drop_exact_duplicates, scan_images, validation_split
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import eval_transform
from braintumor.errors import BrainTumorError
from braintumor.guard import DEFAULT_DETECTOR, DEFAULT_QUANTILE, InputGuard, fit_guard, model_outputs
from braintumor.guard.detectors import create_detector


def _relative_names(paths: list[str] | list[Path], root: Path | None) -> list[str]:
    names = []
    for path in map(Path, paths):
        names.append(str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name)
    return sorted(names)


def training_split(bundle: Bundle, data_root: Path, *, show_progress: bool = True) -> tuple[ImageSet, ImageSet]:
    """The bundle's training and validation images, rebuilt from ``<data_root>/Training``.

    Raises:
        BrainTumorError: when the rebuilt validation split is not the one the bundle recorded (other data).
    """
    recipe, record = bundle.recipe, bundle.config.training
    samples = discover_split(data_root, "Training")
    image_set = scan_images(samples, bundle.preprocessing, description="Checking Training", show_progress=show_progress)
    if recipe.data.drop_train_duplicates:
        image_set, _ = drop_exact_duplicates(image_set)
    train_idx, val_idx = validation_split(recipe, image_set)
    train_set, val_set = image_set.subset(train_idx), image_set.subset(val_idx)
    if record.val_paths:
        recorded_root = Path(record.data_root) if record.data_root else None
        rebuilt = _relative_names([str(Path(p).resolve()) for p in val_set.paths], data_root.resolve())
        if rebuilt != _relative_names(record.val_paths, recorded_root):
            raise BrainTumorError(
                f"{data_root} does not give the validation split {bundle.path} was trained with: pass the data root "
                "the bundle was trained on"
            )
    return train_set, val_set


def fit_bundle_guard(
    bundle: Bundle | Path | str,
    data_root: Path | str | None = None,
    *,
    detector: str = DEFAULT_DETECTOR,
    quantile: float = DEFAULT_QUANTILE,
    show_progress: bool = True,
) -> InputGuard:
    """Fit the input guard of ``bundle`` and store it there (``guard.safetensors`` and ``extras.guard``).

    Args:
        bundle: a bundle folder or a loaded bundle (single model or ensemble).
        data_root: the data root it was trained on (default: the one its training record names).
        detector: feature detector name (:func:`braintumor.guard.detectors.detector_names`).
        quantile: validation quantile of the thresholds.
        show_progress: rich progress bars while decoding.
    """
    create_detector(detector)  # an unknown name fails before minutes of decoding
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    root = Path(data_root) if data_root is not None else None
    if root is None and bundle.config.training.data_root:
        root = Path(bundle.config.training.data_root)
    if root is None or not root.is_dir():
        where = f"its recorded data root {root} is not on this machine" if root else "it records no data root"
        raise BrainTumorError(f"cannot fit the input guard of {bundle.path}: {where}; pass --data ROOT")
    train_set, val_set = training_split(bundle, root, show_progress=show_progress)
    normalise = eval_transform(bundle.preprocessing)
    # At the precision the bundle runs at (and was fitted at by train), so a refit reproduces the original.
    precision = bundle.recipe.precision()
    train = model_outputs(bundle.model, normalise, train_set, precision=precision)
    val = model_outputs(bundle.model, normalise, val_set, precision=precision)
    guard = fit_guard(train, train_set.labels, val, detector=detector, quantile=quantile)
    write_bundle_guard(bundle.path, guard)
    bundle.guard = guard
    return guard
