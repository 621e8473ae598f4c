"""Linear probes on frozen features: standardise (optionally remove source directions), logistic regression.

The regularisation C is chosen by the log loss on a validation split taken out of Training; Testing is
scored only after the choice, to report how far validation misleads under shift.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, log_loss
from sklearn.preprocessing import StandardScaler

from braintumor.classes import CLASS_NAMES
from braintumor.data.dataset import stratified_split
from braintumor.models.pretrained import create_backbone

from .features import batched_outputs, load_split, probe_preprocessing

# The recipes' validation split: the same images are validation here as in training.
VAL_FRACTION = 0.15
SPLIT_SEED = 42
GLIOMA = CLASS_NAMES.index("glioma")


def source_directions(
    features: np.ndarray, labels: np.ndarray, main_source: np.ndarray, count: int, min_per_source: int = 10
) -> np.ndarray:
    """``[count, D]`` orthonormal directions along which the two kinds of source differ within a class.

    Iterative nullspace projection: each direction is the weight vector of a logistic regression that tells the
    sources apart on the features (class means subtracted) with the directions found so far projected out.

    Args:
        features: ``[N, D]``, standardised.
        labels: ``[N]`` class indices.
        main_source: ``[N]`` bool, whether each image comes from the main source.
        count: Directions to find.
        min_per_source: Only classes with at least this many images of each kind of source take part.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> main = rng.random(200) < 0.5
        >>> features = rng.normal(size=(200, 4)) + 4.0 * main[:, None] * np.eye(4)[1]
        >>> directions = source_directions(features, np.zeros(200, dtype=int), main, count=2)
        >>> directions.shape, bool(abs(directions[0, 1]) > 0.95)
        ((2, 4), True)
        >>> bool(np.allclose(directions @ directions.T, np.eye(2)))
        True
    """
    centred = features.astype(np.float64).copy()
    usable = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = labels == label
        centred[members] -= centred[members].mean(axis=0)
        if min(main_source[members].sum(), (~main_source[members]).sum()) >= min_per_source:
            usable |= members
    x, y = centred[usable], main_source[usable]
    directions = np.zeros((0, features.shape[1]))
    for _ in range(count):
        projected = x - (x @ directions.T) @ directions
        w = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000).fit(projected, y).coef_[0]
        w = w - directions.T @ (directions @ w)
        directions = np.vstack([directions, w / np.linalg.norm(w)])
    return directions


class SourceDebiasing:
    """Standardise, then remove ``count`` :func:`source_directions` learnt from the fitting images."""

    def __init__(self, count: int, main_source: np.ndarray) -> None:
        self.count, self.main_source = count, main_source

    def fit(self, features: np.ndarray, labels: np.ndarray, index: np.ndarray) -> SourceDebiasing:
        """Learn the scaling and the directions from ``features[index]`` alone."""
        self.scaler = StandardScaler().fit(features[index])
        standard = self.scaler.transform(features[index])
        self.directions = source_directions(standard, labels[index], self.main_source[index], self.count)
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        standard = self.scaler.transform(features)
        return standard - (standard @ self.directions.T) @ self.directions


@dataclass(frozen=True)
class Probe:
    """A fitted feature transform and the logistic regression on its output."""

    transform: StandardScaler | SourceDebiasing
    classifier: LogisticRegression

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(self.transform.transform(features))


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    c: float,
    index: np.ndarray,
    *,
    augmented: np.ndarray | None = None,
    debias: int = 0,
    main_source: np.ndarray | None = None,
) -> Probe:
    """A probe trained on ``features[index]`` and, when given, their ``augmented`` views.

    The transform (and with ``debias`` its source directions) is fitted on the clean images only.

    Args:
        features: ``[N, D]`` clean features.
        labels: ``[N]`` class indices.
        c: The logistic regression's inverse regularisation strength.
        index: The rows to train on.
        augmented: ``[V, N, D]`` other views of the same images, in the same order.
        debias: Source directions to remove (0: only standardise).
        main_source: ``[N]`` bool, needed with ``debias``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = np.arange(40) % 2
        >>> features = rng.normal(size=(40, 3)) + 3.0 * labels[:, None]
        >>> probe = fit_probe(features, labels, 1.0, np.arange(30))
        >>> bool((probe.predict_proba(features[30:]).argmax(1) == labels[30:]).all())
        True
    """
    if debias:
        if main_source is None:
            raise ValueError("debias needs main_source")
        transform: StandardScaler | SourceDebiasing = SourceDebiasing(debias, main_source).fit(features, labels, index)
    else:
        transform = StandardScaler().fit(features[index])
    x, y = features[index], labels[index]
    if augmented is not None:
        x = np.concatenate([x, *(view[index] for view in augmented)])
        y = np.tile(y, len(augmented) + 1)
    return Probe(transform, LogisticRegression(C=c, max_iter=5000).fit(transform.transform(x), y))


@dataclass(frozen=True)
class ProbeChoice:
    """The probe whose C had the lowest validation log loss, and its validation scores."""

    c: float
    probe: Probe
    val_loss: float
    val_accuracy: float


def choose_c(
    fit: Callable[[float], Probe], features: np.ndarray, labels: np.ndarray, val_idx: np.ndarray, grid: Sequence[float]
) -> ProbeChoice:
    """Fit a probe for every C of ``grid`` and keep the one with the lowest validation log loss (the first on ties).

    Args:
        fit: C to a probe fitted on the training rows.
        features: ``[N, D]``.
        labels: ``[N]`` class indices.
        val_idx: The validation rows.
        grid: The values of C to try.
    """
    best: ProbeChoice | None = None
    for c in grid:
        probe = fit(c)
        probabilities = probe.predict_proba(features[val_idx])
        val_loss = float(log_loss(labels[val_idx], probabilities, labels=list(range(len(CLASS_NAMES)))))
        if best is None or val_loss < best.val_loss:
            accuracy = float(np.mean(probabilities.argmax(1) == labels[val_idx]))
            best = ProbeChoice(c=c, probe=probe, val_loss=val_loss, val_accuracy=accuracy)
    if best is None:
        raise ValueError("the grid of C values is empty")
    return best


def scores_on_testing(probabilities: np.ndarray, labels: np.ndarray, *, confusion: bool = False) -> dict[str, Any]:
    """Testing's accuracy, (with ``confusion``) confusion matrix, and glioma recall, as result-row fields.

    Example:
        >>> probabilities = np.eye(4)[[0, 0, 1, 2]]
        >>> scores_on_testing(probabilities, np.array([0, 1, 1, 2]))
        {'test_accuracy': 0.75, 'test_glioma_recall': 1.0}
    """
    predicted = probabilities.argmax(1)
    scores: dict[str, Any] = {"test_accuracy": float(np.mean(predicted == labels))}
    if confusion:
        scores["test_confusion"] = confusion_matrix(labels, predicted, labels=range(len(CLASS_NAMES))).tolist()
    scores["test_glioma_recall"] = float(np.mean(predicted[labels == GLIOMA] == GLIOMA))
    return scores


def probe_sweep_row(variant: str, data: Path, grid: Sequence[float]) -> dict[str, Any]:
    """One probe-sweep result: a frozen backbone's probe, C chosen on validation, Testing reported.

    Args:
        variant: ``BACKBONE:SIZE:CROP:INTENSITY`` (CROP ``none`` or ``head``; INTENSITY a preprocessing intensity).
        data: The data set's root.
        grid: The values of C to try.
    """
    backbone_name, size, crop, intensity = variant.split(":")
    prep = probe_preprocessing(int(size), crop, intensity)
    started = time.perf_counter()
    training, testing = load_split(data, "Training", prep), load_split(data, "Testing", prep)
    train_idx, val_idx = stratified_split(training.labels, VAL_FRACTION, SPLIT_SEED)
    backbone = create_backbone(backbone_name, pretrained=True, weights=None).eval()
    features, test_features = (
        batched_outputs(backbone, images, prep).numpy() for images in (training.images, testing.images)
    )
    labels, test_labels = training.labels.numpy(), testing.labels.numpy()
    choice = choose_c(lambda c: fit_probe(features, labels, c, train_idx), features, labels, val_idx, grid)
    row: dict[str, Any] = {
        "variant": variant,
        "C": choice.c,
        "val_loss": choice.val_loss,
        "val_accuracy": choice.val_accuracy,
        **scores_on_testing(choice.probe.predict_proba(test_features), test_labels),
    }
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row
