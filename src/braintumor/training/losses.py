"""Losses for imbalanced classes: class-weighted cross-entropy and multi-class focal loss.

The recipe picks one (``train.loss``), an exponent ``train.focal_gamma`` and per-class weights
(``train.class_weights``: ``none``, ``balanced`` from the training class counts as in scikit-learn's
``compute_class_weight``, or an explicit list in :data:`~braintumor.classes.CLASS_NAMES` order).
With the focal loss the class weights are its per-class ``alpha``.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> targets = torch.tensor([0, 1])
    >>> bool(torch.isclose(focal_loss(logits, targets, gamma=0.0), torch.nn.functional.cross_entropy(logits, targets)))
    True
    >>> [round(w, 4) for w in balanced_class_weights(torch.tensor([0, 0, 0, 1]), num_classes=2).tolist()]
    [0.6667, 2.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from braintumor.config import TrainConfig
from braintumor.errors import BrainTumorError


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., 2017), for ``[N, C]`` logits.

    ``reduction="mean"`` divides by the sum of the ``alpha_t`` (by ``N`` without alpha), exactly as
    :func:`torch.nn.functional.cross_entropy` does with ``weight``: with ``gamma=0`` the two are equal.
    """
    if gamma < 0:
        raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
    log_probabilities = F.log_softmax(logits, dim=1)
    log_p_true = log_probabilities.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    # (1 - p)^0 is 1 even where p == 1; torch.pow(0, 0) == 1, so gamma = 0 is plain cross-entropy.
    modulating = torch.pow((1.0 - log_p_true.exp()).clamp(min=0.0), gamma)
    losses = -modulating * log_p_true
    weights = alpha.to(logits.dtype)[targets.long()] if alpha is not None else torch.ones_like(losses)
    losses = losses * weights
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.sum() / weights.sum()
    raise ValueError(f"unknown reduction {reduction!r}: use mean, sum or none")


def balanced_class_weights(labels: torch.Tensor | np.ndarray | Sequence[int], num_classes: int) -> torch.Tensor:
    """``n_samples / (n_classes * count_c)`` per class (scikit-learn's ``compute_class_weight("balanced")``).

    Raises :class:`BrainTumorError` when a class has no training image (its weight would be infinite).
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    counts = np.bincount(y, minlength=num_classes)
    missing = [index for index, count in enumerate(counts) if count == 0]
    if missing:
        raise BrainTumorError(
            f"class_weights: balanced needs training images of every class; class index(es) {missing} have none"
        )
    weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=y)
    return torch.as_tensor(weights, dtype=torch.float32)


def resolve_class_weights(
    train_config: TrainConfig, labels: torch.Tensor | np.ndarray | Sequence[int], num_classes: int
) -> torch.Tensor | None:
    """The per-class weights the recipe asks for, from the training labels; ``None`` for unweighted.

    Example:
        >>> import torch
        >>> from braintumor.config import TrainConfig
        >>> resolve_class_weights(TrainConfig(class_weights=[1, 2]), torch.tensor([0, 1]), 2).tolist()
        [1.0, 2.0]
    """
    choice = train_config.class_weights
    if choice == "none":
        return None
    if choice == "balanced":
        return balanced_class_weights(labels, num_classes)
    if len(choice) != num_classes:
        raise BrainTumorError(f"class_weights lists {len(choice)} weights but the model has {num_classes} classes")
    return torch.as_tensor(list(choice), dtype=torch.float32)


def training_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    train_config: TrainConfig,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The recipe's training loss: (weighted) cross-entropy with label smoothing, or focal loss."""
    if train_config.loss == "focal":
        return focal_loss(logits, targets, gamma=train_config.focal_gamma, alpha=class_weights)
    return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=train_config.label_smoothing)
