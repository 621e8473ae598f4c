"""What an adapted bundle was adapted on, and whether the evaluated images are among those images.

An adaptation fitted on the very images it is scored on is transductive: its accuracy there is not an estimate
for new images of the site. ``evaluate`` and ``report.html`` show this section and warn on any overlap.

Example:
    >>> adaptation_summary(None, ["a"]) is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from braintumor.bundle import AdaptationRecord


def adaptation_summary(record: AdaptationRecord | None, evaluated_digests: Sequence[str]) -> dict[str, Any] | None:
    """``metrics["adaptation"]``: the method, the images (count, manifest, folder), the evidence and the overlap
    (by content hash) of the evaluated images with the adaptation images; ``None`` for a bundle never adapted.

    Example:
        >>> record = AdaptationRecord(method="em", source_bundle="b", images_root="site", n_images=2,
        ...                           manifest_sha256="0" * 64, image_digests=["x", "y"])
        >>> summary = adaptation_summary(record, ["x", "z"])
        >>> summary["n_overlap"], summary["warning"] is not None
        (1, True)
    """
    if record is None:
        return None
    adapted_on = set(record.image_digests)
    overlap = sum(1 for digest in evaluated_digests if digest in adapted_on)
    warning = None
    if overlap:
        warning = (
            f"{overlap} of the {len(evaluated_digests)} evaluated images were among the {record.n_images} images "
            f"this bundle was adapted on: the scores on them are transductive, not an estimate for new images"
        )
    return {
        "method": record.method,
        "applied": record.settings.get("applied", record.method),
        "n_images": record.n_images,
        "images_root": record.images_root,
        "manifest_sha256": record.manifest_sha256,
        "source_bundle": record.source_bundle,
        "created_utc": record.created_utc,
        "near_source": record.evidence.get("near_source"),
        "evidence": record.evidence.get("explanation"),
        "adaptation_warnings": list(record.warnings),
        "n_overlap": overlap,
        "warning": warning,
    }


def adaptation_text(summary: dict[str, Any] | None) -> str | None:
    """One line saying what the bundle was adapted on (``None`` when it was not adapted).

    Example:
        >>> adaptation_text({"applied": "em", "n_images": 5, "images_root": "site", "manifest_sha256": "ab" * 32,
        ...                  "source_bundle": "b"})
        'adapted (em) on 5 unlabelled images from site (manifest abababababab), from bundle b'
    """
    if summary is None:
        return None
    return (
        f"adapted ({summary['applied'] or 'nothing applied'}) on {summary['n_images']} unlabelled images from "
        f"{summary['images_root']} (manifest {summary['manifest_sha256'][:12]}), from bundle {summary['source_bundle']}"
    )
