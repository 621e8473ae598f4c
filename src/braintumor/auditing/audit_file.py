"""The written audit read back: where ``audit.json`` lives, checking it, and the clean subset evaluation scores.

``braintumor evaluate`` finds the audit of its data root (:func:`find_audit_file`), and keeps the images
the audit called clean after checking that each file's bytes still match (:func:`clean_subset`).

Example:
    >>> default_audit_dir("/data/brain-tumor-mri").as_posix(), canonical_split("test")
    ('audits/brain-tumor-mri', 'Testing')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.auditing.constants import (
    AUDIT_FILE,
    AUDIT_FORMAT,
    AUDIT_VERSION,
    DEFAULT_AUDIT_ROOT,
    QUERY_SPLITS,
    REFERENCE_SPLIT,
    STATUS_CLEAN,
    STATUS_EXACT,
    STATUS_NEAR,
)
from braintumor.data.layout import _SPLIT_ALIASES
from braintumor.errors import BrainTumorError
from braintumor.io import read_json_object


class AuditError(BrainTumorError):
    """An audit file that is missing, unreadable or does not describe the data being evaluated."""


def default_audit_dir(data_root: Path | str) -> Path:
    """``audits/<data-root-name>`` under the working directory: where the audit goes and evaluate looks.

    Args:
        data_root: the audited data root.
    """
    return DEFAULT_AUDIT_ROOT / Path(data_root).resolve().name


def canonical_split(split: str) -> str:
    """``Training``, ``Validation`` or ``Testing`` for any accepted folder name (``test``, ``val``, ...).

    Args:
        split: a split name as given; one that is not recognised comes back unchanged.
    """
    for canonical in (REFERENCE_SPLIT, *QUERY_SPLITS):
        if split.lower() in _SPLIT_ALIASES[canonical.lower()]:
            return canonical
    return split


def find_audit_file(data_root: Path | str, audit: Path | str | None = None) -> Path | None:
    """``audit`` (a file or a folder holding ``audit.json``), else the default location for ``data_root``.

    Returns None when no audit was named and none exists at the default location; raises
    :class:`AuditError` when a named audit does not exist.

    Args:
        data_root: the data root the audit describes.
        audit: an ``audit.json`` or its folder; None looks in :func:`default_audit_dir`.
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
    """Read an ``audit.json``, checking that it is one of this format and version.

    Args:
        path: the ``audit.json``.
    """
    audit = read_json_object(path, AUDIT_FORMAT)
    if isinstance(audit, str):
        raise AuditError(f"{path}: not a usable braintumor audit: {audit}")
    if audit.get("version") != AUDIT_VERSION:
        raise AuditError(f"{path}: audit version {audit.get('version')} is not {AUDIT_VERSION}; run the audit again")
    return audit


def load_clean_test_paths(
    data_root: Path | str, audit: Path | str | None = None, split: str = "Testing"
) -> set[Path] | None:
    """The files of ``split`` with no exact or near copy in Training, as ``data_root / relative path``.

    None when there is no audit or it did not search for near copies of that split.

    Args:
        data_root: the audited data root.
        audit: an ``audit.json`` or its folder; None reads the default audit of ``data_root``.
        split: the split whose clean manifest is read.
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

    Args:
        audit_path: the ``audit.json``.
        data_root: the data root the evaluated paths lie under.
        split: the evaluated split (any accepted folder name).
        paths: the evaluated images, in evaluation order.
        digests: each image's :func:`~braintumor.data.dataset.file_digest`.
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
