"""Leakage into the evaluation splits: each query file's status and the counts per split and class.

A query file (Validation, Testing) is an ``exact_copy`` when its bytes are in Training, a ``near_copy``
when the near-copy search paired it with a Training image, ``clean`` otherwise, and ``undecodable``
when it could not be read. Without the near search a file with no exact copy is only
``no_exact_copy``: nothing says it is clean.

Example:
    >>> from braintumor.auditing.scan import FileRecord
    >>> records = [FileRecord("Training/a/1.jpg", "Training", "a", digest="d1"),
    ...            FileRecord("Testing/a/1.jpg", "Testing", "a", digest="d1"),
    ...            FileRecord("Testing/a/2.jpg", "Testing", "a", digest="d2")]
    >>> assign_statuses(records, [], near_search=True)
    >>> [r.status for r in records]
    [None, 'exact_copy', 'clean']
    >>> leakage_summary(records, ["Testing"], ["a"], near_search=True)["Testing"]["manifest"]
    'clean_test_manifest.txt'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from braintumor.auditing.constants import (
    REFERENCE_SPLIT,
    STATUS_CLEAN,
    STATUS_EXACT,
    STATUS_NEAR,
    STATUS_NO_EXACT,
    STATUS_UNDECODABLE,
)
from braintumor.auditing.scan import FileRecord


def manifest_name(split: str) -> str:
    """``clean_test_manifest.txt`` for Testing, ``clean_validation_manifest.txt`` for Validation.

    Args:
        split: the canonical split name.
    """
    return "clean_test_manifest.txt" if split == "Testing" else f"clean_{split.lower()}_manifest.txt"


def assign_statuses(records: Sequence[FileRecord], near_pairs: Sequence[dict[str, Any]], near_search: bool) -> None:
    """Set every record's ``status``; Training files get one only when they are undecodable.

    Args:
        records: every file of the data set.
        near_pairs: the near-copy pairs found (their ``query`` files, and byte-identical copies, are near copies).
        near_search: whether near copies were searched; without it no file is called clean.
    """
    reference_digests = {r.digest for r in records if r.split == REFERENCE_SPLIT and r.digest is not None}
    digest_of = {r.path: r.digest for r in records}
    near_digests = {digest_of[pair["query"]] for pair in near_pairs}
    for record in records:
        if record.split == REFERENCE_SPLIT:
            record.status = STATUS_UNDECODABLE if record.error else None
        elif record.error is not None:
            record.status = STATUS_UNDECODABLE
        elif record.digest in reference_digests:
            record.status = STATUS_EXACT
        elif not near_search:
            record.status = STATUS_NO_EXACT
        elif record.digest in near_digests:
            record.status = STATUS_NEAR
        else:
            record.status = STATUS_CLEAN


def leakage_summary(
    records: Sequence[FileRecord], query_splits: Sequence[str], class_names: Sequence[str], near_search: bool
) -> dict[str, Any]:
    """Per query split: how many files have each status, in all and per class, and its clean manifest's name.

    Args:
        records: every file of the data set, with statuses (:func:`assign_statuses`).
        query_splits: the evaluation splits present.
        class_names: the classes to count, in order.
        near_search: whether near copies were searched.
    """
    leakage: dict[str, Any] = {}
    statuses = (STATUS_EXACT, STATUS_NEAR, STATUS_CLEAN, STATUS_UNDECODABLE) + (
        () if near_search else (STATUS_NO_EXACT,)
    )
    for split in query_splits:
        members = [r for r in records if r.split == split]
        by_class = {
            name: {status: sum(r.class_name == name and r.status == status for r in members) for status in statuses}
            for name in class_names
        }
        leakage[split] = {
            "files": len(members),
            **{status: sum(r.status == status for r in members) for status in statuses},
            "near_search": near_search,
            "by_class": by_class,
            # Without the near search no file can be called clean, so no manifest is written.
            "manifest": manifest_name(split) if near_search else None,
        }
    return leakage
