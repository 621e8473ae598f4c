"""The input guard: says "this is not a brain MRI like the ones I learned from" instead of diagnosing it.

Two components, each with a threshold set on the validation split (never on Testing): a feature detector on
the model's penultimate features and logits (:mod:`~braintumor.guard.detectors`), and image evidence on the
model's input (:mod:`~braintumor.guard.evidence`). A third, the bone-ring rule, flags images that look like a head
CT in a brain window; such images in the training and validation splits are left out of the fit, so the other two
components learn brain MR slices only. See :data:`~braintumor.guard.spec.SCORE_DEFINITION`.

Example:
    >>> import torch
    >>> from braintumor.models.network import BrainTumorNet, LinearHead
    >>> torch.manual_seed(0) and None
    >>> net = BrainTumorNet(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(16)), 16,
    ...                     LinearHead(16, dropout=0.0, num_classes=4), frozen_backbone=False)
    >>> images = (torch.rand(120, 3, 16, 16) * 60).to(torch.uint8)
    >>> labels, normalise = torch.arange(120) % 4, lambda x: x.float() / 255
    >>> guard = fit_guard(model_outputs(net, normalise, images[:80]), labels[:80],
    ...                   model_outputs(net, normalise, images[80:]))
    >>> noise = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    >>> guard.score(model_outputs(net, normalise, noise)).flagged.tolist()
    [True, True, True, True]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from braintumor.guard.defaults import BONE_RING_RULE, DEFAULT_DETECTOR, DEFAULT_QUANTILE
from braintumor.guard.detectors import State, create_detector
from braintumor.guard.evidence import (
    EVIDENCE_NAMES,
    bone_ring_score,
    evidence_distance,
    evidence_sides,
    image_evidence,
)
from braintumor.guard.reasons import FlagReason, reason_indices, reasons_of
from braintumor.guard.spec import GuardSpec
from braintumor.runtime import INFERENCE_BATCH_SIZE, autocast, channels_last_batch, to_channels_last

if TYPE_CHECKING:
    # Only a type here: the data set module imports scikit-learn, which a served prediction does not need.
    from braintumor.data.dataset import ImageSet

# The Training images' range of each evidence statistic: these quantiles, so a handful of odd slices do not widen it.
EVIDENCE_RANGE_QUANTILES = (0.001, 0.999)
# Guard-state keys of the Training features' per-dimension mean and deviation. Site adaptation reads them as the
# source statistics when the head has no BatchNorm to read them from (a linear probe without standardisation).
SOURCE_MEAN, SOURCE_STD = "source_mean", "source_std"
Normalise = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GuardScores:
    """Per image: the combined ``ood_score`` (> 1: flagged), each component's normalised score and, for flagged
    images, why (``reason_index`` into :data:`~braintumor.guard.reasons.FLAG_REASONS`, -1 when not flagged).
    ``bone_ring`` is the bone-ring score (above 1: looks like a head CT), zeros for a guard without the rule."""

    ood_score: torch.Tensor
    feature: torch.Tensor
    evidence: torch.Tensor
    reason_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    bone_ring: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def flagged(self) -> torch.Tensor:
        return self.ood_score > 1.0

    @property
    def reasons(self) -> tuple[FlagReason | None, ...]:
        """Per image, why it was flagged (:class:`~braintumor.guard.reasons.FlagReason`); None when not flagged."""
        if len(self.reason_index) != len(self.ood_score):
            raise ValueError("these scores were built without reasons: use InputGuard.score")
        return reasons_of(self.reason_index)


@dataclass(frozen=True)
class GuardInputs:
    """What the guard reads of a set of images: penultimate features, logits and image evidence."""

    features: torch.Tensor
    logits: torch.Tensor
    evidence: torch.Tensor


@torch.inference_mode()
def model_outputs(
    model: torch.nn.Module,
    normalise: Normalise,
    images: torch.Tensor | ImageSet,
    batch_size: int = INFERENCE_BATCH_SIZE,
    precision: str = "32-true",
) -> GuardInputs:
    """:class:`GuardInputs` of uint8 ``images`` (run in eval mode).

    Args:
        model: a network with ``penultimate_and_logits`` (:class:`~braintumor.models.network.BrainTumorNet`,
            :class:`~braintumor.models.ensemble.EnsembleNet`).
        normalise: the bundle's eval transform (uint8 to the network's input).
        images: ``[N, 3, S, S]`` uint8 at the model's size, or an :class:`~braintumor.data.dataset.ImageSet`
            (a streaming one is decoded batch by batch, never held whole).
        batch_size: images per forward pass.
        precision: ``32-true``, ``bf16-mixed`` or ``auto`` (:func:`braintumor.runtime.resolve_precision`).
    """
    was_training = model.training
    model.eval()
    to_channels_last(model)
    parts, evidence = [], []
    for batch in _batches(images, batch_size):
        with autocast(precision):
            parts.append(model.penultimate_and_logits(channels_last_batch(normalise(batch))))
        evidence.append(image_evidence(batch))
    model.train(was_training)
    features = torch.cat([p for p, _ in parts]).float()
    return GuardInputs(features, torch.cat([z for _, z in parts]).float(), torch.cat(evidence))


def _batches(images: torch.Tensor | ImageSet, batch_size: int) -> Iterator[torch.Tensor]:
    if not isinstance(images, torch.Tensor):
        return images.batches(batch_size)
    return (images[i : i + batch_size] for i in range(0, len(images), batch_size))


def images_evidence(images: torch.Tensor | ImageSet, batch_size: int = 64) -> torch.Tensor:
    """:func:`~braintumor.guard.evidence.image_evidence` of uint8 images or an image set, batch by batch
    (each image's statistics are its own: the same numbers as one call on all of them)."""
    return torch.cat([image_evidence(batch) for batch in _batches(images, batch_size)])


@torch.inference_mode()
def head_outputs(
    model: torch.nn.Module,
    backbone_features: torch.Tensor,
    images: torch.Tensor | ImageSet,
    evidence: torch.Tensor | None = None,
) -> GuardInputs:
    """:class:`GuardInputs` from cached backbone features of a frozen backbone: only the head runs.

    Args:
        model: a :class:`~braintumor.models.network.BrainTumorNet` whose backbone made ``backbone_features``.
        backbone_features: ``[N, D]`` features of the clean (unaugmented) images.
        images: the same images, ``[N, 3, S, S]`` uint8 or an image set (for the image evidence).
        evidence: their :func:`images_evidence` when it was computed already (saves decoding a streamed set again).
    """
    was_training = model.training
    model.eval()
    features, logits = model.head_penultimate_and_logits(backbone_features)
    model.train(was_training)
    return GuardInputs(features.float(), logits.float(), images_evidence(images) if evidence is None else evidence)


def _normalised(scores: torch.Tensor, median: float, threshold: float) -> torch.Tensor:
    return (scores - median) / max(threshold - median, 1e-6)


class InputGuard:
    """A fitted guard: its :class:`GuardSpec` (JSON) and its detector state (tensors)."""

    def __init__(self, spec: GuardSpec, state: State) -> None:
        self.spec = spec
        self.state = state
        self.detector = create_detector(spec.detector)
        # Derived once here, not per call: scoring one image should not redo a factorisation.
        self._scoring = self.detector.prepare(state) if self.detector.prepare is not None else state
        self._low = torch.tensor(spec.evidence_low)
        self._high = torch.tensor(spec.evidence_high)

    def score(self, inputs: GuardInputs) -> GuardScores:
        """Scores of images given their :class:`GuardInputs`."""
        feature = _normalised(
            self.detector.score(self._scoring, inputs.features, inputs.logits),
            self.spec.feature_median,
            self.spec.feature_threshold,
        )
        above, below = evidence_sides(inputs.evidence.float(), self._low, self._high)
        median, threshold = self.spec.evidence_median, self.spec.evidence_threshold
        outside = _normalised(torch.maximum(above, below).amax(dim=1), median, threshold)
        rule = self.spec.bone_ring
        ring = bone_ring_score(inputs.evidence, rule) if rule is not None else torch.zeros_like(feature)
        ood_score = torch.maximum(torch.maximum(feature, outside), ring)
        reason = reason_indices(
            ood_score,
            outside,
            _normalised(above, median, threshold),
            _normalised(below, median, threshold),
            inputs.evidence.float(),
            self._low,
            self.spec.evidence_names,
            bone_ring=ring,
        )
        return GuardScores(ood_score, feature, outside, reason, ring)


def feature_moments(features: torch.Tensor) -> State:
    """The per-dimension mean and standard deviation of ``features`` [N, D], as guard-state tensors.

    Example:
        >>> moments = feature_moments(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        >>> moments[SOURCE_MEAN].tolist(), moments[SOURCE_STD].tolist()
        ([1.0, 1.0], [1.4142135381698608, 0.0])
    """
    wide = features.double()
    return {SOURCE_MEAN: wide.mean(dim=0).float(), SOURCE_STD: wide.std(dim=0).float()}


def _evidence_threshold(distances: torch.Tensor, quantile: float) -> tuple[float, float]:
    # Most validation images lie inside the Training range (distance 0): the threshold then sits just above 0,
    # and at least half the range outside it, so only inputs clearly unlike Training are flagged on evidence alone.
    median = float(distances.median())
    return median, max(float(torch.quantile(distances, quantile)), median + 0.5)


def _subset(inputs: GuardInputs, keep: torch.Tensor) -> GuardInputs:
    return GuardInputs(inputs.features[keep], inputs.logits[keep], inputs.evidence[keep])


def fit_guard(
    train: GuardInputs,
    train_labels: torch.Tensor,
    val: GuardInputs,
    *,
    detector: str = DEFAULT_DETECTOR,
    quantile: float = DEFAULT_QUANTILE,
    bone_ring: tuple[float, ...] | None = BONE_RING_RULE,
) -> InputGuard:
    """Fit the guard on Training images and set its thresholds at the ``quantile`` of validation scores.

    Args:
        train: :class:`GuardInputs` of the model's training split (clean views).
        train_labels: their class indices.
        val: :class:`GuardInputs` of the validation split.
        detector: a name from :func:`~braintumor.guard.detectors.detector_names`.
        quantile: validation quantile of each threshold (0.99: about 1% of validation images flagged per component).
        bone_ring: the bone-ring rule (:data:`~braintumor.guard.defaults.BONE_RING_RULE`), or None for none.
            Images it flags (head CTs in a data set of MR slices) are left out of the detector's fit, the
            evidence ranges and the thresholds; they stay in ``validation_flag_rate``.
    """
    chosen = create_detector(detector)
    left_out = 0
    fit_train, fit_labels, fit_val = train, train_labels, val
    if bone_ring is not None:
        keep_train = bone_ring_score(train.evidence, bone_ring) <= 1.0
        keep_val = bone_ring_score(val.evidence, bone_ring) <= 1.0
        # A data set of mostly CT-like images (not brain MR) is fitted whole rather than left with nothing.
        if keep_train.float().mean() >= 0.5 and keep_val.float().mean() >= 0.5:
            left_out = int((~keep_train).sum() + (~keep_val).sum())
            fit_train, fit_labels = _subset(train, keep_train), train_labels[keep_train]
            fit_val = _subset(val, keep_val)
    state = {**chosen.fit(fit_train.features, fit_labels, fit_train.logits), **feature_moments(train.features)}
    evidence = fit_train.evidence[:, : len(EVIDENCE_NAMES)]
    low, high = torch.quantile(evidence, torch.tensor(EVIDENCE_RANGE_QUANTILES), dim=0)
    feature_scores = chosen.score(state, fit_val.features, fit_val.logits)
    distances = evidence_distance(fit_val.evidence, low, high)
    evidence_median, evidence_threshold = _evidence_threshold(distances, quantile)
    spec = GuardSpec(
        detector=detector,
        quantile=quantile,
        feature_median=float(feature_scores.median()),
        feature_threshold=float(torch.quantile(feature_scores, quantile)),
        evidence_names=list(EVIDENCE_NAMES),
        evidence_low=low.tolist(),
        evidence_high=high.tolist(),
        evidence_median=evidence_median,
        evidence_threshold=evidence_threshold,
        n_train=len(fit_train.features),
        n_val=len(fit_val.features),
        validation_flag_rate=0.0,
        bone_ring=list(bone_ring) if bone_ring is not None else None,
        ct_like_left_out=left_out,
    )
    guard = InputGuard(spec, state)
    guard.spec.validation_flag_rate = float(guard.score(val).flagged.float().mean())
    return guard
