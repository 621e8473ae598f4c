"""The candidate search kept between audits: a grown or shrunk data set searches only what changed.

The search keeps, per query image and thumbnail channel, its ``k`` best reference images. Scores are
exact and ties rank by reference position (:class:`~braintumor.auditing.similarity.Candidates`), so when
references are added a kept query only meets the new ones and the two lists are merged; the result
is exactly what searching everything again gives. A query is searched again in full only when it is
new, or when one of its kept matches was removed (its next best is not known). The index is plain
JSON keyed by content digests: ``{"k", "references", "queries": {digest: [[[reference digest,
score, mirrored], ...] per channel]}}``.

Example:
    >>> rng = np.random.default_rng(0)
    >>> thumbs = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    >>> first = search_candidates(["q"], ["a", "b", "c"], thumbs[:1], thumbs[1:4], k=2)
    >>> grown = search_candidates(["q"], ["a", "b", "c", "d", "e"], thumbs[:1], thumbs[1:], k=2, stored=first.index)
    >>> again = search_candidates(["q"], ["a", "b", "c", "d", "e"], thumbs[:1], thumbs[1:], k=2)
    >>> grown.comparisons, again.comparisons  # the kept query met only the 2 new references
    (2, 5)
    >>> bool((grown.channels[0].indices == again.channels[0].indices).all())
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from braintumor.auditing.similarity import Candidates, merge_candidates, nearest_candidates
from braintumor.auditing.thumbnail_store import ThumbnailRows


@dataclass
class SearchResult:
    """Each channel's candidates for every query (indices into the reference list), the index to keep,
    and how much was searched: queries searched in full, queries extended with new references only,
    and query-reference comparisons per channel."""

    channels: list[Candidates]
    index: dict[str, Any]
    queries_searched: int
    queries_extended: int
    comparisons: int


def search_candidates(
    query_digests: Sequence[str],
    reference_digests: Sequence[str],
    query_thumbs: np.ndarray | ThumbnailRows,
    reference_thumbs: np.ndarray | ThumbnailRows,
    k: int,
    *,
    stored: dict[str, Any] | None = None,
    block: int = 4096,
    on_block: Callable[[], None] | None = None,
) -> SearchResult:
    """Every query's ``k`` best references per channel, reusing ``stored`` (a previous result's ``index``).

    Args:
        query_digests: the distinct queries' content digests, in ``query_thumbs`` order.
        reference_digests: the distinct references' content digests, in ``reference_thumbs`` order.
        query_thumbs: ``[N, C, S, S]`` uint8 thumbnails (C channels searched separately), or lazy rows of them.
        reference_thumbs: ``[M, C, S, S]`` uint8 thumbnails, or lazy rows of them (read a block at a time).
        k: matches kept per query and channel.
        stored: the index an earlier search returned, or None (an unusable one counts as none).
        block: reference images per matrix product.
        on_block: called after each reference block of a full search (progress bars).
    """
    position = {digest: i for i, digest in enumerate(reference_digests)}
    known = _usable(stored, k)
    old_references = set(known["references"]) if known else set()
    added = [i for i, digest in enumerate(reference_digests) if digest not in old_references]
    kept = [q for q, digest in enumerate(query_digests) if known and _still_valid(known, digest, position)]
    fresh = sorted(set(range(len(query_digests))) - set(kept))
    queries, references = _as_rows(query_thumbs), _as_rows(reference_thumbs)
    channels = []
    for channel in range(references.n_channels):
        query_channel, reference_channel = queries.channel(channel), references.channel(channel)
        full = nearest_candidates(
            query_channel.subset(fresh), reference_channel, k, reference_block=block, on_block=on_block
        )
        extended = _extend(known, [query_digests[q] for q in kept], channel, position, k)
        if added and kept:
            new = nearest_candidates(query_channel.subset(kept), reference_channel.subset(added), k)
            new.indices = np.asarray(added, np.int64)[new.indices]
            extended = merge_candidates([extended, new], k)
        channels.append(_assemble(len(query_digests), fresh, full, kept, extended, min(k, len(reference_digests))))
    index = _index_of(query_digests, reference_digests, channels, k)
    comparisons = len(fresh) * len(reference_digests) + len(kept) * len(added)
    return SearchResult(channels, index, len(fresh), len(kept), comparisons)


def _as_rows(thumbnails: np.ndarray | ThumbnailRows) -> ThumbnailRows:
    """Thumbnails as rows with channels: an array ``[N, C, S, S]`` (or ``[N, S, S]``, one channel) is wrapped."""
    if isinstance(thumbnails, ThumbnailRows):
        return thumbnails
    return ThumbnailRows(thumbnails if thumbnails.ndim == 4 else thumbnails[:, None])


def _usable(stored: dict[str, Any] | None, k: int) -> dict[str, Any] | None:
    """``stored`` if it has the expected shape and the same ``k``; anything else is searched afresh."""
    if not isinstance(stored, dict) or stored.get("k") != k:
        return None
    if not isinstance(stored.get("references"), list) or not isinstance(stored.get("queries"), dict):
        return None
    return stored


def _still_valid(known: dict[str, Any], digest: str, position: dict[str, int]) -> bool:
    """Whether a query's kept matches are all still references (else its next best is unknown)."""
    entry = known["queries"].get(digest)
    if not isinstance(entry, list) or not entry:
        return False
    expected = min(known["k"], len(known["references"]))
    try:
        return all(len(matches) == expected and all(m[0] in position for m in matches) for matches in entry)
    except (TypeError, IndexError, KeyError):
        return False


def _extend(
    known: dict[str, Any] | None, digests: Sequence[str], channel: int, position: dict[str, int], k: int
) -> Candidates:
    """The kept queries' stored matches in ``channel``, with indices into the current reference list."""
    width = min(k, len(known["references"])) if known else 0
    scores = np.full((len(digests), width), -np.inf)
    indices = np.zeros((len(digests), width), np.int64)
    mirrored = np.zeros((len(digests), width), bool)
    for row, digest in enumerate(digests):
        for rank, (reference, score, mirror) in enumerate(known["queries"][digest][channel]):
            scores[row, rank], indices[row, rank], mirrored[row, rank] = float(score), position[reference], bool(mirror)
    return Candidates(scores, indices, mirrored)


def _assemble(
    n_query: int, fresh: list[int], full: Candidates, kept: list[int], extended: Candidates, width: int
) -> Candidates:
    """One channel's candidates for all queries, from the full searches and the extended ones."""
    scores = np.full((n_query, width), -np.inf)
    indices = np.zeros((n_query, width), np.int64)
    mirrored = np.zeros((n_query, width), bool)
    for rows, part in ((fresh, full), (kept, extended)):
        if rows:
            scores[rows], indices[rows], mirrored[rows] = part.scores, part.indices, part.mirrored
    return Candidates(scores, indices, mirrored)


def _index_of(
    query_digests: Sequence[str], reference_digests: Sequence[str], channels: Sequence[Candidates], k: int
) -> dict[str, Any]:
    """The JSON-ready index of a finished search (float64 scores survive JSON exactly)."""
    queries = {
        digest: [
            [
                [reference_digests[int(i)], float(s), bool(m)]
                for s, i, m in zip(c.scores[q], c.indices[q], c.mirrored[q], strict=True)
            ]
            for c in channels
        ]
        for q, digest in enumerate(query_digests)
    }
    return {"k": k, "references": list(reference_digests), "queries": queries}
