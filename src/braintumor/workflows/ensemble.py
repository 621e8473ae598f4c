"""Combine trained bundles into one ensemble bundle whose probabilities are the members' average.

Members must agree on class names and preprocessing (one image goes through one pipeline) and must
have been validated on the same files: calibration and selective-prediction thresholds of the
ensemble are then fitted on a validation split that no member trained on.

Example:
    >>> import tempfile
    >>> from braintumor.bundle import load_bundle
    >>> from braintumor.bundle.examples import tiny_bundle
    >>> folder = tempfile.mkdtemp()
    >>> paths = [tiny_bundle(f"{folder}/m{seed}", seed=seed) for seed in (0, 1)]
    >>> ensemble = load_bundle(combine_bundles(paths, f"{folder}/ensemble"))
    >>> len(ensemble.model.members), ensemble.config.ensemble.weights
    (2, [0.5, 0.5])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from braintumor.bundle import Bundle, EnsembleMember, EnsembleSpec, load_bundle, save_bundle
from braintumor.errors import BundleError
from braintumor.models.ensemble import EnsembleNet


def _check_compatible(bundles: Sequence[Bundle]) -> None:
    first = bundles[0]
    for other in bundles[1:]:
        if other.class_names != first.class_names:
            raise BundleError(f"{other.path} has classes {other.class_names}, {first.path} has {first.class_names}")
        if other.preprocessing != first.preprocessing:
            raise BundleError(
                f"{other.path} preprocesses images differently from {first.path} "
                f"({other.preprocessing.model_dump()} vs {first.preprocessing.model_dump()}): "
                "ensemble members must share image size, normalisation, cropping and intensity handling"
            )
        if sorted(other.config.training.val_paths) != sorted(first.config.training.val_paths):
            raise BundleError(
                f"{other.path} was validated on other files than {first.path}: train every member with the same "
                "data.split_seed and data.val_fraction so the ensemble has one honest validation split"
            )


def combine_bundles(
    bundle_paths: Sequence[Path | str],
    out: Path | str,
    *,
    weights: Sequence[float] | None = None,
    name: str | None = None,
) -> Path:
    """Write an ensemble bundle of ``bundle_paths`` to ``out``; members' probabilities are averaged.

    ``weights`` (one per member, default equal) are fixed here; choose them on validation, never on Testing.
    Members' own temperatures are not applied: calibrate the ensemble as a whole (``braintumor calibrate``).
    """
    if len(bundle_paths) < 2:
        raise BundleError("an ensemble needs at least two bundles")
    bundles = [load_bundle(path) for path in bundle_paths]
    for bundle in bundles:
        if isinstance(bundle.model, EnsembleNet):
            raise BundleError(f"{bundle.path} is already an ensemble: list its members instead")
    _check_compatible(bundles)
    try:
        network = EnsembleNet([bundle.model for bundle in bundles], weights)
    except ValueError as error:
        raise BundleError(f"invalid ensemble weights: {error}") from None
    first = bundles[0]
    recipe = first.recipe.model_copy(update={"name": name or "ensemble-" + "+".join(b.name for b in bundles)})
    members = [
        EnsembleMember(
            name=bundle.name,
            source=str(bundle.path),
            recipe=bundle.recipe,
            val_metrics=bundle.config.training.val_metrics,
        )
        for bundle in bundles
    ]
    # The split, data and duplicate records are shared by all members; per-epoch history and validation
    # metrics are each member's own (kept under "ensemble"), so they are not copied as the ensemble's.
    training = first.config.training.model_copy(
        update={"history": [], "val_metrics": {}, "ensemble_of": [bundle.name for bundle in bundles]}
    )
    return save_bundle(
        out,
        network,
        recipe,
        first.preprocessing,
        training=training,
        manifest=first.config.manifest,
        ensemble=EnsembleSpec(members=members, weights=network.weights.tolist()),
    )


@dataclass(frozen=True)
class EnsembleResult:
    """The ensemble bundle written, its input guard (or why it has none) and what happened to its ONNX graph."""

    folder: Path
    guard_flag_rate: float | None
    guard_note: str | None
    onnx_note: str


def build_ensemble(
    bundle_paths: Sequence[Path | str],
    out: Path | str,
    *,
    weights: Sequence[float] | None = None,
    name: str | None = None,
    data_root: Path | str | None = None,
    guard: bool = True,
    show_progress: bool = True,
) -> EnsembleResult:
    """Combine the bundles, fit the ensemble's input guard on the members' split, and export ONNX.

    The ensemble is written and usable even when the guard cannot be fitted (no data): ``guard_note`` says why
    and how to add it later.
    """
    from braintumor.errors import BrainTumorError
    from braintumor.workflows.export import ensure_onnx
    from braintumor.workflows.guard import fit_bundle_guard

    folder = combine_bundles(bundle_paths, out, weights=weights, name=name)
    flag_rate, note = None, None
    if guard:
        try:
            flag_rate = fit_bundle_guard(folder, data_root, show_progress=show_progress).spec.validation_flag_rate
        except BrainTumorError as error:
            note = f"{error} (add it later with `braintumor guard {folder} --data ROOT`)"
    return EnsembleResult(folder, flag_rate, note, ensure_onnx(folder).note)
