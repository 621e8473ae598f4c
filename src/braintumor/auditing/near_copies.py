"""Near copies across splits: which files are compared, the candidate search and check, and what is recorded.

Every distinct image of a query split (Validation, Testing) without a byte-identical Training copy is
searched against every distinct Training image on two thumbnails (:mod:`braintumor.auditing.similarity`);
candidates over :data:`~braintumor.auditing.constants.CANDIDATE_FLOOR` are checked on aligned 128 px detail,
and a pair scoring at least the threshold is a near copy. Connected pairs form groups.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.auditing.cache import AuditCache, PairValue
from braintumor.auditing.candidate_index import search_candidates
from braintumor.auditing.constants import CANDIDATE_FLOOR, CHECK_CHUNK, REFERENCE_SPLIT
from braintumor.auditing.scan import FileRecord, detail_thumbnail, file_entry
from braintumor.auditing.similarity import (
    DETAIL_SIZE,
    QUERY_BLOCK,
    Candidates,
    PairCheck,
    check_pairs,
    normalise_thumbnails,
)
from braintumor.auditing.thumbnail_store import ThumbnailRows, ThumbnailStore
from braintumor.progress import progress_bar

# Reference thumbnails normalised and searched at a time (for each block of queries); the progress bar
# counts these blocks.
REFERENCE_BLOCK = 4096
# The one row of the cache's ``searches`` table: the candidate index of the last audit.
SEARCH_INDEX_KEY = "candidate-index"
# Pairs checked between cache commits (one check_pairs batch, a few seconds on 2 cores).
CACHED_CHECK_CHUNK = 256


@dataclass
class _CandidatePairs:
    """Candidate pairs as record indices, with the mirroring chosen and both channels' whole-image NCC."""

    query: list[int]
    reference: list[int]
    mirrored: np.ndarray
    channel_ncc: np.ndarray


def find_near_copies(
    root: Path,
    records: Sequence[FileRecord],
    thumbnails: np.ndarray | ThumbnailStore,
    rows: np.ndarray,
    *,
    threshold: float,
    candidates: int,
    workers: int,
    show_progress: bool,
    cache: AuditCache | None = None,
) -> dict[str, Any]:
    """Search every query split's distinct images against Training's distinct images; check the candidates.

    Args:
        root: the data root (without a cache, the check decodes candidate files again at 128 px).
        records: every file of the data set, as :func:`~braintumor.auditing.scan.read_all` returns them.
        thumbnails: the ``[N, 2, 64, 64]`` thumbnails (an array or the scan's store on disk).
        rows: each record's row in ``thumbnails`` (-1 when undecodable).
        threshold: aligned detail NCC from which a pair is a near copy.
        candidates: most similar Training images kept per query image and thumbnail.
        workers: threads decoding the candidates' files.
        show_progress: draw progress bars.
        cache: the audit cache (cached detail images and pair checks), or None to check every pair.
    """
    reference_ids, query_ids = _representatives(records, rows)
    result: dict[str, Any] = {
        "threshold": threshold,
        "pairs": [],
        "candidates": [],
        "queries_searched": len(query_ids),
        "reference_images": len(reference_ids),
    }
    if not query_ids or not reference_ids:
        return result
    started = time.perf_counter()
    # Lazy views: the search reads a block of thumbnails at a time from the store.
    query_thumbs = ThumbnailRows(thumbnails, rows[query_ids])
    reference_thumbs = ThumbnailRows(thumbnails, rows[reference_ids])
    found = _search_pairs(
        records, query_ids, reference_ids, query_thumbs, reference_thumbs, candidates, show_progress, cache
    )
    search_s = time.perf_counter() - started
    pairs = _CandidatePairs(
        query=[query_ids[q] for q in found["query"]],
        reference=[reference_ids[r] for r in found["reference"]],
        mirrored=found["mirrored"],
        channel_ncc=found["channel_ncc"],
    )
    started = time.perf_counter()
    checked = _check(root, records, pairs, workers, show_progress, cache)
    check_s = time.perf_counter() - started
    result["candidates"], result["pairs"] = _pair_entries(records, pairs, checked, threshold)
    searched = set(found["query"].tolist())
    # Queries whose best candidate in both channels was under the floor: nothing looked similar enough.
    unchecked = [records[query_ids[q]].path for q in range(len(query_ids)) if q not in searched]
    result.update(
        queries_without_candidates=unchecked,
        search_s=round(search_s, 2),
        check_s=round(check_s, 2),
        pairs_checked=len(pairs.query),
    )
    return result


