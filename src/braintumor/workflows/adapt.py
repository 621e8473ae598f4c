"""``braintumor adapt``: fit a bundle to a site from that site's unlabelled images, into a new bundle.

The steps: list the images and check that each decodes (folder names are ignored: no label is read), score
them with the bundle's input guard and drop what it flags, measure how far the rest sits from the source
(:mod:`~braintumor.adaptation.evidence`), run the method (:mod:`~braintumor.adaptation.pipeline`) and save a
copy of the bundle with the adapted weights and an ``extras.adaptation`` record. The original bundle is only
read. The pixels are decoded from disk batch by batch whenever a network reads them, never held all at once,
so a site of any size fits in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from braintumor.adaptation.defaults import MIN_STD, REFERRAL_CHANGE
from braintumor.adaptation.errors import AdaptationError
from braintumor.adaptation.evidence import ShiftEvidence, shift_evidence
from braintumor.adaptation.methods import SourceStats
from braintumor.adaptation.network import (
    adabn,
    backbone_features,
    head_state,
    penultimate,
    set_head_state,
    source_moments,
)
from braintumor.adaptation.pipeline import adapt_head, gate, method_settings, min_images, parse_methods
from braintumor.bundle import AdaptationRecord, Bundle, load_bundle, read_bundle_config, save_bundle
from braintumor.data.dataset import ImageSet, scan_images
from braintumor.data.layout import Sample
from braintumor.data.preprocessing import eval_transform
from braintumor.guard.evidence import image_evidence
from braintumor.guard.guard import SOURCE_MEAN, SOURCE_STD, GuardInputs, head_outputs, images_evidence
from braintumor.inference.predictor import expand_inputs, probabilities_from_logits
from braintumor.models.ensemble import EnsembleNet
from braintumor.models.network import BrainTumorNet
from braintumor.workflows.export import ensure_onnx


@dataclass
class AdaptationResult:
    """What :func:`adapt_bundle` wrote and found."""

    out: Path
    record: AdaptationRecord
    evidence: ShiftEvidence
    applied: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    # What happened to model.onnx (written, or why not): one line for the person running it.
    onnx_note: str = ""


def manifest_sha256(digests: list[str]) -> str:
    """One hash naming a set of images: sha256 over their sorted content hashes (order and paths do not matter).

    Example:
        >>> manifest_sha256(["b", "a"]) == manifest_sha256(["a", "b"])
        True
    """
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def _check_paths(bundle_path: Path, images: Path, out: Path, needed: int) -> list[Path]:
    if not images.exists():
        raise AdaptationError(f"image folder {images} does not exist")
    if out.resolve() == bundle_path.resolve() or out.resolve().is_relative_to(bundle_path.resolve()):
        raise AdaptationError(f"-o {out} is the bundle being adapted (or inside it): write the adapted copy elsewhere")
    files = expand_inputs([images])
    if not files:
        raise AdaptationError(f"{images} holds no files: point --images at a folder of the site's scans")
    if len(files) < needed:
        raise AdaptationError(
            f"{images} holds {len(files)} files; the method needs at least {needed} images: add more scans"
        )
    return files


def network_members(model: torch.nn.Module) -> list[BrainTumorNet]:
    """The networks whose last layers adapt: the model itself, or each member of an ensemble."""
    members = list(model.members) if isinstance(model, EnsembleNet) else [model]
    if not all(isinstance(member, BrainTumorNet) for member in members):
        raise AdaptationError("adaptation needs networks with a backbone and a Dense head (every recipe's network)")
    return members  # type: ignore[return-value]


def _source_moments(bundle: Bundle) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's per-dimension penultimate mean and deviation: each head's BatchNorm, or else the Training
    features' moments that the input guard keeps (a linear probe's head has no BatchNorm)."""
    moments = [source_moments(member) for member in network_members(bundle.model)]
    if all(part is not None for part in moments):
        return torch.cat([m for m, _ in moments]), torch.cat([s for _, s in moments])  # type: ignore[misc]
    state = bundle.guard.state if bundle.guard is not None else {}
    if SOURCE_MEAN in state and SOURCE_STD in state:
        return state[SOURCE_MEAN].double(), state[SOURCE_STD].double().clamp_min(MIN_STD)
    raise AdaptationError(
        f"{bundle.path}: its head has no BatchNorm before the last layer and its input guard keeps no feature "
        f"statistics (fitted before they were kept), so how the source looked is unknown: refit the guard with "
        f"`braintumor guard {bundle.path} --data ROOT` (Training only) and adapt again"
    )


