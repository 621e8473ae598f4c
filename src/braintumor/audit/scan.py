"""``braintumor audit``: exact and near duplicates, train/test leakage, label conflicts and a clean test split.

Public brain MRI sets leak: the Sartaj Testing split holds byte-identical and re-encoded, resized or
cropped copies of Training images, so its accuracy overstates what a model does on new scans. The
audit reads every file once and writes, in its folder (default ``audits/<data-root-name>/`` under
the working directory):

- ``audit.json``: counts per split and class, image sizes, modes and formats, the share of each class at
  Training's most common image size (a source that comes with one class is a shortcut: see
  :func:`size_by_class`), undecodable files with
  the reason, every exact-duplicate group (same bytes, the same :func:`~braintumor.data.dataset.file_digest`
  that training uses to drop copies), every near-copy pair and group across splits with its scores,
  label conflicts, and every file's status (``clean``, ``exact_copy``, ``near_copy``, ``undecodable``);
- ``clean_test_manifest.txt``: the Testing files with no exact or near copy in Training, one path
  (relative to the data root) per line; :func:`load_clean_test_paths` reads it back;
- ``audit.html``: a self-contained report with a summary table and example pairs side by side, and
  ``near_duplicate_scores.png``, the two scores of every checked pair with the threshold.

``braintumor evaluate`` looks for ``audit.json`` there (or takes ``--audit``) and reports the
deduplicated Testing split next to the official one (:func:`deduplicated_metrics`).

Example:
    >>> import tempfile
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), per_class=2, size=32)
    >>> result = run_audit(root, tempfile.mkdtemp(), show_progress=False, write_report=False)
    >>> result.audit["splits"]["Testing"]["files"], result.audit["leakage"]["Testing"]["clean"]
    (8, 8)
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from braintumor.audit.constants import (
    AUDIT_FILE,
    AUDIT_FORMAT,
    AUDIT_VERSION,
    CANDIDATE_FLOOR,
    CHECK_CHUNK,
    DEFAULT_AUDIT_ROOT,
    DEFAULT_CANDIDATES,
    DEFAULT_NEAR_THRESHOLD,
    QUERY_SPLITS,
    REFERENCE_SPLIT,
    STATUS_CLEAN,
    STATUS_EXACT,
    STATUS_NEAR,
    STATUS_NO_EXACT,
    STATUS_UNDECODABLE,
)
from braintumor.audit.near_duplicates import (
    DETAIL_SIZE,
    THUMBNAIL_SIZE,
    PairCheck,
    check_pairs,
    content_box,
    nearest_candidates,
    normalise_thumbnails,
)
from braintumor.data.dataset import file_digest
from braintumor.data.images import decode_image_bytes, is_dicom, read_file_bytes
from braintumor.data.layout import _SPLIT_ALIASES, Sample, discover_split, find_split_dir
from braintumor.errors import BrainTumorError, DatasetLayoutError, ImageDecodeError
from braintumor.io import write_json_atomic
from braintumor.layout_constants import CLASS_NAMES
from braintumor.progress import progress_bar


class AuditError(BrainTumorError):
    """An audit file that is missing, unreadable or does not describe the data being evaluated."""


@dataclass
class FileRecord:
    """One file of the data set as the audit saw it; ``path`` is relative to the data root (POSIX)."""

    path: str
    split: str
    class_name: str
    bytes: int | None = None
    digest: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    error: str | None = None
    status: str | None = None


@dataclass
class AuditResult:
    """The audit as a JSON-ready dictionary, and the files written (name -> path)."""

    audit: dict[str, Any]
    out_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)


def default_audit_dir(data_root: Path | str) -> Path:
    """``audits/<data-root-name>`` under the working directory: where the audit goes and evaluate looks."""
    return DEFAULT_AUDIT_ROOT / Path(data_root).resolve().name


def canonical_split(split: str) -> str:
    """``Training``, ``Validation`` or ``Testing`` for any accepted folder name (``test``, ``val``, ...)."""
    for canonical in (REFERENCE_SPLIT, *QUERY_SPLITS):
        if split.lower() in _SPLIT_ALIASES[canonical.lower()]:
            return canonical
    return split


def manifest_name(split: str) -> str:
    """``clean_test_manifest.txt`` for Testing, ``clean_validation_manifest.txt`` for Validation."""
    return "clean_test_manifest.txt" if split == "Testing" else f"clean_{split.lower()}_manifest.txt"


# ---------------------------------------------------------------------------------------------- reading


def _discover(root: Path) -> dict[str, list[Sample]]:
    if not root.is_dir():
        raise DatasetLayoutError(f"data folder {root} does not exist or is not a folder")
    splits: dict[str, list[Sample]] = {}
    for split in (REFERENCE_SPLIT, *QUERY_SPLITS):
        try:
            find_split_dir(root, split)
        except DatasetLayoutError:
            continue
        splits[split] = discover_split(root, split)
    if not splits:
        raise DatasetLayoutError(
            f"{root} has no Training, Validation or Testing folder; expected <root>/<split>/<class>/<image>"
        )
    return splits


def _header(data: bytes) -> tuple[str | None, str | None]:
    """File format and pixel mode as stored (before the RGB conversion every stage uses)."""
    if is_dicom(data):
        return "DICOM", None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format, image.mode
    except Exception:  # the decoder below reports the reason; the header is only informative
        return None, None


def _grey_thumbnail(image: Image.Image, size: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    # Squashed to a square on purpose: a copy resized with another aspect ratio still lines up.
    grey = image if image.mode == "L" else image.convert("L")
    pixels = (
        None if box is None else (box[0] * grey.width, box[1] * grey.height, box[2] * grey.width, box[3] * grey.height)
    )
    resized = grey.resize((size, size), Image.Resampling.BILINEAR, box=pixels, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8)


def _thumbnails(image: Image.Image) -> np.ndarray:
    """``[2, 64, 64]``: the whole frame, and the head's bounding box (a padded or cropped copy matches there)."""
    grey = image.convert("L")
    box = content_box(_grey_thumbnail(grey, DETAIL_SIZE))
    return np.stack([_grey_thumbnail(grey, THUMBNAIL_SIZE), _grey_thumbnail(grey, THUMBNAIL_SIZE, box)])


