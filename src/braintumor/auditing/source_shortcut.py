"""The source shortcut: whether image size, which stands for the source of a scan, predicts its class.

Image size stands for the source (scanner, hospital, exporter): when one class comes almost only at one
size and another almost never, a model can learn the source instead of the anatomy, and it fails on a
split whose sources are mixed differently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from braintumor.auditing.constants import REFERENCE_SPLIT
from braintumor.auditing.scan import FileRecord

SIZE_CONFOUND_GAP = 0.5


def size_by_class(records: Sequence[FileRecord], class_names: Sequence[str]) -> dict[str, Any]:
    """How many images of each split and class have the reference split's most common size, and warnings.

    A warning is raised when the shares of two classes in the reference split differ by
    :data:`SIZE_CONFOUND_GAP` or more.

    Args:
        records: every file of the data set; undecodable ones are left out.
        class_names: the classes to count, in order.

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
    return {"common_size": common, "splits": splits, "warnings": _warnings(splits, common)}


def _warnings(splits: dict[str, dict[str, dict[str, Any]]], common: str) -> list[str]:
    """One warning when the reference split's class shares at ``common`` differ by the gap or more."""
    reference_shares = {
        name: c["share"] for name, c in splits.get(REFERENCE_SPLIT, {}).items() if c["share"] is not None
    }
    if len(reference_shares) < 2:
        return []
    high = max(reference_shares, key=reference_shares.__getitem__)
    low = min(reference_shares, key=reference_shares.__getitem__)
    if reference_shares[high] - reference_shares[low] < SIZE_CONFOUND_GAP:
        return []
    others = "; ".join(
        f"{split}: " + ", ".join(f"{name} {c['share']:.0%}" for name, c in classes.items() if c["files"])
        for split, classes in splits.items()
        if split != REFERENCE_SPLIT
    )
    return [
        f"image size predicts the class in {REFERENCE_SPLIT}: {reference_shares[high]:.0%} of {high} "
        f"images are {common} against {reference_shares[low]:.0%} of {low}. Size stands for the source "
        "(scanner, hospital, exporter), so a model can learn the source instead of the anatomy"
        + (f". Share at {common} elsewhere: {others}" if others else "")
    ]