def _search_pairs(
    records: Sequence[FileRecord],
    query_ids: Sequence[int],
    reference_ids: Sequence[int],
    query_thumbs: ThumbnailRows,
    reference_thumbs: ThumbnailRows,
    candidates: int,
    show_progress: bool,
    cache: AuditCache | None,
) -> dict[str, np.ndarray]:
    """The candidate pairs as arrays: query and reference positions, mirroring, both channels' NCC.

    The cache keeps the search's index: the next audit searches only new queries in full and meets
    kept queries with new references only (:mod:`braintumor.auditing.candidate_index`).
    """
    stored = cache.search_result(SEARCH_INDEX_KEY) if cache is not None else None
    with progress_bar(show_progress) as progress:
        blocks = -(-len(reference_thumbs) // REFERENCE_BLOCK) * -(-len(query_thumbs) // QUERY_BLOCK)
        task = progress.add_task("Near-copy search", total=2 * blocks)
        searched = search_candidates(
            [records[i].digest or "" for i in query_ids],
            [records[i].digest or "" for i in reference_ids],
            query_thumbs,
            reference_thumbs,
            candidates,
            stored=stored,
            block=REFERENCE_BLOCK,
            on_block=lambda: progress.advance(task),
        )
        # An incremental search runs fewer (or no) full blocks than a cold one: finish the bar when it is done.
        progress.update(task, completed=2 * blocks)
    if cache is not None:
        cache.store_search(SEARCH_INDEX_KEY, searched.index)
        cache.stats.queries_searched += searched.queries_searched
        cache.stats.queries_extended += searched.queries_extended
        cache.stats.search_comparisons += searched.comparisons
    found = _over_floor(searched.channels)
    keys = sorted(found)
    mirrored = np.array([found[key][1] for key in keys], dtype=bool)
    query = np.array([q for q, _ in keys], dtype=np.int64)
    reference = np.array([r for _, r in keys], dtype=np.int64)
    channel_ncc = _channel_ncc(query_thumbs.subset(query), reference_thumbs.subset(reference), mirrored)
    return {"query": query, "reference": reference, "mirrored": mirrored, "channel_ncc": channel_ncc}


def _representatives(records: Sequence[FileRecord], rows: np.ndarray) -> tuple[list[int], list[int]]:
    """Record indices of the decodable Training images and the query images to search, one per distinct content.

    Copies inside a split would only fill the top-k slots, so each digest is searched once.
    """
    reference_digests = {r.digest for r in records if r.split == REFERENCE_SPLIT and r.digest is not None}
    reference_ids, query_ids, seen = [], [], set()
    for index, record in enumerate(records):
        if rows[index] < 0 or record.digest in seen:
            continue
        if record.split == REFERENCE_SPLIT:
            seen.add(record.digest)
            reference_ids.append(index)
    for index, record in enumerate(records):
        if rows[index] < 0 or record.split == REFERENCE_SPLIT or record.digest in seen:
            continue
        # Queries with a byte-identical Training copy are already leaked; no need to search for them.
        if record.digest in reference_digests:
            continue
        seen.add(record.digest)
        query_ids.append(index)
    return reference_ids, query_ids


def _over_floor(channels: Sequence[Candidates]) -> dict[tuple[int, int], tuple[float, bool]]:
    """``(query, reference)`` positions -> (best whole-image NCC, mirrored) of every candidate over the floor.

    Two channels: the whole frame (resized, re-encoded, mirrored, intensity-changed copies) and the
    head's bounding box (padded or cropped copies, whose frames no longer line up).
    """
    found: dict[tuple[int, int], tuple[float, bool]] = {}
    for top in channels:
        for q, rank in zip(*np.nonzero(top.scores >= CANDIDATE_FLOOR), strict=True):
            key, score = (int(q), int(top.indices[q, rank])), float(top.scores[q, rank])
            if key not in found or score > found[key][0]:
                found[key] = (score, bool(top.mirrored[q, rank]))
    return found


def _channel_ncc(query_side: ThumbnailRows, reference_side: ThumbnailRows, mirrored: np.ndarray) -> np.ndarray:
    """Both channels' NCC of every pair (with the mirroring chosen), for the record and the plot."""
    channel_ncc = np.zeros((len(query_side), 2), dtype=np.float32)
    for start in range(0, len(query_side), REFERENCE_BLOCK):
        part = slice(start, start + REFERENCE_BLOCK)
        query, reference = query_side[part], reference_side[part]
        query = np.where(mirrored[part, None, None, None], query[..., ::-1], query)
        for channel in (0, 1):
            a = normalise_thumbnails(np.ascontiguousarray(query[:, channel]))
            b = normalise_thumbnails(np.ascontiguousarray(reference[:, channel]))
            channel_ncc[part, channel] = (a * b).sum(dim=1).numpy()
    return channel_ncc


def _check(
    root: Path,
    records: Sequence[FileRecord],
    pairs: _CandidatePairs,
    workers: int,
    show_progress: bool,
    cache: AuditCache | None = None,
) -> PairCheck:
    """Aligned detail NCC of every candidate pair, decoding the files at 128 px; cached pairs are not checked."""
    n_pairs = len(pairs.query)
    if not n_pairs:
        return PairCheck(*(np.zeros(0) for _ in range(4)))
    # A check depends only on the two contents and the mirroring (and is the same in any batch: a test
    # checks it), so it is cached under the two digests.
    keys = [
        (records[q].digest or "", records[r].digest or "", bool(m))
        for q, r, m in zip(pairs.query, pairs.reference, pairs.mirrored, strict=True)
    ]
    known = cache.pair_results(keys) if cache is not None else {}
    checked = PairCheck(
        np.full(n_pairs, -1.0, np.float32),
        np.zeros(n_pairs, np.float32),
        np.zeros(n_pairs, bool),
        np.zeros((n_pairs, 4), np.float32),
    )
    for p, key in enumerate(keys):
        if key in known:
            checked.detail_ncc[p], checked.overlap[p], checked.aligned[p], checked.transform[p] = known[key]
    todo = [p for p, key in enumerate(keys) if key not in known]
    # In chunks, so the 128 px images in memory stay bounded on 100k-image sets; smaller ones with a
    # cache, so an interrupted check keeps all but the last chunk.
    chunk_size = CHECK_CHUNK if cache is None else CACHED_CHECK_CHUNK
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(show_progress) as progress:
        task = progress.add_task("Checking candidate pairs", total=n_pairs, completed=n_pairs - len(todo))
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            needed = sorted({pairs.query[p] for p in chunk} | {pairs.reference[p] for p in chunk})
            details = _details(root, records, needed, pool, cache)
            query_detail = np.stack([details[pairs.query[p]] for p in chunk])
            reference_detail = np.stack(
                [
                    details[pairs.reference[p]][:, ::-1] if pairs.mirrored[p] else details[pairs.reference[p]]
                    for p in chunk
                ]
            )
            part = check_pairs(query_detail, reference_detail, on_batch=lambda n: progress.advance(task, n))
            for name in ("detail_ncc", "overlap", "aligned", "transform"):
                getattr(checked, name)[chunk] = getattr(part, name)
            if cache is not None:
                cache.store_pairs([(keys[p], _pair_value(checked, p)) for p in chunk])
    if cache is not None:
        cache.stats.pairs_reused += len(known)
        cache.stats.pairs_checked += len(todo)
    return checked


def _pair_value(checked: PairCheck, p: int) -> PairValue:
    """Pair ``p``'s results as plain Python values (float32 values survive SQLite's float64 exactly)."""
    t0, t1, t2, t3 = (float(v) for v in checked.transform[p])
    return float(checked.detail_ncc[p]), float(checked.overlap[p]), bool(checked.aligned[p]), (t0, t1, t2, t3)


def _details(
    root: Path, records: Sequence[FileRecord], needed: Sequence[int], pool: ThreadPoolExecutor, cache: AuditCache | None
) -> dict[int, np.ndarray]:
    """The 128 px detail images of records ``needed``: from the cache (the scan stored them), else decoded."""
    found: dict[int, np.ndarray] = {}
    if cache is not None:
        cached = cache.details([records[i].digest or "" for i in needed], (DETAIL_SIZE, DETAIL_SIZE))
        found = {i: cached[records[i].digest or ""] for i in needed if (records[i].digest or "") in cached}
    missing = [i for i in needed if i not in found]
    found.update(zip(missing, pool.map(lambda i: detail_thumbnail(root / records[i].path), missing), strict=True))
    return found


def _pair_entries(
    records: Sequence[FileRecord], pairs: _CandidatePairs, checked: PairCheck, threshold: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every checked candidate's scores, and the near copies among them with their labels and copies."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        if record.digest is not None:
            by_digest[record.digest].append(index)

    def copies_of(index: int) -> list[dict[str, str]]:
        return [file_entry(records[i]) for i in by_digest[records[index].digest or ""]]

    candidates, near = [], []
    for p, (query_index, reference_index) in enumerate(zip(pairs.query, pairs.reference, strict=True)):
        query, reference = records[query_index], records[reference_index]
        reference_classes = sorted(
            {records[i].class_name for i in by_digest[reference.digest or ""] if records[i].split == REFERENCE_SPLIT}
        )
        entry = {
            "query": query.path,
            "query_split": query.split,
            "query_class": query.class_name,
            "reference": reference.path,
            "reference_class": reference.class_name,
            "whole_image_ncc": round(float(pairs.channel_ncc[p].max()), 4),
            "frame_ncc": round(float(pairs.channel_ncc[p, 0]), 4),
            "content_box_ncc": round(float(pairs.channel_ncc[p, 1]), 4),
            "mirrored": bool(pairs.mirrored[p]),
            "detail_ncc": round(float(checked.detail_ncc[p]), 4),
            "overlap": round(float(checked.overlap[p]), 3),
            "aligned": bool(checked.aligned[p]),
            "transform": [round(float(v), 4) for v in checked.transform[p]],
            "near_copy": bool(checked.detail_ncc[p] >= threshold),
        }
        candidates.append(entry)
        if entry["near_copy"]:
            near.append(
                {
                    **entry,
                    "label_conflict": query.class_name not in reference_classes,
                    "query_copies": copies_of(query_index),
                    "reference_copies": [f for f in copies_of(reference_index) if f["split"] == REFERENCE_SPLIT],
                }
            )
    return candidates, near


def near_groups(records: Sequence[FileRecord], pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Connected components of near-copy pairs, each with every file (and byte-identical copy) it holds.

    Args:
        records: every file of the data set.
        pairs: the near-copy pairs, as :func:`find_near_copies` records them.
    """
    digest_of = {r.path: r.digest for r in records}
    parent: dict[str, str] = {}

    def find(item: str) -> str:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for pair in pairs:
        parent[find(digest_of[pair["query"]] or "")] = find(digest_of[pair["reference"]] or "")
    members: dict[str, set[str]] = defaultdict(set)
    for digest in list(parent):
        members[find(digest)].add(digest)
    records_of: dict[str, list[FileRecord]] = defaultdict(list)
    for record in records:
        if record.digest in parent:
            records_of[record.digest].append(record)
    groups = []
    for digests in members.values():
        files = [file_entry(r) for digest in sorted(digests) for r in records_of[digest]]
        classes = sorted({f["class"] for f in files})
        groups.append(
            {
                "files": files,
                "splits": sorted({f["split"] for f in files}),
                "classes": classes,
                "label_conflict": len(classes) > 1,
            }
        )
    groups.sort(key=lambda g: (-len(g["files"]), g["files"][0]["path"]))
    return groups
