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

Beside these five, :func:`image_evidence` measures a white bone ring (:data:`BONE_RING_NAMES`): a head CT in a
brain window shows the skull as a saturated white ring with brain tissue right inside it. An MR slice never
shows bone bright (cortical bone gives no MR signal): where its edge is white, that is scalp fat, with the dark
band of the skull just inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EVIDENCE_NAMES = ("colourfulness", "mean_grey", "grey_std", "dark_fraction", "border_grey")
# A pixel darker than this (of 255) is background; the border is the outer 6% of each side.
DARK_LEVEL = 25
BORDER_SHARE = 0.06
MIN_SPAN = 0.05
SUBSAMPLE_FROM = 64
# The bone ring's statistics, after EVIDENCE_NAMES in image_evidence's columns (see bone_ring_evidence).
BONE_RING_NAMES = ("white_share", "white_gap", "white_on_rim", "dark_inside_ring")
ALL_EVIDENCE_NAMES = EVIDENCE_NAMES + BONE_RING_NAMES
# White: at least this grey (saturated bone in a CT window, JPEG-rounded); near white: from NEAR_WHITE up.
WHITE, NEAR_WHITE = 0.94, 0.7
# The rim: head pixels within this many pixels of the head's edge (of the 2x-subsampled image: about 3% of a side).
RIM_PIXELS = 4
# "Just inside": samples 2-6 pixels further towards the head's centre; dark there: below this grey.
INWARD_PIXELS = (2, 3, 4, 5, 6)
DARK_INSIDE = 0.15
# The rim's statistics are measured only where at least this share of the head is white (0 elsewhere): far below
# any head CT's skull, and it spares the typical MR slice the costlier part.
MEASURE_RING_FROM = 0.02


def image_evidence(images: torch.Tensor) -> torch.Tensor:
    """Per image, the statistics named in :data:`ALL_EVIDENCE_NAMES`, each in [0, 1].

    Args:
        images: ``[N, 3, S, S]`` uint8 images at the model's input size. From 64 px up every second row
            and column is read: the statistics are the same to a few thousandths at a quarter of the cost.

    Returns:
        ``[N, len(ALL_EVIDENCE_NAMES)]`` float32: mean channel spread (max - min), mean and standard deviation
        of the grey level, share of dark pixels, and mean grey level of the border frame; then the bone ring's
        statistics (:func:`bone_ring_evidence`).
    """
    if images.shape[-1] >= SUBSAMPLE_FROM:
        images = images[..., ::2, ::2]
    colourfulness = (images.amax(dim=1) - images.amin(dim=1)).float().mean(dim=(1, 2)) / 255.0
    grey = images.float().sum(dim=1) / (3 * 255.0)
    border = max(1, round(grey.shape[-1] * BORDER_SHARE))
    frame = torch.ones_like(grey[0], dtype=torch.bool)
    frame[border:-border, border:-border] = False
    first = torch.stack(
        [
            colourfulness,
            grey.mean(dim=(1, 2)),
            grey.std(dim=(1, 2)),
            (grey < DARK_LEVEL / 255.0).float().mean(dim=(1, 2)),
            grey[:, frame].mean(dim=1),
        ],
        dim=1,
    )
    return torch.cat([first, bone_ring_evidence(grey)], dim=1)


def _rim(head: torch.Tensor) -> torch.Tensor:
    """Head pixels within :data:`RIM_PIXELS` of the head's edge (the image's edge counts as one): ``head``
    [N, H, W] (float 0/1) minus its erosion by a square of side ``2 * RIM_PIXELS + 1``.

    The erosion keeps the pixels whose whole window is head, counted with an integral image: a tenth of the
    cost of a max pooling over the same window on a CPU.
    """
    radius, side = RIM_PIXELS, 2 * RIM_PIXELS + 1
    table = F.pad(head, (radius + 1, radius, radius + 1, radius)).cumsum(dim=1).cumsum(dim=2)
    window = table[:, side:, side:] - table[:, :-side, side:] - table[:, side:, :-side] + table[:, :-side, :-side]
    return (head > 0) & (window < side * side - 0.5)