def _read_one(sample: Sample, root: Path, split: str) -> tuple[FileRecord, np.ndarray | None]:
    record = FileRecord(path=sample.path.relative_to(root).as_posix(), split=split, class_name=sample.class_name)
    try:
        data = read_file_bytes(sample.path)
    except ImageDecodeError as error:
        record.error = error.reason
        return record, None
    record.bytes, record.digest = len(data), file_digest(data)
    record.format, record.mode = _header(data)
    try:
        image = decode_image_bytes(data, sample.path)
    except ImageDecodeError as error:
        record.error = error.reason
        return record, None
    record.width, record.height = image.size
    record.mode = record.mode or image.mode
    return record, _thumbnails(image)


def _read_all(
    root: Path, splits: dict[str, list[Sample]], workers: int, show_progress: bool
) -> tuple[list[FileRecord], np.ndarray, np.ndarray]:
    """Every file's record, the ``[N, 2, 64, 64]`` thumbnails of the decodable files, and each record's row."""
    jobs = [(sample, split) for split, samples in splits.items() for sample in samples]
    records: list[FileRecord] = []
    thumbnails: list[np.ndarray] = []
    rows = np.full(len(jobs), -1, dtype=np.int64)
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(show_progress) as progress:
        task = progress.add_task("Reading images", total=len(jobs))
        for index, (record, thumbnail) in enumerate(pool.map(lambda job: _read_one(job[0], root, job[1]), jobs)):
            progress.advance(task)
            records.append(record)
            if thumbnail is not None:
                rows[index] = len(thumbnails)
                thumbnails.append(thumbnail)
    stacked = np.stack(thumbnails) if thumbnails else np.zeros((0, 2, THUMBNAIL_SIZE, THUMBNAIL_SIZE), np.uint8)
    return records, stacked, rows


def _detail_thumbnail(path: Path) -> np.ndarray:
    image = decode_image_bytes(read_file_bytes(path), path)
    return _grey_thumbnail(image, DETAIL_SIZE)


# ------------------------------------------------------------------------------------------- statistics


