"""Batch prediction over large trees and archives: resumable shards, job arrays, Ray clusters.

:func:`run_batch` predicts every input of a list of files and folders into Parquet and CSV shards under an output
folder (:mod:`braintumor.batch.shards`), with the engine chosen: ``local`` (this process, optionally one part of
a job array) or ``ray`` (Ray Data on a cluster). :func:`read_shards` reads the rows back. The public entry is
:meth:`braintumor.api.Bundle.predict_batch` (``braintumor predict BUNDLE SOURCE... --out-dir OUT``).

Example:
    >>> from braintumor.batch import plan_batch
    >>> plan_batch.__name__
    'plan_batch'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from braintumor.lazy import lazy_exports

if TYPE_CHECKING:
    from braintumor.batch.plan import BatchPlan, plan_batch
    from braintumor.batch.run import run_batch
    from braintumor.batch.shards import read_shards

_EXPORTS = {
    "BatchPlan": "braintumor.batch.plan",
    "plan_batch": "braintumor.batch.plan",
    "run_batch": "braintumor.batch.run",
    "read_shards": "braintumor.batch.shards",
}

__all__ = ["BatchPlan", "plan_batch", "read_shards", "run_batch"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
