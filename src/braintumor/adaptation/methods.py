"""Adaptation of a classifier's last layer to unlabelled target features, in closed form or a few steps.

Every method here reads the penultimate features ``Z`` (the input of the head's last Dense layer) of the target
images and returns a new Dense layer (:class:`HeadState`): a feature alignment ``z -> A z + b`` in front of the
layer and a prior shift (a logit bias) are both folded into its weight and bias, so the adapted network is the
same plain module as before and exports to ONNX unchanged. The source statistics come from the bundle's input
guard (class means and shared covariance of the same penultimate features on the training split).

Example:
    >>> head = HeadState(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    >>> folded = fold_affine(head, torch.tensor([2.0, 1.0], dtype=torch.float64), torch.tensor([0.0, 1.0]))
    >>> folded.weight.tolist(), folded.bias.tolist()
    ([[2.0, 0.0], [0.0, 1.0]], [0.0, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from braintumor.adaptation.defaults import (
    CORAL_SHRINKAGE,
    EM_MAX_ITERATIONS,
    EM_TOLERANCE,
    MIN_STD,
    SEED,
    SHOT_DIVERSITY,
    SHOT_LEARNING_RATE,
    SHOT_STEPS,
    T3A_FILTER,
)

Tensor = torch.Tensor


@dataclass(frozen=True)
class HeadState:
    """The last Dense layer: ``logits = Z @ weight.T + bias`` (float64 while adapting)."""

    weight: Tensor
    bias: Tensor

    def logits(self, features: Tensor) -> Tensor:
        return features.double() @ self.weight.T + self.bias


@dataclass(frozen=True)
class SourceStats:
    """What the source (training split) looked like in the penultimate space.

    ``mean`` and ``std`` per dimension are exact: they are the BatchNorm just before the last layer (its
    running statistics, or its affine parameters). ``class_means`` (from the input guard, when there is one)
    add the between-class covariance; the within-class part is taken as diagonal, because the guard stores
    only a shared precision that cannot be inverted back reliably.
    """

    mean: Tensor
    std: Tensor
    priors: Tensor
    class_means: Tensor | None = None

    def total_cov(self) -> Tensor:
        """The source covariance: diagonal within-class part plus the between-class part of ``class_means``."""
        variance = self.std.double() ** 2
        if self.class_means is None:
            return torch.diag(variance)
        priors = self.priors.double()
        centred = self.class_means.double() - priors @ self.class_means.double()
        between = (centred.T * priors) @ centred
        return between + torch.diag((variance - between.diagonal()).clamp_min(MIN_STD**2))


def em_priors(
    probabilities: Tensor,
    source_priors: Tensor,
    *,
    tolerance: float = EM_TOLERANCE,
    max_iterations: int = EM_MAX_ITERATIONS,
) -> tuple[Tensor, int]:
    """Target class priors by EM (Saerens, Latinne and Decaestecker 2002) and the rounds it took.

    Each round re-weights the source posteriors by ``target / source`` priors and takes their mean as the new
    target priors; the fixed point is the maximum-likelihood prior under a pure prior shift.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
        >>> priors, _ = em_priors(p, torch.tensor([0.5, 0.5], dtype=torch.float64))
        >>> [round(v, 2) for v in priors.tolist()]
        [0.91, 0.09]
    """
    priors = source_priors.clone()
    for iteration in range(1, max_iterations + 1):
        weighted = probabilities * (priors / source_priors)
        updated = (weighted / weighted.sum(dim=1, keepdim=True)).mean(dim=0)
        converged = bool((updated - priors).abs().max() < tolerance)
        priors = updated
        if converged:
            return priors, iteration
    return priors, max_iterations


def prior_shift(head: HeadState, target_priors: Tensor, source_priors: Tensor, temperature: float = 1.0) -> HeadState:
    """The layer with ``log(target / source)`` priors added to its bias (times the bundle's temperature, which
    divides the logits): Bayes' rule under a prior shift."""
    ratio = target_priors.clamp_min(1e-6) / source_priors.clamp_min(1e-6)
    return HeadState(head.weight, head.bias + temperature * ratio.log())


