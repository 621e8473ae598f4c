"""Image similarity for near copies: vectorised whole-image correlation, then an aligned check of fine detail.

It works on grey thumbnails only; which files are compared, and what is recorded, is
:mod:`braintumor.auditing.near_copies`.

Stage 1, candidates: every image is a 64x64 grey thumbnail, compared by normalised cross-correlation
(NCC), which ignores brightness and contrast changes (``a * x + b``) and barely moves under
re-encoding or resizing. Its covariance term is computed exactly from int8 dot products, so a pair
scores bitwise the same in any batch and a search can be extended with new references
(:func:`merge_candidates`). Queries meet every
reference image, plain and mirrored, in blocked matrix products that keep only the ``k`` best per
query, so memory stays bounded and 100k images are minutes of BLAS, not a Python loop. The caller
runs it on two thumbnails per image: the whole frame and the head's bounding box (:func:`content_box`),
where padded or cropped copies line up again.

Stage 2, verification: whole-image NCC alone cannot tell a cropped or padded copy (0.71-0.95 on the
Sartaj data) from an adjacent slice of the same scan (up to 0.97). So each candidate pair is aligned
(an axis-aligned scale and shift, fitted in one batch for all pairs by gradient ascent on the NCC of
blurred 32 px images from two starts, then refined at 64 px where it matters) and then scored by the
NCC of the fine detail (image minus its Gaussian blur) at 128 px over the overlap. A copy keeps its
detail after alignment, a different slice does not: see ``docs/audit.md`` for the pairs on both sides
of the threshold.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> reference = rng.integers(0, 256, (5, 64, 64), dtype=np.uint8)
    >>> query = reference[[3]][:, :, ::-1]  # a mirrored copy of reference image 3
    >>> found = nearest_candidates(query, reference, k=2)
    >>> int(found.indices[0, 0]), bool(found.mirrored[0, 0]), round(float(found.scores[0, 0]), 3)
    (3, True, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from braintumor.auditing.thumbnail_store import ThumbnailRows
from braintumor.runtime import one_thread

THUMBNAIL_SIZE = 64
DETAIL_SIZE = 128
# Query thumbnails compared with the references at a time.
QUERY_BLOCK = 2048


@dataclass(frozen=True)
class FitStage:
    """One gradient-ascent stage: image size, blur (in 128 px units), steps and starting learning rate."""

    size: int
    sigma: float
    steps: int
    learning_rate: float


# Coarse: from two starts, on heavily blurred 32 px images (a wide basin). Fine: only pairs that the
# coarse fit leaves between REFINE_FROM and SKIP_FIT_ABOVE, on 64 px images with small steps: half a
# pixel of misalignment at 128 px costs a true copy about 0.07 of detail NCC.
COARSE_FIT = FitStage(size=32, sigma=3.0, steps=40, learning_rate=0.02)
FINE_FIT = FitStage(size=64, sigma=1.5, steps=40, learning_rate=0.004)
REFINE_FROM = 0.7
# The shared part must cover at least half of one of the two images.
MIN_OVERLAP = 0.5
# Blur widths in 128 px units: the detail is what a 2 px blur removes; the fit sees a 3 px blur.
DETAIL_SIGMA = 2.0
# Unaligned detail NCC this high is a copy whatever the threshold; fitting could only raise it.
SKIP_FIT_ABOVE = 0.95


@dataclass
class Candidates:
    """The ``k`` most correlated reference images per query (best first); ``-inf`` pads missing ones.

    Scores are exact: the same pair scores bitwise the same in any batch, block or later update, and
    equal scores rank by reference index (lowest first), so a search can be extended with new
    references (:func:`merge_candidates`) and give exactly what a search of everything gives.
    """

    scores: np.ndarray
    indices: np.ndarray
    mirrored: np.ndarray


def normalise_thumbnails(thumbnails: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Flatten ``[N, S, S]`` thumbnails to zero-mean, unit-norm float rows (flat images become zeros).

    Args:
        thumbnails: ``[N, S, S]`` grey images; the dot product of two rows is then their NCC.
    """
    rows = torch.as_tensor(np.ascontiguousarray(thumbnails)).reshape(len(thumbnails), -1).float()
    rows = rows - rows.mean(dim=1, keepdim=True)
    norms = rows.norm(dim=1, keepdim=True)
    # A flat image has no structure to match; a zero row correlates 0 with everything.
    return torch.where(norms > 1e-3, rows / norms.clamp_min(1e-3), torch.zeros_like(rows))


