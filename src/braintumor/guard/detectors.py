"""Feature-space out-of-distribution detectors, each a small registered builder (timm-style registry).

A detector is fitted on the Training images' penultimate features (and logits) and scores new inputs:
higher means further from what the model learned. Fitting and the kNN score are pytorch-ood's; the
Mahalanobis, energy and max-logit scores are pytorch-ood's formulas written out in torch (the same operations
in the same order, so the same numbers; the tests compare them), because importing pytorch-ood imports
scipy.stats, which costs a one-image prediction more than the prediction. What is kept for a bundle is
plain tensors (safetensors), never a pickled object.

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> features, labels = torch.randn(200, 8), torch.arange(200) % 4
    >>> detector = create_detector("mahalanobis")
    >>> state = detector.fit(features, labels, torch.randn(200, 4))
    >>> far = detector.score(state, torch.full((1, 8), 8.0), torch.zeros(1, 4))
    >>> near = detector.score(state, features[:1], torch.zeros(1, 4))
    >>> bool(far > near)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from braintumor.errors import BrainTumorError

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Detector:
    """``fit(features, labels, logits) -> state`` and ``score(state, features, logits) -> [N]`` (higher: OOD)."""

    name: str
    description: str
    fit: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], State]
    score: Callable[[State, torch.Tensor, torch.Tensor], torch.Tensor]
    # Derives what scoring reads from the stored state, once per loaded guard (never saved): None reads it as is.
    prepare: Callable[[State], State] | None = None


_REGISTRY: dict[str, Detector] = {}


def register_detector(detector: Detector) -> Detector:
    _REGISTRY[detector.name] = detector
    return detector


def detector_names() -> list[str]:
    return sorted(_REGISTRY)


def create_detector(name: str) -> Detector:
    """The registered detector ``name``; an unknown name is a clear error listing the choices."""
    if name not in _REGISTRY:
        raise BrainTumorError(f"unknown input-guard detector {name!r}; choose one of {', '.join(detector_names())}")
    return _REGISTRY[name]


def _mahalanobis_fit(features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> State:
    # Lee et al. 2018: class means and one shared covariance, in float64 (a 1280-wide covariance is ill-conditioned).
    from pytorch_ood.detector import Mahalanobis

    detector = Mahalanobis(None).fit_features(features.double(), labels)
    return {"mu": detector.mu.float(), "precision": detector.precision.float()}


@torch.no_grad()
def mahalanobis_score(mu: torch.Tensor, precision: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """pytorch-ood's ``Mahalanobis.predict_features``: minus the largest ``-0.5 (z - mu_c)^T P (z - mu_c)`` over
    the classes ``c`` (rows of ``mu``), with the same operations in the same order.

    Example:
        >>> mahalanobis_score(torch.zeros(2, 2), torch.eye(2), torch.tensor([[3.0, 4.0]])).tolist()
        [12.5]
    """
    flat = torch.mean(features.view(features.size(0), features.size(1), -1), 2)
    per_class = []
    for centre in mu:
        centred = flat - centre
        per_class.append((-0.5 * ((centred @ precision) * centred).sum(dim=1)).view(-1, 1))
    return -torch.max(torch.cat(per_class, 1), dim=1).values


def whiten_mahalanobis(state: State) -> State:
    """The stored class means and precision as a whitening: ``W`` with ``P = W W^T`` (Cholesky, float64) and the
    whitened means ``mu W``, so that a score is one product ``z W`` and distances to 4 points instead of a
    1280 x 1280 product per class. A precision that float32 storage left not positive definite keeps the
    direct formula.

    Example:
        >>> state = {"mu": torch.zeros(2, 2), "precision": torch.eye(2)}
        >>> _mahalanobis_score(whiten_mahalanobis(state), torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)).tolist()
        [12.5]
    """
    precision = state["precision"].double()
    factor, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0:
        return {"mu": state["mu"].double(), "precision": precision}
    return {"whiten": factor, "mu_white": state["mu"].double() @ factor}


@torch.no_grad()
def _mahalanobis_score(state: State, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if "whiten" not in state:  # a state as stored (fitting's own checks) or one whitening could not factor
        return mahalanobis_score(state["mu"].double(), state["precision"].double(), features.double()).float()
    white = features.double() @ state["whiten"]
    # (z - mu)^T P (z - mu) = |z W - mu W|^2; the score is half the smallest over the classes.
    return (0.5 * torch.cdist(white, state["mu_white"]).square().min(dim=1).values).float()


KNN_NEIGHBOURS = 50


def _knn_fit(features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> State:
    return {"train_features": features.float().contiguous()}


def _knn_score(state: State, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    # Sun et al. 2022: distance to the k-th nearest normalised Training feature (the index is rebuilt, not stored).
    from pytorch_ood.detector import KNN

    train = state["train_features"]
    detector = KNN(None, k=min(KNN_NEIGHBOURS, len(train))).fit_features(train, torch.zeros(len(train)))
    return detector.predict_features(features.float()).float()


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    """pytorch-ood's ``EnergyBased.score`` at temperature 1: ``-logsumexp(logits)`` per row.

    Example:
        >>> round(energy_score(torch.zeros(1, 4)).item(), 4)
        -1.3863
    """
    temperature = 1.0
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """pytorch-ood's ``MaxLogit.score``: minus the largest logit per row."""
    return -logits.max(dim=1).values


def _no_state(features: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> State:
    return {}


register_detector(
    Detector(
        "mahalanobis",
        "class-conditional Mahalanobis distance, shared covariance (Lee et al. 2018)",
        _mahalanobis_fit,
        _mahalanobis_score,
        whiten_mahalanobis,
    )
)
register_detector(
    Detector(
        "knn", f"distance to the {KNN_NEIGHBOURS}th nearest Training feature (Sun et al. 2022)", _knn_fit, _knn_score
    )
)
register_detector(
    Detector(
        "energy",
        "negative free energy of the logits (Liu et al. 2020)",
        _no_state,
        lambda s, f, z: energy_score(z),
    )
)
register_detector(
    Detector(
        "max_logit", "negative maximum logit (Hendrycks et al. 2022)", _no_state, lambda s, f, z: max_logit_score(z)
    )
)