def fold_affine(head: HeadState, scale: Tensor, shift: Tensor) -> HeadState:
    """The layer that computes ``head(scale z + shift)``; ``scale`` is a vector (diagonal) or a matrix."""
    matrix = torch.diag(scale.double()) if scale.dim() == 1 else scale.double()
    return HeadState(head.weight @ matrix, head.bias + head.weight @ shift.double())


def standardize(features: Tensor, source: SourceStats) -> tuple[Tensor, Tensor]:
    """Per-dimension ``(scale, shift)`` that give the target features the source's mean and standard deviation."""
    features = features.double()
    target_std = features.std(dim=0).clamp_min(MIN_STD)
    scale = source.std.double() / target_std
    return scale, source.mean.double() - scale * features.mean(dim=0)


def _shrunk(cov: Tensor, shrinkage: float) -> Tensor:
    scaled_identity = torch.eye(len(cov), dtype=cov.dtype) * cov.diagonal().mean()
    return (1.0 - shrinkage) * cov + shrinkage * scaled_identity


def _matrix_power(cov: Tensor, power: float) -> Tensor:
    values, vectors = torch.linalg.eigh(cov)
    return (vectors * values.clamp_min(1e-8).pow(power)) @ vectors.T


def coral(features: Tensor, source: SourceStats, shrinkage: float = CORAL_SHRINKAGE) -> tuple[Tensor, Tensor]:
    """CORAL (Sun, Feng and Saenko 2016) as ``(A, b)``: whiten the target covariance, recolour with the source's.

    Both covariances are shrunk towards a scaled identity: a few hundred images cannot estimate a
    1280-wide covariance, and the shrunk map stays well conditioned.
    """
    features = features.double()
    target_cov = _shrunk(torch.cov(features.T), shrinkage)
    matrix = _matrix_power(_shrunk(source.total_cov(), shrinkage), 0.5) @ _matrix_power(target_cov, -0.5)
    return matrix, source.mean.double() - matrix @ features.mean(dim=0)


def t3a(features: Tensor, head: HeadState, filter_size: int = T3A_FILTER) -> HeadState:
    """T3A (Iwasawa and Matsuo 2021): class prototypes from the layer's own weights plus the ``filter_size`` most
    confident (lowest-entropy) target features it assigns to each class, all unit-normalised.

    Classifying by the dot product with normalised prototypes is a linear layer; its scale is the mean norm
    of the old weights, so the probabilities stay about as sharp.
    """
    features = features.double()
    probabilities = torch.softmax(head.logits(features), dim=1)
    predicted = probabilities.argmax(dim=1)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)
    normalised = torch.nn.functional.normalize(features, dim=1)
    weights = torch.nn.functional.normalize(head.weight, dim=1)
    prototypes = []
    for k in range(len(head.weight)):
        members = torch.nonzero(predicted == k).flatten()
        confident = members[torch.argsort(entropy[members])[:filter_size]]
        prototypes.append(torch.cat([weights[k : k + 1], normalised[confident]]).mean(dim=0))
    prototypes_tensor = torch.nn.functional.normalize(torch.stack(prototypes), dim=1)
    scale = head.weight.norm(dim=1).mean()
    return HeadState(prototypes_tensor * scale, torch.zeros_like(head.bias))


def shot(
    features: Tensor,
    head: HeadState,
    *,
    steps: int = SHOT_STEPS,
    learning_rate: float = SHOT_LEARNING_RATE,
    diversity: float = SHOT_DIVERSITY,
    seed: int = SEED,
) -> HeadState:
    """SHOT's information maximisation (Liang, Hu and Feng 2020) on the last layer only: confident predictions
    (low entropy per image) that still use every class (high entropy of the mean prediction)."""
    torch.manual_seed(seed)
    weight = head.weight.clone().requires_grad_(True)
    bias = head.bias.clone().requires_grad_(True)
    features = features.double()
    optimiser = torch.optim.Adam([weight, bias], lr=learning_rate)
    for _ in range(steps):
        probabilities = torch.softmax(features @ weight.T + bias, dim=1)
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1).mean()
        mean = probabilities.mean(dim=0)
        loss = entropy + diversity * (mean * mean.clamp_min(1e-12).log()).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return HeadState(weight.detach(), bias.detach())