def _split_summary(records: Sequence[FileRecord], class_names: Iterable[str]) -> dict[str, Any]:
    decodable = [r for r in records if r.error is None]
    sizes = Counter(f"{r.width}x{r.height}" for r in decodable)
    digests = [r.digest for r in records if r.digest is not None]
    groups = Counter(digests)
    return {
        "files": len(records),
        "decodable": len(decodable),
        "undecodable": len(records) - len(decodable),
        "classes": {name: sum(r.class_name == name for r in records) for name in class_names},
        "exact_duplicate_groups": sum(count > 1 for count in groups.values()),
        "redundant_exact_copies": len(digests) - len(groups),
        "distinct_sizes": len(sizes),
        "most_common_sizes": dict(sizes.most_common(10)),
        "modes": dict(Counter(r.mode or "unknown" for r in decodable).most_common()),
        "formats": dict(Counter(r.format or "unknown" for r in decodable).most_common()),
    }


SIZE_CONFOUND_GAP = 0.5


def size_by_class(records: Sequence[FileRecord], class_names: Sequence[str]) -> dict[str, Any]:
    """How many images of each split and class have the reference split's most common size, and warnings.

    Image size stands for the source (scanner, hospital, exporter): when one class comes almost only at one
    size and another almost never, a model can learn the source instead of the anatomy, and it fails on a
    split whose sources are mixed differently. A warning is raised when the shares of two classes in the
    reference split differ by :data:`SIZE_CONFOUND_GAP` or more.

    Example:
        >>> records = [FileRecord("a", "Training", "glioma", width=512, height=512)] * 9 + [
        ...     FileRecord("b", "Training", "no_tumor", width=256, height=300)] * 9
        >>> result = size_by_class(records, ["glioma", "no_tumor"])
        >>> result["common_size"], result["splits"]["Training"]["glioma"]["share"], len(result["warnings"])
        ('512x512', 1.0, 1)
    """
    decodable = [r for r in records if r.error is None]
    reference = [r for r in decodable if r.split == REFERENCE_SPLIT] or decodable
    sizes = Counter(f"{r.width}x{r.height}" for r in reference)
    if not sizes:
        return {"common_size": None, "splits": {}, "warnings": []}
    common = sizes.most_common(1)[0][0]
    splits: dict[str, dict[str, dict[str, Any]]] = {}
    for split in sorted({r.split for r in decodable}, key=lambda name: name != REFERENCE_SPLIT):
        splits[split] = {}
        for name in class_names:
            members = [r for r in decodable if r.split == split and r.class_name == name]
            at_common = sum(f"{r.width}x{r.height}" == common for r in members)
            splits[split][name] = {
                "files": len(members),
                "common_size": at_common,
                "share": round(at_common / len(members), 4) if members else None,
            }
    warnings = []
    reference_shares = {
        name: c["share"] for name, c in splits.get(REFERENCE_SPLIT, {}).items() if c["share"] is not None
    }
    if len(reference_shares) > 1:
        high = max(reference_shares, key=reference_shares.__getitem__)
        low = min(reference_shares, key=reference_shares.__getitem__)
        if reference_shares[high] - reference_shares[low] >= SIZE_CONFOUND_GAP:
            others = "; ".join(
                f"{split}: " + ", ".join(f"{name} {c['share']:.0%}" for name, c in classes.items() if c["files"])
                for split, classes in splits.items()
                if split != REFERENCE_SPLIT
            )
            warnings.append(
                f"image size predicts the class in {REFERENCE_SPLIT}: {reference_shares[high]:.0%} of {high} "
                f"images are {common} against {reference_shares[low]:.0%} of {low}. Size stands for the source "
                "(scanner, hospital, exporter), so a model can learn the source instead of the anatomy"
                + (f". Share at {common} elsewhere: {others}" if others else "")
            )
    return {"common_size": common, "splits": splits, "warnings": warnings}


def _file_entry(record: FileRecord) -> dict[str, str]:
    return {"path": record.path, "split": record.split, "class": record.class_name}


def _exact_groups(records: Sequence[FileRecord]) -> list[dict[str, Any]]:
    by_digest: dict[str, list[FileRecord]] = defaultdict(list)
    for record in records:
        if record.digest is not None:
            by_digest[record.digest].append(record)
    groups = []
    for digest, members in by_digest.items():
        if len(members) < 2:
            continue
        splits = sorted({m.split for m in members})
        classes = sorted({m.class_name for m in members})
        groups.append(
            {
                "digest": digest,
                "files": [_file_entry(m) for m in members],
                "splits": splits,
                "classes": classes,
                "cross_split": len(splits) > 1,
                "label_conflict": len(classes) > 1,
            }
        )
    groups.sort(key=lambda g: (not g["cross_split"], -len(g["files"]), g["files"][0]["path"]))
    return groups


