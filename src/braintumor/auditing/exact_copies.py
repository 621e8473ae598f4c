"""Byte-identical copies and label conflicts: digest groups, what training drops of them, and disagreeing labels.

Example:
    >>> records = [FileRecord("Training/a/1.jpg", "Training", "a", digest="d1"),
    ...            FileRecord("Testing/b/1.jpg", "Testing", "b", digest="d1")]
    >>> groups = exact_groups(records)
    >>> groups[0]["cross_split"], [c["kind"] for c in label_conflicts(groups, [])]
    (True, ['exact'])
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from braintumor.auditing.constants import REFERENCE_SPLIT
from braintumor.auditing.scan import FileRecord, file_entry


def exact_groups(records: Sequence[FileRecord]) -> list[dict[str, Any]]:
    """Every group of two or more files with the same digest; groups across splits first, then larger ones.

    Args:
        records: every file of the data set; files that could not be read have no digest and are left out.
    """
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
                "files": [file_entry(m) for m in members],
                "splits": splits,
                "classes": classes,
                "cross_split": len(splits) > 1,
                "label_conflict": len(classes) > 1,
            }
        )
    groups.sort(key=lambda g: (not g["cross_split"], -len(g["files"]), g["files"][0]["path"]))
    return groups


def training_drop(records: Sequence[FileRecord]) -> dict[str, int]:
    """What ``braintumor train`` removes by default (``data.drop_train_duplicates``), counted the same way.

    Args:
        records: every file of the data set; only the reference split's decodable files count.
    """
    by_digest: dict[str, set[str]] = defaultdict(set)
    sizes: Counter[str] = Counter()
    for record in records:
        if record.split == REFERENCE_SPLIT and record.error is None and record.digest is not None:
            by_digest[record.digest].add(record.class_name)
            sizes[record.digest] += 1
    copies = sum(sizes[d] - 1 for d, classes in by_digest.items() if len(classes) == 1)
    conflicts = sum(sizes[d] for d, classes in by_digest.items() if len(classes) > 1)
    return {"removed_copies": copies, "removed_label_conflicts": conflicts}


def label_conflicts(groups: Sequence[dict[str, Any]], near_pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The exact groups and near-copy pairs whose files carry different classes, exact ones first.

    Args:
        groups: the exact groups, as :func:`exact_groups` returns them.
        near_pairs: the near-copy pairs, as :func:`braintumor.auditing.near_copies.find_near_copies` records them.
    """
    return [{"kind": "exact", **g} for g in groups if g["label_conflict"]] + [
        {
            "kind": "near",
            "query": p["query"],
            "query_class": p["query_class"],
            "reference": p["reference"],
            "reference_class": p["reference_class"],
            "detail_ncc": p["detail_ncc"],
        }
        for p in near_pairs
        if p["label_conflict"]
    ]