@dataclass
class _IntegerRows:
    """uint8 thumbnails as int8 rows (pixel - 128), their sums and ``sqrt(n * sum(x^2) - sum(x)^2)``.

    NCC does not change when every pixel is shifted by the same amount, and int8 rows let the dot
    products run on the CPU's integer matrix units (exact, and several times faster than float BLAS).
    """

    rows: torch.Tensor
    sums: torch.Tensor
    spread_sqrt: torch.Tensor

    @classmethod
    def of(cls, thumbnails: np.ndarray) -> _IntegerRows:
        flat = torch.from_numpy(np.ascontiguousarray(thumbnails).reshape(len(thumbnails), -1))
        rows = (flat.to(torch.int16) - 128).to(torch.int8)
        wide = rows.to(torch.int32)
        n, sums = rows.shape[1], wide.sum(dim=1, dtype=torch.int64)
        spread = (wide * wide).sum(dim=1, dtype=torch.int64) * n - sums * sums
        return cls(rows, sums.double(), spread.double().sqrt())


def _integer_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` of int8 rows, exact, as int32 (128 * 128 * 4096 is far below 2**31)."""
    try:
        return torch._int_mm(a, b.T)
    except (AttributeError, RuntimeError):
        # Builds without the int8 kernel: float64 holds these integer sums exactly in any order.
        return (a.double() @ b.double().T).to(torch.int32)


def _exact_ncc(query: _IntegerRows, reference: _IntegerRows) -> torch.Tensor:
    """``[N, M]`` float64 NCC of uint8 rows, bitwise independent of the batch (flat images correlate 0).

    The covariance term is an exact integer (below 2**53, so float64 holds it and its parts exactly);
    the division is one correctly rounded operation per element.
    """
    n = query.rows.shape[1]
    centred = torch.addr(_integer_dot(query.rows, reference.rows).double() * n, query.sums, reference.sums, alpha=-1)
    scale = torch.outer(query.spread_sqrt, reference.spread_sqrt)
    return torch.where(scale > 0, centred / scale.clamp_min(1.0), 0.0)


def merge_candidates(parts: Sequence[Candidates], k: int) -> Candidates:
    """The ``k`` best of several searches of the same queries against disjoint references.

    Ranks by score, then by reference index (lowest first): the order :func:`nearest_candidates`
    uses, so merging a search of old references with one of new ones equals one search of all.

    Args:
        parts: candidates whose ``indices`` already point into one common reference list.
        k: matches kept per query.

    Example:
        >>> a = Candidates(np.array([[0.9, 0.5]]), np.array([[4, 1]]), np.array([[False, False]]))
        >>> b = Candidates(np.array([[0.5]]), np.array([[0]]), np.array([[True]]))
        >>> merged = merge_candidates([a, b], 2)
        >>> merged.indices.tolist(), merged.mirrored.tolist()
        ([[4, 0]], [[False, True]])
    """
    scores = np.concatenate([part.scores for part in parts], axis=1)
    indices = np.concatenate([part.indices for part in parts], axis=1)
    mirrored = np.concatenate([part.mirrored for part in parts], axis=1)
    # -inf padding sorts last whatever its index.
    order = np.lexsort((np.where(np.isfinite(scores), indices, np.iinfo(np.int64).max), -scores), axis=-1)[:, :k]
    return Candidates(
        np.take_along_axis(scores, order, 1),
        np.take_along_axis(indices, order, 1),
        np.take_along_axis(mirrored, order, 1),
    )


def nearest_candidates(
    query: np.ndarray | ThumbnailRows,
    reference: np.ndarray | ThumbnailRows,
    k: int = 3,
    *,
    query_block: int = QUERY_BLOCK,
    reference_block: int = 4096,
    on_block: Callable[[], None] | None = None,
) -> Candidates:
    """Top-``k`` whole-image NCC matches in ``reference`` for each ``query`` thumbnail, mirrored too.

    Both sides are taken one block at a time (slicing a :class:`ThumbnailRows` reads that block from
    disk), so memory is ``O(query_block + reference_block)``, never ``O(query x reference)`` nor
    ``O(reference)``. Scores are exact and ties go to the lowest reference index (see :class:`Candidates`).

    Args:
        query: ``[N, S, S]`` uint8 grey thumbnails to find matches for.
        reference: ``[M, S, S]`` uint8 grey thumbnails to search.
        k: matches kept per query (at most ``M``).
        query_block: queries per matrix product.
        reference_block: reference images taken at a time.
        on_block: called after each reference block of each query block (progress bars).
    """
    n_query, n_reference = len(query), len(reference)
    k = max(0, min(k, n_reference))
    if n_query == 0 or k == 0:
        shape = (n_query, 0)
        return Candidates(np.full(shape, -math.inf), np.zeros(shape, np.int64), np.zeros(shape, bool))
    parts = []
    with torch.no_grad():
        for q0 in range(0, n_query, query_block):
            thumbs = np.asarray(query[q0 : q0 + query_block])
            plain = _IntegerRows.of(thumbs)
            # NCC(mirror(q), r) == NCC(q, mirror(r)): mirroring the query side is enough.
            mirror = _IntegerRows.of(thumbs[:, :, ::-1])
            width = len(thumbs), 0
            best = Candidates(np.full(width, -math.inf), np.zeros(width, np.int64), np.zeros(width, bool))
            for start in range(0, n_reference, reference_block):
                block = _IntegerRows.of(np.asarray(reference[start : start + reference_block]))
                best = merge_candidates([best, _block_top(plain, mirror, block, start, k)], k)
                if on_block is not None:
                    on_block()
            parts.append(best)
    return Candidates(*(np.concatenate([getattr(p, name) for p in parts]) for name in _FIELDS))


_FIELDS = ("scores", "indices", "mirrored")


def _block_top(plain: _IntegerRows, mirror: _IntegerRows, block: _IntegerRows, start: int, k: int) -> Candidates:
    """The ``k`` best of one reference block for some queries; equal scores rank by index (lowest first)."""
    plain_ncc, mirror_ncc = _exact_ncc(plain, block), _exact_ncc(mirror, block)
    use_mirror = mirror_ncc > plain_ncc
    combined = torch.where(use_mirror, mirror_ncc, plain_ncc)
    k = min(k, combined.shape[1])
    # topk's choice among equal scores is unspecified: take everything tied with the k-th best, then
    # rank those few by (score, index) with a sort whose order is defined.
    kth = combined.topk(k, dim=1).values[:, -1:]
    rows, cols = torch.nonzero(combined >= kth, as_tuple=True)
    rows_np, cols_np = rows.numpy(), cols.numpy()
    scores = combined[rows, cols].numpy()
    order = np.lexsort((cols_np, -scores, rows_np))
    rows_np, cols_np, scores = rows_np[order], cols_np[order], scores[order]
    # Each row's first k after the sort (every row has at least k entries).
    first = np.searchsorted(rows_np, np.arange(len(combined)))
    take = (first[:, None] + np.arange(k)[None, :]).reshape(-1)
    shape = (len(combined), k)
    mirrored = use_mirror[rows[order][take], cols[order][take]].numpy().reshape(shape)
    return Candidates(scores[take].reshape(shape), (cols_np[take] + start).reshape(shape), mirrored)


@dataclass
class PairCheck:
    """Aligned detail similarity of candidate pairs.

    ``transform`` holds ``(scale_x, scale_y, shift_x, shift_y)`` mapping query coordinates to reference
    coordinates (both in ``[-1, 1]``); ``aligned`` is False where no fit was needed (identity).
    """

    detail_ncc: np.ndarray
    overlap: np.ndarray
    aligned: np.ndarray
    transform: np.ndarray


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    kernel = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def _warp(images: torch.Tensor, transform: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``images`` (the reference side) on the query's ``size`` x ``size`` grid; returns (warped, inside)."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    x = transform[:, 0, None, None] * grid_x + transform[:, 2, None, None]
    y = transform[:, 1, None, None] * grid_y + transform[:, 3, None, None]
    warped = F.grid_sample(
        images, torch.stack([x, y], dim=-1), mode="bilinear", padding_mode="border", align_corners=False
    )
    inside = ((x.abs() <= 1) & (y.abs() <= 1)).float()[:, None]
    return warped, inside


def _masked_ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum(dim=(1, 2, 3)).clamp_min(1.0)
    mean_a = (a * mask).sum(dim=(1, 2, 3)) / count
    mean_b = (b * mask).sum(dim=(1, 2, 3)) / count
    da = (a - mean_a[:, None, None, None]) * mask
    db = (b - mean_b[:, None, None, None]) * mask
    denominator = torch.sqrt((da * da).sum(dim=(1, 2, 3)) * (db * db).sum(dim=(1, 2, 3)))
    return torch.where(denominator > 1e-6, (da * db).sum(dim=(1, 2, 3)) / denominator.clamp_min(1e-6), 0.0)


def _overlap(inside: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Share of the smaller image that the other one covers (query share, or reference share)."""
    query_share = inside.mean(dim=(1, 2, 3))
    reference_share = query_share * transform[:, 0].abs() * transform[:, 1].abs()
    return torch.maximum(query_share, reference_share.clamp(max=1.0))


def content_box(grey: np.ndarray) -> tuple[float, float, float, float] | None:
    """The bright content (the head) of a grey image as ``(x0, y0, x1, y1)`` fractions, or None if there is none.

    A pixel is bright when it is above the darkest one by a tenth of the range (so an intensity offset
    does not make the background bright); a row or column belongs to the box when more than 2% of its
    pixels are bright, so text, markers and thin frame lines in the background do not stretch it.

    Args:
        grey: a ``[H, W]`` grey image.
    """
    low, high = float(grey.min()), float(grey.max())
    if high - low < 10:
        return None
    mask = grey > low + 0.1 * (high - low)
    rows, cols = mask.mean(axis=1) > 0.02, mask.mean(axis=0) > 0.02
    if rows.sum() < 2 or cols.sum() < 2:
        return None
    height, width = grey.shape
    y0, y1 = int(rows.argmax()), height - int(rows[::-1].argmax())
    x0, x1 = int(cols.argmax()), width - int(cols[::-1].argmax())
    return x0 / width, y0 / height, x1 / width, y1 / height


def _content_box(images: torch.Tensor) -> torch.Tensor:
    """``(x0, y0, x1, y1)`` in [-1, 1] of the head of each ``[P, 1, S, S]`` image (rules of :func:`content_box`)."""
    size = images.shape[-1]
    low, high = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
    mask = (images > low + 0.1 * (high - low)) & (high - low >= 10)
    # A row or column belongs to the head when more than 2% of it is bright (ignores text and dots).
    rows = (mask.float().mean(dim=3)[:, 0] > 0.02).int()
    cols = (mask.float().mean(dim=2)[:, 0] > 0.02).int()
    first_row, last_row = rows.argmax(dim=1), size - 1 - rows.flip(1).argmax(dim=1)
    first_col, last_col = cols.argmax(dim=1), size - 1 - cols.flip(1).argmax(dim=1)
    boxes = torch.stack([first_col, first_row, last_col + 1, last_row + 1], dim=1).float() / size * 2 - 1
    found = (rows.sum(dim=1) >= 2) & (cols.sum(dim=1) >= 2)
    return torch.where(found[:, None], boxes, torch.tensor([[-1.0, -1.0, 1.0, 1.0]]))


def _box_transform(query_box: torch.Tensor, reference_box: torch.Tensor) -> torch.Tensor:
    """The scale and shift that map the query's content box onto the reference's."""
    scale_x = (reference_box[:, 2] - reference_box[:, 0]) / (query_box[:, 2] - query_box[:, 0])
    scale_y = (reference_box[:, 3] - reference_box[:, 1]) / (query_box[:, 3] - query_box[:, 1])
    shift_x = reference_box[:, 0] - scale_x * query_box[:, 0]
    shift_y = reference_box[:, 1] - scale_y * query_box[:, 1]
    return torch.stack([scale_x, scale_y, shift_x, shift_y], dim=1).clamp(-2.5, 2.5)


def _fit(query: torch.Tensor, reference: torch.Tensor, start: torch.Tensor, stage: FitStage) -> torch.Tensor:
    """Gradient ascent on the masked NCC of blurred, downsized images; all pairs in one batch."""
    small_query = F.interpolate(_blur(query, stage.sigma), size=(stage.size, stage.size), mode="area")
    small_reference = F.interpolate(_blur(reference, stage.sigma), size=(stage.size, stage.size), mode="area")
    transform = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([transform], lr=stage.learning_rate)
    # Adam's steps stay near the learning rate; decaying it lets the last steps settle to a fraction of a pixel.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, stage.steps, eta_min=stage.learning_rate * 0.05)
    for _ in range(stage.steps):
        warped, inside = _warp(small_reference, transform, stage.size)
        similarity = _masked_ncc(small_query, warped, inside)
        # Shrinking the overlap to a sliver could raise NCC: penalise overlaps under the minimum.
        loss = -(similarity - 2.0 * torch.relu(MIN_OVERLAP - _overlap(inside, transform))).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            transform[:, :2].clamp_(0.4, 2.5)
    return transform.detach()


def _detail_score(
    query_detail: torch.Tensor, reference_detail: torch.Tensor, transform: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    warped, inside = _warp(reference_detail, transform, query_detail.shape[-1])
    overlap = _overlap(inside, transform)
    score = _masked_ncc(query_detail, warped, inside)
    return torch.where(overlap >= MIN_OVERLAP, score, torch.full_like(score, -1.0)), overlap


def check_pairs(
    query: np.ndarray,
    reference: np.ndarray,
    *,
    skip_fit_above: float = SKIP_FIT_ABOVE,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> PairCheck:
    """Aligned fine-detail NCC of each ``(query[i], reference[i])`` pair of ``[P, 128, 128]`` uint8 images.

    The score is the best of the unaligned images and two fitted alignments; pairs whose unaligned
    score already reaches ``skip_fit_above`` are not fitted.

    Args:
        query: ``[P, 128, 128]`` uint8 grey images, the query side of each pair.
        reference: ``[P, 128, 128]`` uint8 grey images; mirror one before calling when its candidate was a
            mirrored match.
        skip_fit_above: unaligned detail NCC from which a pair is not fitted.
        batch_size: pairs scored at a time.
        on_batch: called with the number of pairs after each batch (progress bars).
    """
    n_pairs = len(query)
    detail_ncc = np.full(n_pairs, -1.0, dtype=np.float32)
    overlap = np.zeros(n_pairs, dtype=np.float32)
    aligned = np.zeros(n_pairs, dtype=bool)
    transform = np.tile(np.array([1.0, 1.0, 0.0, 0.0], dtype=np.float32), (n_pairs, 1))
    # Small tensor kernels on 32-128 px images: thread start-up costs more than it saves (4x slower on 2 busy cores).
    with one_thread():
        for start in range(0, n_pairs, batch_size):
            _check_batch(
                query,
                reference,
                start,
                min(start + batch_size, n_pairs),
                skip_fit_above,
                (detail_ncc, overlap, aligned, transform),
            )
            if on_batch is not None:
                on_batch(min(start + batch_size, n_pairs) - start)
    return PairCheck(detail_ncc, overlap, aligned, transform)


def _check_batch(
    query: np.ndarray,
    reference: np.ndarray,
    start: int,
    stop: int,
    skip_fit_above: float,
    outputs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Score pairs ``start:stop`` and write the results into ``outputs`` (detail NCC, overlap, aligned, transform)."""
    detail_ncc, overlap, aligned, transform = outputs
    q = torch.from_numpy(np.ascontiguousarray(query[start:stop])).float()[:, None]
    r = torch.from_numpy(np.ascontiguousarray(reference[start:stop])).float()[:, None]
    q_detail, r_detail = q - _blur(q, DETAIL_SIGMA), r - _blur(r, DETAIL_SIGMA)
    identity = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).repeat(len(q), 1)
    with torch.no_grad():
        best, best_overlap = _detail_score(q_detail, r_detail, identity)
    best_transform, best_aligned = identity.clone(), torch.zeros(len(q), dtype=torch.bool)

    def keep_better(todo: torch.Tensor, fitted: torch.Tensor) -> None:
        with torch.no_grad():
            score, fitted_overlap = _detail_score(q_detail[todo], r_detail[todo], fitted)
        better = score > best[todo]
        chosen = todo[better]
        best[chosen] = score[better]
        best_overlap[chosen] = fitted_overlap[better]
        best_transform[chosen] = fitted[better]
        best_aligned[chosen] = True

    todo = torch.nonzero(best < skip_fit_above).flatten()
    if len(todo):
        # Two starts: the frames coincide (resized copies) or the heads' boxes coincide (crops, padding).
        for start_transform in (identity[todo], _box_transform(_content_box(q[todo]), _content_box(r[todo]))):
            keep_better(todo, _fit(q[todo], r[todo], start_transform, COARSE_FIT))
    todo = torch.nonzero((best >= REFINE_FROM) & (best < skip_fit_above)).flatten()
    if len(todo):
        keep_better(todo, _fit(q[todo], r[todo], best_transform[todo], FINE_FIT))
    detail_ncc[start:stop] = best.numpy()
    overlap[start:stop] = best_overlap.numpy()
    aligned[start:stop] = best_aligned.numpy()
    transform[start:stop] = best_transform.numpy()