def _training_drop(records: Sequence[FileRecord]) -> dict[str, int]:
    """What ``braintumor train`` removes by default (``data.drop_train_duplicates``), counted the same way."""
    by_digest: dict[str, set[str]] = defaultdict(set)
    sizes: Counter[str] = Counter()
    for record in records:
        if record.split == REFERENCE_SPLIT and record.error is None and record.digest is not None:
            by_digest[record.digest].add(record.class_name)
            sizes[record.digest] += 1
    copies = sum(sizes[d] - 1 for d, classes in by_digest.items() if len(classes) == 1)
    conflicts = sum(sizes[d] for d, classes in by_digest.items() if len(classes) > 1)
    return {"removed_copies": copies, "removed_label_conflicts": conflicts}


# ------------------------------------------------------------------------------------------ near copies


def _near_copies(
    root: Path,
    records: Sequence[FileRecord],
    thumbnails: np.ndarray,
    rows: np.ndarray,
    *,
    threshold: float,
    candidates: int,
    workers: int,
    show_progress: bool,
) -> dict[str, Any]:
    """Search every query split's distinct images against Training's distinct images; check the candidates."""
    by_digest: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        if record.digest is not None:
            by_digest[record.digest].append(index)
    reference_digests = {r.digest for r in records if r.split == REFERENCE_SPLIT and r.digest is not None}
    # One representative per distinct content: copies inside a split would only fill the top-k slots.
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
    reference_block = 4096
    query_thumbs, reference_thumbs = thumbnails[rows[query_ids]], thumbnails[rows[reference_ids]]
    # Two channels: the whole frame (resized, re-encoded, mirrored, intensity-changed copies) and the
    # head's bounding box (padded or cropped copies, whose frames no longer line up).
    channels = (0, 1)
    found: dict[tuple[int, int], tuple[float, bool]] = {}
    with progress_bar(show_progress) as progress:
        task = progress.add_task("Near-copy search", total=len(channels) * -(-len(reference_ids) // reference_block))
        for channel in channels:
            top = nearest_candidates(
                query_thumbs[:, channel],
                reference_thumbs[:, channel],
                candidates,
                reference_block=reference_block,
                on_block=lambda: progress.advance(task),
            )
            for q, rank in zip(*np.nonzero(top.scores >= CANDIDATE_FLOOR), strict=True):
                key, score = (int(q), int(top.indices[q, rank])), float(top.scores[q, rank])
                if key not in found or score > found[key][0]:
                    found[key] = (score, bool(top.mirrored[q, rank]))
    search_s = time.perf_counter() - started

    keys = sorted(found)
    pair_query = [query_ids[q] for q, _ in keys]
    pair_reference = [reference_ids[r] for _, r in keys]
    pair_mirrored = np.array([found[key][1] for key in keys], dtype=bool)
    # Both channels' NCC for every pair (with the mirroring chosen), for the record and the plot.
    channel_ncc = np.zeros((len(keys), 2), dtype=np.float32)
    if keys:
        query_side = query_thumbs[[q for q, _ in keys]]
        query_side = np.where(pair_mirrored[:, None, None, None], query_side[..., ::-1], query_side)
        reference_side = reference_thumbs[[r for _, r in keys]]
        for channel in (0, 1):
            a = normalise_thumbnails(np.ascontiguousarray(query_side[:, channel]))
            b = normalise_thumbnails(np.ascontiguousarray(reference_side[:, channel]))
            channel_ncc[:, channel] = (a * b).sum(dim=1).numpy()
    started = time.perf_counter()
    checked = PairCheck(*(np.zeros(0) for _ in range(4)))
    if keys:
        parts = []
        with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(show_progress) as progress:
            task = progress.add_task("Checking candidate pairs", total=len(keys))
            # In chunks, so the 128 px images in memory stay bounded on 100k-image sets.
            for start in range(0, len(keys), CHECK_CHUNK):
                chunk = range(start, min(start + CHECK_CHUNK, len(keys)))
                needed = sorted({pair_query[p] for p in chunk} | {pair_reference[p] for p in chunk})
                details = dict(
                    zip(needed, pool.map(lambda i: _detail_thumbnail(root / records[i].path), needed), strict=True)
                )
                query_detail = np.stack([details[pair_query[p]] for p in chunk])
                reference_detail = np.stack(
                    [
                        details[pair_reference[p]][:, ::-1] if pair_mirrored[p] else details[pair_reference[p]]
                        for p in chunk
                    ]
                )
                parts.append(check_pairs(query_detail, reference_detail, on_batch=lambda n: progress.advance(task, n)))
        checked = PairCheck(
            *(
                np.concatenate([getattr(part, name) for part in parts])
                for name in ("detail_ncc", "overlap", "aligned", "transform")
            )
        )
    check_s = time.perf_counter() - started

    def copies_of(index: int) -> list[dict[str, str]]:
        return [_file_entry(records[i]) for i in by_digest[records[index].digest or ""]]

    for p, (query_index, reference_index) in enumerate(zip(pair_query, pair_reference, strict=True)):
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
            "whole_image_ncc": round(float(channel_ncc[p].max()), 4),
            "frame_ncc": round(float(channel_ncc[p, 0]), 4),
            "content_box_ncc": round(float(channel_ncc[p, 1]), 4),
            "mirrored": bool(pair_mirrored[p]),
            "detail_ncc": round(float(checked.detail_ncc[p]), 4),
            "overlap": round(float(checked.overlap[p]), 3),
            "aligned": bool(checked.aligned[p]),
            "transform": [round(float(v), 4) for v in checked.transform[p]],
            "near_copy": bool(checked.detail_ncc[p] >= threshold),
        }
        result["candidates"].append(entry)
        if entry["near_copy"]:
            result["pairs"].append(
                {
                    **entry,
                    "label_conflict": query.class_name not in reference_classes,
                    "query_copies": copies_of(query_index),
                    "reference_copies": [f for f in copies_of(reference_index) if f["split"] == REFERENCE_SPLIT],
                }
            )
    searched = {q for q, _ in keys}
    unchecked = [records[query_ids[q]].path for q in range(len(query_ids)) if q not in searched]
    # Queries whose best candidate in both channels was under the floor: nothing looked similar enough.
    result.update(
        queries_without_candidates=unchecked,
        search_s=round(search_s, 2),
        check_s=round(check_s, 2),
        pairs_checked=len(keys),
    )
    return result


def _near_groups(records: Sequence[FileRecord], pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Connected components of near-copy pairs, each with every file (and byte-identical copy) it holds."""
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
        files = [_file_entry(r) for digest in sorted(digests) for r in records_of[digest]]
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


# ---------------------------------------------------------------------------------------------- the run


def run_audit(
    data_root: Path | str,
    out_dir: Path | str | None = None,
    *,
    near_threshold: float = DEFAULT_NEAR_THRESHOLD,
    candidates: int = DEFAULT_CANDIDATES,
    near: bool = True,
    write_report: bool = True,
    workers: int = 4,
    show_progress: bool = True,
    console_log: Callable[[str], Any] | None = None,
) -> AuditResult:
    """Audit ``<data_root>/{Training,Validation,Testing}`` and write ``audit.json``, manifests and the report.

    ``near=False`` skips the near-copy search (exact duplicates only, seconds even for large sets).
    """
    say = console_log or (lambda message: None)
    started = time.perf_counter()
    root = Path(data_root)
    out = Path(out_dir) if out_dir is not None else default_audit_dir(root)
    if not 0.0 < near_threshold <= 1.0:
        raise AuditError(f"the near-copy threshold must be in (0, 1], got {near_threshold}")
    if candidates < 1:
        raise AuditError(f"candidates per image must be at least 1, got {candidates}")
    splits = _discover(root)
    records, thumbnails, rows = _read_all(root, splits, workers, show_progress)
    read_s = time.perf_counter() - started
    exact = _exact_groups(records)
    reference_digests = {r.digest for r in records if r.split == REFERENCE_SPLIT and r.digest is not None}
    query_splits = [s for s in QUERY_SPLITS if s in splits]
    run_near = near and REFERENCE_SPLIT in splits and bool(query_splits)
    near_result: dict[str, Any] = {"threshold": near_threshold, "pairs": [], "candidates": []}
    if run_near:
        near_result = _near_copies(
            root,
            records,
            thumbnails,
            rows,
            threshold=near_threshold,
            candidates=candidates,
            workers=workers,
            show_progress=show_progress,
        )
    elif near and query_splits:
        say("no Training split: the near-copy search needs one (exact duplicates are still reported)")

    digest_of = {r.path: r.digest for r in records}
    near_digests = {digest_of[pair["query"]] for pair in near_result["pairs"]}
    for record in records:
        if record.split == REFERENCE_SPLIT:
            record.status = STATUS_UNDECODABLE if record.error else None
        elif record.error is not None:
            record.status = STATUS_UNDECODABLE
        elif record.digest in reference_digests:
            record.status = STATUS_EXACT
        elif not run_near:
            record.status = STATUS_NO_EXACT
        elif record.digest in near_digests:
            record.status = STATUS_NEAR
        else:
            record.status = STATUS_CLEAN

    leakage: dict[str, Any] = {}
    statuses = (STATUS_EXACT, STATUS_NEAR, STATUS_CLEAN, STATUS_UNDECODABLE) + (() if run_near else (STATUS_NO_EXACT,))
    for split in query_splits:
        members = [r for r in records if r.split == split]
        by_class = {
            name: {status: sum(r.class_name == name and r.status == status for r in members) for status in statuses}
            for name in CLASS_NAMES
        }
        leakage[split] = {
            "files": len(members),
            **{status: sum(r.status == status for r in members) for status in statuses},
            "near_search": run_near,
            "by_class": by_class,
            # Without the near search no file can be called clean, so no manifest is written.
            "manifest": manifest_name(split) if run_near else None,
        }
    cross_groups = [g for g in exact if g["cross_split"]]
    label_conflicts = [{"kind": "exact", **g} for g in exact if g["label_conflict"]] + [
        {
            "kind": "near",
            "query": p["query"],
            "query_class": p["query_class"],
            "reference": p["reference"],
            "reference_class": p["reference_class"],
            "detail_ncc": p["detail_ncc"],
        }
        for p in near_result["pairs"]
        if p["label_conflict"]
    ]
    audit: dict[str, Any] = {
        "format": AUDIT_FORMAT,
        "version": AUDIT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_root": str(root.resolve()),
        "reference_split": REFERENCE_SPLIT,
        "settings": {
            "thumbnail_size": THUMBNAIL_SIZE,
            "detail_size": DETAIL_SIZE,
            "near_threshold": near_threshold,
            "candidates_per_image": candidates,
            "candidate_floor": CANDIDATE_FLOOR,
            "near_search": run_near,
        },
        "splits": {split: _split_summary([r for r in records if r.split == split], CLASS_NAMES) for split in splits},
        "size_by_class": size_by_class(records, CLASS_NAMES),
        "undecodable": [{**_file_entry(r), "reason": r.error} for r in records if r.error is not None],
        "exact_duplicates": {
            "groups": exact,
            "cross_split_groups": len(cross_groups),
            "label_conflict_groups": sum(g["label_conflict"] for g in exact),
        },
        "training_drop": _training_drop(records) if REFERENCE_SPLIT in splits else None,
        "near_duplicates": {**near_result, "groups": _near_groups(records, near_result["pairs"])},
        "label_conflicts": label_conflicts,
        "leakage": leakage,
        "files": [asdict(r) for r in records],
    }
    audit["timing"] = {
        "read_s": round(read_s, 2),
        "search_s": near_result.get("search_s", 0.0),
        "check_s": near_result.get("check_s", 0.0),
        "total_s": round(time.perf_counter() - started, 2),
    }
    outputs = write_audit(audit, out, root if write_report else None)
    audit["timing"]["total_s"] = round(time.perf_counter() - started, 2)
    return AuditResult(audit, out, outputs)


def write_audit(audit: dict[str, Any], out_dir: Path, report_root: Path | None = None) -> dict[str, Path]:
    """Write ``audit.json`` and the clean manifests; with ``report_root`` also the HTML report and plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}
    for split, summary in audit["leakage"].items():
        if summary["manifest"] is None:
            continue
        path = out_dir / summary["manifest"]
        clean = [f["path"] for f in audit["files"] if f["split"] == split and f["status"] == STATUS_CLEAN]
        path.write_text("".join(f"{p}\n" for p in clean), encoding="utf-8")
        outputs[summary["manifest"]] = path
    if report_root is not None:
        from braintumor.audit.report import write_audit_report

        outputs.update(write_audit_report(audit, report_root, out_dir))
    write_json_atomic(out_dir / AUDIT_FILE, audit)
    outputs[AUDIT_FILE] = out_dir / AUDIT_FILE
    return outputs


# ---------------------------------------------------------------------------------- using it: evaluate


def find_audit_file(data_root: Path | str, audit: Path | str | None = None) -> Path | None:
    """``audit`` (a file or a folder holding ``audit.json``), else the default location for ``data_root``.

    Returns None when no audit was named and none exists at the default location; raises
    :class:`AuditError` when a named audit does not exist.
    """
    if audit is not None:
        path = Path(audit)
        path = path / AUDIT_FILE if path.is_dir() else path
        if not path.is_file():
            raise AuditError(f"audit {audit} not found (expected an audit.json or a folder holding one)")
        return path
    path = default_audit_dir(data_root) / AUDIT_FILE
    return path if path.is_file() else None


def load_audit(path: Path | str) -> dict[str, Any]:
    """Read an ``audit.json``, checking that it is one."""
    path = Path(path)
    try:
        audit = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AuditError(f"{path}: cannot read the audit ({error})") from None
    if not isinstance(audit, dict) or audit.get("format") != AUDIT_FORMAT:
        raise AuditError(f"{path}: not a braintumor audit (no format {AUDIT_FORMAT!r})")
    if audit.get("version") != AUDIT_VERSION:
        raise AuditError(f"{path}: audit version {audit.get('version')} is not {AUDIT_VERSION}; run the audit again")
    return audit


def load_clean_test_paths(
    data_root: Path | str, audit: Path | str | None = None, split: str = "Testing"
) -> set[Path] | None:
    """The files of ``split`` with no exact or near copy in Training, as ``data_root / relative path``.

    Reads ``audit`` or the default audit of ``data_root``; None when there is no audit or it did not
    search for near copies of that split.
    """
    path = find_audit_file(data_root, audit)
    if path is None:
        return None
    summary = load_audit(path).get("leakage", {}).get(canonical_split(split))
    if not summary or not summary.get("near_search"):
        return None
    manifest = path.parent / summary["manifest"]
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise AuditError(f"{manifest}: cannot read the clean manifest ({error.strerror or error})") from None
    return {Path(data_root) / line for line in lines if line.strip()}


@dataclass
class CleanSubset:
    """Which evaluated images are in the audit's clean subset, and why the others are not."""

    indices: np.ndarray
    audit_path: Path
    excluded_exact: int
    excluded_near: int
    excluded: np.ndarray


def clean_subset(
    audit_path: Path,
    data_root: Path | str,
    split: str,
    paths: Sequence[Path],
    digests: Sequence[str],
) -> CleanSubset:
    """Positions of the clean images among ``paths``, checking each file's bytes against the audit's digest.

    Raises :class:`AuditError` when the audit did not search ``split`` or when a file is missing from
    the audit or changed since (the audit is stale: run it again).
    """
    audit = load_audit(audit_path)
    split = canonical_split(split)
    summary = audit.get("leakage", {}).get(split)
    if not summary or not summary.get("near_search"):
        raise AuditError(f"{audit_path} has no near-copy search of split {split!r}; run `braintumor audit` again")
    table = {f["path"]: f for f in audit.get("files", []) if f.get("split") == split}
    root = Path(data_root)
    keep: list[int] = []
    dropped: list[int] = []
    exact = near = 0
    for index, (path, digest) in enumerate(zip(paths, digests, strict=True)):
        relative = Path(path).relative_to(root).as_posix()
        entry = table.get(relative)
        if entry is None or entry.get("digest") != digest:
            what = "is not in" if entry is None else "changed since"
            raise AuditError(f"{relative} {what} the audit {audit_path}; run `braintumor audit {root}` again")
        status = entry.get("status")
        if status == STATUS_CLEAN:
            keep.append(index)
            continue
        dropped.append(index)
        exact += status == STATUS_EXACT
        near += status == STATUS_NEAR
    return CleanSubset(np.asarray(keep, dtype=np.int64), audit_path, exact, near, np.asarray(dropped, dtype=np.int64))
