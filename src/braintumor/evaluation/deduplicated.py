"""Metrics on the audit's clean subset of a split: the images with no exact or near copy in Training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.auditing.audit_file import AuditError, canonical_split, clean_subset, default_audit_dir, find_audit_file
from braintumor.auditing.constants import AUDIT_FILE, REFERENCE_SPLIT
from braintumor.evaluation.metrics import bootstrap_confidence_intervals, classification_metrics


def deduplicated_metrics(
    data_root: Path | str,
    split: str,
    paths: Sequence[Path],
    digests: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: list[str],
    audit: Path | str | None = None,
    *,
    n_bootstrap: int = 1000,
) -> tuple[dict[str, Any] | None, str | None]:
    """Metrics on the audit's clean subset of an evaluated split, or ``(None, why not)``.

    With ``audit`` given, a missing or stale audit is an :class:`AuditError`; without it, the default
    audit is used when present and a stale one is reported in the note instead of failing evaluate.
    Training has no clean subset (it is the reference): ``(None, None)``.
    """
    split = canonical_split(split)
    if split == REFERENCE_SPLIT:
        return None, None
    path = find_audit_file(data_root, audit)
    if path is None:
        return None, (
            f"no data audit at {default_audit_dir(data_root) / AUDIT_FILE}: run `braintumor audit "
            f"{data_root}` to also report the deduplicated {split} split"
        )
    try:
        subset = clean_subset(path, data_root, split, paths, digests)
    except AuditError as error:
        if audit is not None:
            raise
        return None, f"deduplicated metrics skipped: {error}"
    if len(subset.indices) == 0:
        return None, f"the audit {path} leaves no clean image in {split}"
    clean_labels, clean_probabilities = labels[subset.indices], probabilities[subset.indices]
    metrics = classification_metrics(clean_labels, clean_probabilities, class_names)
    if n_bootstrap > 0:
        # A few hundred clean images give wide intervals: report them with the point values.
        metrics["confidence_intervals"] = bootstrap_confidence_intervals(
            clean_labels,
            clean_probabilities.argmax(axis=1),
            len(class_names),
            n_resamples=n_bootstrap,
            class_names=class_names,
        )
    metrics.update(
        audit=str(path.resolve()),
        excluded_exact_copies=subset.excluded_exact,
        excluded_near_copies=subset.excluded_near,
        official_n_images=len(paths),
        excluded_paths=[str(paths[i]) for i in subset.excluded],
    )
    return metrics, None
