"""``braintumor audit``: exact and near duplicates, train/test leakage, label conflicts and a clean test split.

Public brain MRI sets leak: the Sartaj Testing split holds byte-identical and re-encoded, resized or
cropped copies of Training images, so its accuracy overstates what a model does on new scans. The
audit reads every file once and writes, in its folder (default ``audits/<data-root-name>/`` under
the working directory):

- ``audit.json``: counts per split and class, image sizes, modes and formats, the share of each class at
  Training's most common image size (a source that comes with one class is a shortcut: see
  :func:`~braintumor.auditing.source_shortcut.size_by_class`), undecodable files with
  the reason, every exact-duplicate group (same bytes, the same :func:`~braintumor.data.dataset.file_digest`
  that training uses to drop copies), every near-copy pair and group across splits with its scores,
  label conflicts, and every file's status (``clean``, ``exact_copy``, ``near_copy``, ``undecodable``);
- ``clean_test_manifest.txt``: the Testing files with no exact or near copy in Training, one path
  (relative to the data root) per line; :func:`~braintumor.auditing.audit_file.load_clean_test_paths` reads it back;
- ``audit.html``: a self-contained report with a summary table and example pairs side by side, and
  ``near_duplicate_scores.png``, the two scores of every checked pair with the threshold;
- ``cache/audit_cache.sqlite`` (or in ``cache_dir``): each file's digest, header and thumbnails and each
  checked pair's scores, so the next audit of the folder reads only new or changed files and checks
  only new pairs (:mod:`braintumor.auditing.cache`; the results are the same with or without it).

``braintumor evaluate`` looks for ``audit.json`` there (or takes ``--audit``) and reports the
deduplicated Testing split next to the official one (:func:`~braintumor.auditing.audit_file.clean_subset`).

Example:
    >>> import tempfile
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), per_class=2, size=32)
    >>> result = run_audit(root, tempfile.mkdtemp(), show_progress=False, write_report=False)
    >>> result.audit["splits"]["Testing"]["files"], result.audit["leakage"]["Testing"]["clean"]
    (8, 8)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from braintumor.auditing.audit_file import AuditError, default_audit_dir
from braintumor.auditing.cache import AuditCache, fingerprint
from braintumor.auditing.constants import (
    AUDIT_FILE,
    AUDIT_FORMAT,
    AUDIT_VERSION,
    CACHE_DIR_NAME,
    CACHE_FILE,
    CANDIDATE_FLOOR,
    DEFAULT_CANDIDATES,
    DEFAULT_NEAR_THRESHOLD,
    QUERY_SPLITS,
    REFERENCE_SPLIT,
    STATUS_CLEAN,
)
from braintumor.auditing.exact_copies import exact_groups, label_conflicts, training_drop
from braintumor.auditing.leakage import assign_statuses, leakage_summary
from braintumor.auditing.near_copies import find_near_copies, near_groups
from braintumor.auditing.scan import CACHE_SETTINGS, FileRecord, discover_splits, file_entry, read_all, split_summary
from braintumor.auditing.similarity import DETAIL_SIZE, THUMBNAIL_SIZE
from braintumor.auditing.source_shortcut import size_by_class
from braintumor.classes import CLASS_NAMES
from braintumor.io import write_json_atomic


@dataclass
class AuditResult:
    """The audit as a JSON-ready dictionary, and the files written (name -> path)."""

    audit: dict[str, Any]
    out_dir: Path
    outputs: dict[str, Path] = field(default_factory=dict)


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
    cache_dir: Path | str | None = None,
    use_cache: bool = True,
) -> AuditResult:
    """Audit ``<data_root>/{Training,Validation,Testing}`` and write ``audit.json``, manifests and the report.

    Args:
        data_root: the data root, holding ``<split>/<class>/<image>``.
        out_dir: the audit folder; None is :func:`~braintumor.auditing.audit_file.default_audit_dir`.
        near_threshold: aligned detail NCC from which a pair is a near copy, in (0, 1].
        candidates: most similar Training images checked per image (at least 1).
        near: search near copies; False reports exact duplicates only (seconds even for large sets).
        write_report: also write ``audit.html`` and the scores plot.
        workers: threads reading and decoding files.
        show_progress: draw progress bars.
        console_log: where notes for the user go (the CLI's console); None drops them.
        cache_dir: the folder of the audit cache (:mod:`braintumor.auditing.cache`); None is ``<out_dir>/cache``.
        use_cache: reuse (and update) the cache; False reads and checks everything, writing no cache.
    """
    say = console_log or (lambda message: None)
    started = time.perf_counter()
    root = Path(data_root)
    out = Path(out_dir) if out_dir is not None else default_audit_dir(root)
    _check_settings(near_threshold, candidates)
    splits = discover_splits(root)
    cache = open_cache(root, out, cache_dir, say) if use_cache else None
    # The thumbnails' temporary file goes beside the results (on disk; /tmp may be in memory).
    out.mkdir(parents=True, exist_ok=True)
    thumbnails = None
    try:
        records, thumbnails, rows = read_all(root, splits, workers, show_progress, cache, scratch_dir=out)
        read_s = time.perf_counter() - started
        query_splits = [s for s in QUERY_SPLITS if s in splits]
        run_near = near and REFERENCE_SPLIT in splits and bool(query_splits)
        near_result: dict[str, Any] = {"threshold": near_threshold, "pairs": [], "candidates": []}
        if run_near:
            near_result = find_near_copies(
                root,
                records,
                thumbnails,
                rows,
                threshold=near_threshold,
                candidates=candidates,
                workers=workers,
                show_progress=show_progress,
                cache=cache,
            )
        elif near and query_splits:
            say("no Training split: the near-copy search needs one (exact duplicates are still reported)")
        if cache is not None:
            cache.prune(r.path for r in records)
    finally:
        if thumbnails is not None:
            thumbnails.close()
        if cache is not None:
            cache.close()
    assign_statuses(records, near_result["pairs"], run_near)
    audit = _audit_document(
        root, list(splits), query_splits, records, near_result, run_near, near_threshold, candidates
    )
    audit["cache"] = cache.summary() if cache is not None else None
    audit["timing"] = {
        "read_s": round(read_s, 2),
        "search_s": near_result.get("search_s", 0.0),
        "check_s": near_result.get("check_s", 0.0),
        "total_s": round(time.perf_counter() - started, 2),
    }
    outputs = write_audit(audit, out, root if write_report else None)
    audit["timing"]["total_s"] = round(time.perf_counter() - started, 2)
    return AuditResult(audit, out, outputs)


def _check_settings(near_threshold: float, candidates: int) -> None:
    if not 0.0 < near_threshold <= 1.0:
        raise AuditError(f"the near-copy threshold must be in (0, 1], got {near_threshold}")
    if candidates < 1:
        raise AuditError(f"candidates per image must be at least 1, got {candidates}")


def open_cache(root: Path, out_dir: Path, cache_dir: Path | str | None, say: Callable[[str], Any]) -> AuditCache:
    """The audit cache in ``cache_dir`` (default ``<out_dir>/cache``), refusing a folder inside the data.

    Args:
        root: the data root.
        out_dir: the audit folder.
        cache_dir: the cache's folder, or None for the default.
        say: where the cache's one-line notes go.
    """
    folder = Path(cache_dir) if cache_dir is not None else out_dir / CACHE_DIR_NAME
    resolved, data = folder.resolve(), root.resolve()
    if resolved.is_relative_to(data) and not resolved.is_relative_to(out_dir.resolve()):
        raise AuditError(f"the audit cache {folder} is inside the data folder {root}; give --cache a folder outside it")
    return AuditCache.open(folder / CACHE_FILE, fingerprint(CACHE_SETTINGS), say)


def _audit_document(
    root: Path,
    splits: Sequence[str],
    query_splits: Sequence[str],
    records: Sequence[FileRecord],
    near_result: dict[str, Any],
    near_search: bool,
    near_threshold: float,
    candidates: int,
) -> dict[str, Any]:
    """``audit.json`` without its timing, from the records (with statuses) and the near-copy search."""
    exact = exact_groups(records)
    return {
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
            "near_search": near_search,
        },
        "splits": {split: split_summary([r for r in records if r.split == split], CLASS_NAMES) for split in splits},
        "size_by_class": size_by_class(records, CLASS_NAMES),
        "undecodable": [{**file_entry(r), "reason": r.error} for r in records if r.error is not None],
        "exact_duplicates": {
            "groups": exact,
            "cross_split_groups": sum(g["cross_split"] for g in exact),
            "label_conflict_groups": sum(g["label_conflict"] for g in exact),
        },
        "training_drop": training_drop(records) if REFERENCE_SPLIT in splits else None,
        "near_duplicates": {**near_result, "groups": near_groups(records, near_result["pairs"])},
        "label_conflicts": label_conflicts(exact, near_result["pairs"]),
        "leakage": leakage_summary(records, query_splits, CLASS_NAMES, near_search),
        "files": [asdict(r) for r in records],
    }


def write_audit(audit: dict[str, Any], out_dir: Path, report_root: Path | None = None) -> dict[str, Path]:
    """Write ``audit.json`` and the clean manifests; with ``report_root`` also the HTML report and plot.

    Args:
        audit: the audit, as :func:`run_audit` builds it.
        out_dir: the audit folder (created if missing).
        report_root: the data root the report's example images are read from; None writes no report.
    """
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
        # Imported here: the report needs matplotlib, which a run without one should not load.
        from braintumor.auditing.report import write_audit_report

        outputs.update(write_audit_report(audit, report_root, out_dir))
    write_json_atomic(out_dir / AUDIT_FILE, audit)
    outputs[AUDIT_FILE] = out_dir / AUDIT_FILE
    return outputs
