"""Cheap image evidence that an input looks like the grey, dark-background brain MRI slices of Training.

Statistics are taken on the uint8 image the model sees (after the bundle's resizing, cropping and
intensity handling), so training, prediction, serving and ONNX measure the same thing.

Example:
    >>> import torch
    >>> grey = torch.full((1, 3, 32, 32), 40, dtype=torch.uint8)
    >>> colour = torch.zeros((1, 3, 32, 32), dtype=torch.uint8); colour[:, 0] = 255
    >>> stats = image_evidence(torch.cat([grey, colour]))
    >>> dict(zip(EVIDENCE_NAMES, stats[1].tolist()))["colourfulness"], float(stats[0, 0])
    (1.0, 0.0)
"""

from __future__ import annotations

import torch

EVIDENCE_NAMES = ("colourfulness", "mean_grey", "grey_std", "dark_fraction", "border_grey")
# A pixel darker than this (of 255) is background; the border is the outer 6% of each side.
DARK_LEVEL = 25
BORDER_SHARE = 0.06
MIN_SPAN = 0.05
SUBSAMPLE_FROM = 64


def image_evidence(images: torch.Tensor) -> torch.Tensor:
    """Per image, the statistics named in :data:`EVIDENCE_NAMES`, each in [0, 1].

    Args:
        images: ``[N, 3, S, S]`` uint8 images at the model's input size. From 64 px up every second row
            and column is read: the statistics are the same to a few thousandths at a quarter of the cost.

    Returns:
        ``[N, len(EVIDENCE_NAMES)]`` float32: mean channel spread (max - min), mean and standard deviation
        of the grey level, share of dark pixels, and mean grey level of the border frame.
    """
    if images.shape[-1] >= SUBSAMPLE_FROM:
        images = images[..., ::2, ::2]
    colourfulness = (images.amax(dim=1) - images.amin(dim=1)).float().mean(dim=(1, 2)) / 255.0
    grey = images.float().sum(dim=1) / (3 * 255.0)
    border = max(1, round(grey.shape[-1] * BORDER_SHARE))
    frame = torch.ones_like(grey[0], dtype=torch.bool)
    frame[border:-border, border:-border] = False
    return torch.stack(
        [
            colourfulness,
            grey.mean(dim=(1, 2)),
            grey.std(dim=(1, 2)),
            (grey < DARK_LEVEL / 255.0).float().mean(dim=(1, 2)),
            grey[:, frame].mean(dim=1),
        ],
        dim=1,
    )


def evidence_sides(evidence: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per statistic, how far each image lies above ``high`` and below ``low``, in units of that range (0 inside).

    Args:
        evidence: ``[N, K]`` statistics from :func:`image_evidence`.
        low: ``[K]`` lower bounds (the Training images' low quantile).
        high: ``[K]`` upper bounds.

    Returns:
        ``above`` and ``below``, each ``[N, K]`` and at least 0.

    Example:
        >>> above, below = evidence_sides(torch.tensor([[0.5, -0.5], [2.0, 0.5]]), torch.zeros(2), torch.ones(2))
        >>> above.tolist(), below.tolist()
        ([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.5], [0.0, 0.0]])
    """
    # At least 5% of the full range: a statistic that hardly varies in Training (colour) must not flag a faint tint.
    span = (high - low).clamp_min(MIN_SPAN)
    return (evidence - high).clamp_min(0.0) / span, (low - evidence).clamp_min(0.0) / span


def evidence_distance(evidence: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """How far each image's statistics fall outside ``[low, high]``, in units of that range; max over statistics.

    Args:
        evidence: ``[N, K]`` statistics from :func:`image_evidence`.
        low: ``[K]`` lower bounds (the Training images' low quantile).
        high: ``[K]`` upper bounds.

    Example:
        >>> evidence_distance(torch.tensor([[0.5, 0.5], [0.5, 2.0]]), torch.zeros(2), torch.ones(2)).tolist()
        [0.0, 1.0]
    """
    above, below = evidence_sides(evidence, low, high)
    return torch.maximum(above, below).amax(dim=1)