def _dark_inside(grey: torch.Tensor, head: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """Per image, how many ``ring`` pixels have a dark pixel (below :data:`DARK_INSIDE`) :data:`INWARD_PIXELS`
    further towards the head's centroid (nearest pixel); only the ring's pixels are visited."""
    count, height, width = grey.shape
    found = torch.zeros(count)
    image, row, col = torch.nonzero(ring, as_tuple=True)
    if len(image) == 0:
        return found
    rows = torch.arange(height, dtype=torch.float32)[None, :, None]
    cols = torch.arange(width, dtype=torch.float32)[None, None, :]
    area = head.sum(dim=(1, 2)).clamp_min(1)
    centre_row, centre_col = (head * rows).sum(dim=(1, 2)) / area, (head * cols).sum(dim=(1, 2)) / area
    d_row, d_col = centre_row[image] - row, centre_col[image] - col
    length = torch.sqrt(d_row**2 + d_col**2).clamp_min(1e-6)
    darkest = torch.full((len(image),), 2.0)
    for step in INWARD_PIXELS:
        at_row = (row + step * d_row / length).round().long().clamp(0, height - 1)
        at_col = (col + step * d_col / length).round().long().clamp(0, width - 1)
        darkest = torch.minimum(darkest, grey[image, at_row, at_col])
    return found.index_add_(0, image, (darkest < DARK_INSIDE).float())


def bone_ring_evidence(grey: torch.Tensor) -> torch.Tensor:
    """Per image, the statistics named in :data:`BONE_RING_NAMES`, each in [0, 1].

    Args:
        grey: ``[N, H, W]`` grey levels in [0, 1] (the subsampled model input of :func:`image_evidence`).

    Returns:
        ``[N, 4]``: the share of the head (pixels above the dark level) that is white; white against white plus
        near white (saturated bone leaves a gap below white, the bright tissues of MR do not); the share of the
        white pixels on the head's rim; and the share of the rim's white pixels with a dark pixel just inside
        (the skull of an MR slice under its bright scalp fat). The last two are 0 where less than
        :data:`MEASURE_RING_FROM` of the head is white.

    Example:
        >>> grey = torch.zeros(1, 64, 64)
        >>> yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        >>> radius = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2).sqrt()
        >>> grey[0][radius < 28] = 1.0  # a white skull ring ...
        >>> grey[0][radius < 25] = 0.45  # ... around grey brain: a CT in a brain window
        >>> [round(v, 2) for v in bone_ring_evidence(grey)[0].tolist()]
        [0.2, 1.0, 1.0, 0.0]
    """
    head = grey > DARK_LEVEL / 255.0
    area = head.sum(dim=(1, 2)).clamp_min(1)
    white = (grey >= WHITE) & head
    white_count = white.sum(dim=(1, 2)).float()
    bright_count = ((grey >= NEAR_WHITE) & head).sum(dim=(1, 2))
    statistics = torch.zeros(len(grey), len(BONE_RING_NAMES))
    statistics[:, 0] = white_count / area
    statistics[:, 1] = white_count / bright_count.clamp_min(1)
    # The rim and the inward look cost more: only where a ring could be there at all.
    measured = torch.nonzero(statistics[:, 0] >= MEASURE_RING_FROM).flatten()
    if len(measured):
        head_float = head[measured].float()
        white_rim = white[measured] & _rim(head_float)
        rim_count = white_rim.sum(dim=(1, 2)).float()
        statistics[measured, 2] = rim_count / white_count[measured].clamp_min(1)
        statistics[measured, 3] = _dark_inside(grey[measured], head_float, white_rim) / rim_count.clamp_min(1)
    return statistics


def bone_ring_score(evidence: torch.Tensor, rule: list[float] | tuple[float, ...]) -> torch.Tensor:
    """How clearly each image shows a CT's white bone ring: above 1 when every condition of ``rule`` holds.

    Args:
        evidence: ``[N, K]`` from :func:`image_evidence` (the bone ring's statistics are its last four columns;
            with fewer columns the score is 0).
        rule: the least white share, white gap and white-on-rim share, and the largest dark-inside share
            (:data:`~braintumor.guard.defaults.BONE_RING_RULE`).

    Returns:
        ``[N]``: the smallest of each statistic over its bound (for the dark-inside share, of ``1 - share`` over
        ``1 - bound``), so 1 is the rule's edge.

    Example:
        >>> ct, bright_fat = [0.0] * 5 + [0.2, 0.8, 0.9, 0.1], [0.0] * 5 + [0.2, 0.8, 0.9, 0.6]
        >>> [round(v, 3) for v in bone_ring_score(torch.tensor([ct, bright_fat]), (0.1, 0.5, 0.5, 0.25)).tolist()]
        [1.2, 0.533]
    """
    if evidence.shape[1] < len(ALL_EVIDENCE_NAMES):
        return torch.zeros(len(evidence))
    white_share, white_gap, on_rim, dark_inside = evidence[:, len(EVIDENCE_NAMES) :].float().unbind(dim=1)
    least_share, least_gap, least_rim, most_dark = rule
    ratios = [white_share / least_share, white_gap / least_gap, on_rim / least_rim]
    ratios.append((1 - dark_inside) / (1 - most_dark))
    return torch.stack(ratios, dim=1).amin(dim=1)


def evidence_sides(evidence: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per statistic, how far each image lies above ``high`` and below ``low``, in units of that range (0 inside).

    Args:
        evidence: ``[N, K']`` statistics from :func:`image_evidence`; the first ``K`` columns are judged.
        low: ``[K]`` lower bounds (the Training images' low quantile).
        high: ``[K]`` upper bounds.

    Returns:
        ``above`` and ``below``, each ``[N, K]`` and at least 0.

    Example:
        >>> above, below = evidence_sides(torch.tensor([[0.5, -0.5], [2.0, 0.5]]), torch.zeros(2), torch.ones(2))
        >>> above.tolist(), below.tolist()
        ([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.5], [0.0, 0.0]])
    """
    # Only the columns the bounds cover: image_evidence's later columns (the bone ring) are scored apart.
    evidence = evidence[:, : len(low)]
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