def source_stats(bundle: Bundle) -> SourceStats:
    """The source's penultimate statistics: the head's BatchNorm, the guard's class means, the training priors.

    For an ensemble, the members' penultimate features side by side (what its input guard reads).
    """
    mean, std = _source_moments(bundle)
    counts = bundle.config.training.train_class_counts
    if counts and all(name in counts for name in bundle.class_names):
        priors = torch.tensor([float(counts[name]) for name in bundle.class_names], dtype=torch.float64)
    else:
        priors = torch.ones(len(bundle.class_names), dtype=torch.float64)
    guard = bundle.guard
    class_means = guard.state.get("mu") if guard is not None and guard.spec.detector == "mahalanobis" else None
    if class_means is not None and class_means.shape[1] != len(mean):
        class_means = None  # a guard refitted on other features: fall back to the diagonal source covariance
    return SourceStats(mean, std, priors / priors.sum(), None if class_means is None else class_means.double())


def member_temperature(bundle: Bundle) -> float:
    """The temperature each member's logits adapt at: a single network's are divided by the bundle's
    temperature (EM's prior shift scales with it); an ensemble's temperature applies to the members' average."""
    return (bundle.config.extras.temperature or 1.0) if len(network_members(bundle.model)) == 1 else 1.0


def member_stats(source: SourceStats, widths: list[int]) -> list[SourceStats]:
    """``source`` cut into each member's columns (``widths``: the members' penultimate sizes).

    Example:
        >>> whole = SourceStats(torch.arange(3.0), torch.ones(3), torch.tensor([0.5, 0.5]))
        >>> [s.mean.tolist() for s in member_stats(whole, [1, 2])]
        [[0.0], [1.0, 2.0]]
    """
    parts, start = [], 0
    for width in widths:
        columns = slice(start, start + width)
        means = None if source.class_means is None else source.class_means[:, columns]
        parts.append(SourceStats(source.mean[columns], source.std[columns], source.priors, means))
        start += width
    return parts


def _scan(files: list[Path], bundle: Bundle, show_progress: bool) -> ImageSet:
    """The decodable ``files`` as a streaming image set: each file is read once here to hash and check it, and
    its pixels are decoded again batch by batch when a network needs them (memory does not grow with the site)."""
    # Label 0 for every file: the adaptation never reads a label, whatever the folders are called.
    samples = [Sample(path, 0) for path in files]
    return scan_images(
        samples, bundle.preprocessing, description="Checking the site's images", show_progress=show_progress
    )


def guard_inputs(
    bundle: Bundle,
    features: list[torch.Tensor],
    images: torch.Tensor | ImageSet,
    evidence: torch.Tensor | None = None,
) -> GuardInputs:
    """What the guard reads of ``images`` (uint8 ``[N, 3, S, S]`` or an image set), from each member's backbone
    ``features`` (a single network is one member): only the heads run. ``evidence``: the images' evidence when it
    was computed in the features' pass (a streamed set is then not decoded again)."""
    members = network_members(bundle.model)
    if len(members) == 1:
        return head_outputs(members[0], features[0], images, evidence)
    parts = [_head_outputs(member, part) for member, part in zip(members, features, strict=True)]
    assert isinstance(bundle.model, EnsembleNet)
    with torch.no_grad():
        logits = bundle.model.combine([z for _, z in parts])
    # The image evidence once for all members: each pass over a streaming set decodes every file again.
    evidence = images_evidence(images) if evidence is None else evidence
    return GuardInputs(torch.cat([p for p, _ in parts], dim=1), logits, evidence)


@torch.inference_mode()
def _head_outputs(member: BrainTumorNet, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One member's penultimate features and logits (float32, eval mode) from its cached backbone features, as
    :func:`~braintumor.guard.guard.head_outputs` computes them."""
    member.eval()
    penultimate_features, logits = member.head_penultimate_and_logits(features)
    return penultimate_features.float(), logits.float()


def _guard_filter(
    bundle: Bundle, images: ImageSet, features: list[torch.Tensor], evidence: torch.Tensor | None
) -> tuple[torch.Tensor, float]:
    """A mask of the images the guard accepts (all when there is no guard) and the flagged share."""
    if bundle.guard is None:
        return torch.ones(len(images), dtype=torch.bool), 0.0
    flagged = bundle.guard.score(guard_inputs(bundle, features, images, evidence)).flagged
    return ~flagged, float(flagged.float().mean())


def _gated(methods: tuple[str, ...], evidence: ShiftEvidence, force: bool) -> tuple[tuple[str, ...], list[str]]:
    """The methods to apply, and a warning for each one the evidence advises against (applied anyway with force)."""
    kept, skipped = gate(methods, evidence.near_source)
    where = "near the source" if evidence.near_source else "away from the source"
    warnings = [
        f"the images sit {where} ({evidence.explanation}); {name} {reason}: "
        + ("applied anyway (--force)" if force else "not applied (--force applies it)")
        for name, reason in skipped.items()
    ]
    return (methods if force else kept), warnings


def _record(
    bundle: Bundle, images: Path, kept: ImageSet, rejected: list[str], evidence: ShiftEvidence, details: dict[str, Any]
) -> AdaptationRecord:
    return AdaptationRecord(
        method=details.pop("method"),
        settings=details,
        source_bundle=str(bundle.path),
        images_root=str(images),
        n_images=len(kept),
        manifest_sha256=manifest_sha256(kept.hashes),
        image_digests=sorted(kept.hashes),
        rejected_by_guard=rejected,
        skipped_files=[{"path": s.path, "reason": s.reason} for s in kept.skipped],
        evidence=evidence.to_dict(),
        warnings=details.pop("warnings"),
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def recipe_method(bundle_path: Path | str) -> str:
    """The adaptation method the bundle's recipe asks for (``adapt.method``); older bundles get the default."""
    return read_bundle_config(bundle_path).recipe.adapt.method


def adapt_bundle(
    bundle_path: Path | str,
    images: Path | str,
    out: Path | str,
    *,
    method: str | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> AdaptationResult:
    """Adapt the bundle at ``bundle_path`` to the unlabelled images under ``images`` and save it to ``out``.

    ``method`` None takes the bundle recipe's ``adapt.method`` (``defaults.DEFAULT_METHOD`` unless the recipe chose
    another on the proxy).

    Raises:
        AdaptationError: an unknown method, an empty or too small folder (before any image is decoded), too few
            images left after the guard, a network without a Dense head, a bundle with no record of its source
            feature statistics, or ``out`` inside the bundle.
    """
    bundle_path, images, out = Path(bundle_path), Path(images), Path(out)
    methods = parse_methods(method or recipe_method(bundle_path))
    files = _check_paths(bundle_path, images, out, min_images(methods))
    bundle = load_bundle(bundle_path)
    source_stats(bundle)  # a network or a bundle adaptation cannot read is refused before any image is decoded
    record, evidence, applied = _fit(bundle, images, files, methods, force=force, show_progress=show_progress)
    config = bundle.config
    extras = config.extras.model_copy(update={"adaptation": record})
    save_bundle(
        out,
        bundle.model,
        config.recipe,
        config.preprocessing,
        training=config.training,
        extras=extras,
        manifest=config.manifest,
        ensemble=config.ensemble,
        guard=bundle.guard,
    )
    onnx = ensure_onnx(out)
    return AdaptationResult(out, record, evidence, applied, list(record.warnings), onnx.note)


def _fit(
    bundle: Bundle, images: Path, files: list[Path], methods: tuple[str, ...], *, force: bool, show_progress: bool
) -> tuple[AdaptationRecord, ShiftEvidence, tuple[str, ...]]:
    """Adapt ``bundle.model`` in place to the decodable, guard-accepted ``files``; the record of what was done.

    An ensemble's members adapt one by one on their own features; the guard and the shift evidence read all
    of them side by side, so one verdict gates every member alike.
    """
    members = network_members(bundle.model)
    scanned = _scan(files, bundle, show_progress)
    transform = eval_transform(bundle.preprocessing)
    features, evidence = _features_and_evidence(members, scanned, transform, with_evidence=bundle.guard is not None)
    accepted, flagged_share = _guard_filter(bundle, scanned, features, evidence)
    kept = scanned.subset(torch.nonzero(accepted).flatten())
    rejected = [str(p) for p, ok in zip(scanned.paths, accepted.tolist(), strict=True) if not ok]
    if len(kept) < min_images(methods):
        raise AdaptationError(
            f"only {len(kept)} of {len(files)} images were decodable and accepted by the input guard; "
            f"{'+'.join(methods)} needs {min_images(methods)}"
        )
    penultimates = [penultimate(member, part[accepted]) for member, part in zip(members, features, strict=True)]
    source = source_stats(bundle)
    validation_rate = bundle.guard.spec.validation_flag_rate if bundle.guard is not None else None
    evidence = shift_evidence(
        torch.cat(penultimates, dim=1),
        source,
        flagged_share=flagged_share,
        validation_flag_rate=validation_rate,
        target_mix=_predicted_mix(bundle, penultimates),
        n_images=int(accepted.numel()),
    )
    applied, warnings = _gated(methods, evidence, force)
    fitted_parts, before, after = _adapt_members(bundle, applied, kept, penultimates, source)
    referral, referral_warning = _referral_change(bundle, before, after)
    warnings += [referral_warning] if referral_warning else []
    details = {
        "method": "+".join(methods),
        "applied": "+".join(applied),
        "fitted": fitted_parts[0] if len(members) == 1 else {"members": fitted_parts},
        "methods": method_settings(methods),
        "referral": referral,
        "warnings": warnings,
    }
    return _record(bundle, images, kept, rejected, evidence, details), evidence, applied


def _features_and_evidence(
    members: list[BrainTumorNet],
    images: ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    with_evidence: bool,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Each member's backbone features and, read in the first member's pass, the images' guard evidence
    (each pass over a streamed set decodes every file: the evidence costs no pass of its own)."""
    parts: list[torch.Tensor] = []

    def evidence_of(batch: torch.Tensor) -> None:
        parts.append(image_evidence(batch))

    features = []
    for index, member in enumerate(members):
        on_batch = evidence_of if with_evidence and index == 0 else None
        features.append(backbone_features(member.backbone, images, transform, on_batch=on_batch))
    return features, (torch.cat(parts) if parts else None)


def _predicted_mix(bundle: Bundle, penultimates: list[torch.Tensor]) -> torch.Tensor:
    """The unadapted bundle's mean predicted probability per class over the target images (members averaged)."""
    temperature = member_temperature(bundle)
    members = network_members(bundle.model)
    probabilities = [
        torch.softmax(head_state(member).logits(z).double() / temperature, dim=1)
        for member, z in zip(members, penultimates, strict=True)
    ]
    return torch.stack(probabilities).mean(dim=0).mean(dim=0)


def _adapt_members(
    bundle: Bundle, applied: tuple[str, ...], kept: ImageSet, penultimates: list[torch.Tensor], source: SourceStats
) -> tuple[list[dict[str, Any]], list[torch.Tensor], list[torch.Tensor]]:
    """Fit each member's last layer (and BatchNorm, for AdaBN) in place; what was fitted per member, and each
    member's logits of the ``kept`` images before and after."""
    members = network_members(bundle.model)
    sources = member_stats(source, [z.shape[1] for z in penultimates])
    temperature = member_temperature(bundle)
    transform = eval_transform(bundle.preprocessing)
    fitted_parts, before, after = [], [], []
    for member, z, member_source in zip(members, penultimates, sources, strict=True):
        before.append(head_state(member).logits(z))
        if "adabn" in applied:
            adabn(member.backbone, kept, transform)
            z = penultimate(member, backbone_features(member.backbone, kept, transform))
        adapted, fitted = adapt_head(applied, z, head_state(member), member_source, temperature)
        set_head_state(member, adapted)
        fitted_parts.append(fitted)
        after.append(adapted.logits(z))
    return fitted_parts, before, after


def _referral_change(
    bundle: Bundle, before: list[torch.Tensor], after: list[torch.Tensor]
) -> tuple[dict[str, Any] | None, str | None]:
    """How many of the site's images the bundle's referral threshold refers before and after adaptation, and a
    warning when that share moves by more than :data:`REFERRAL_CHANGE` (None, None without a threshold).

    The threshold (and the temperature) were fitted on the unadapted bundle's validation split; a method that
    moves the logits also moves how confident the answers are, and without labels from the site nothing can
    refit them.
    """
    extras = bundle.config.extras
    if extras.refer_threshold is None:
        return None, None

    def referred(member_logits: list[torch.Tensor]) -> float:
        model = bundle.model
        logits = model.combine(member_logits) if isinstance(model, EnsembleNet) else member_logits[0]
        confidence = probabilities_from_logits(logits, extras.temperature or 1.0).max(axis=1)
        return round(float((confidence < extras.refer_threshold).mean()), 4)

    shares = {"threshold": extras.refer_threshold, "before": referred(before), "after": referred(after)}
    if abs(shares["after"] - shares["before"]) <= REFERRAL_CHANGE:
        return shares, None
    return shares, (
        f"the referral threshold {extras.refer_threshold:.4g}, fitted on the unadapted bundle's validation split, "
        f"refers {shares['before']:.1%} of these images before adaptation and {shares['after']:.1%} after: the "
        "adapted answers' confidence has another scale; refit it (braintumor calibrate) on labelled images of "
        "this site if there are any"
    )
