"""What a batch writes once every shard of every part is there: study-level findings and a summary.

Study-level findings: the rows of one series (the slices of a volume file, or the DICOM slice files sharing a
StudyInstanceUID and SeriesInstanceUID, wherever they lie in the tree) are put in slice order (a volume's own
order; DICOM slices by their position along the slice normal, then instance number) and given the study rule of
:func:`braintumor.inference.volume.study_finding`, the same rule ``braintumor predict`` applies to a volume.
A study holding several series gets one finding per series: the rule reads consecutive slices, which only a
series has. Gaps in the slice positions break runs, as for a volume.

The summary counts rows, errors, flags and classes, and checks that every input of the plan has rows and no
input has rows in two shards.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.batch.plan import BatchPlan
from braintumor.batch.shards import SUMMARY_FILE, need_pyarrow, read_shards, shard_done, temporary_path
from braintumor.data.volume_core import find_gaps
from braintumor.inference.volume import StudyRule, study_finding
from braintumor.io import write_json_atomic

STUDIES_STEM = "studies"


def _slice_order(row: dict[str, Any]) -> tuple:
    if row["kind"] == "volume":
        return (0, row["slice_index"], 0, "")
    position = row["position_mm"]
    number = row["instance_number"]
    return (position is None, position or 0.0, number if number is not None else 0, row["source"])


def _study_row(key: str, members: list[dict[str, Any]], class_names: Sequence[str], rule: StudyRule) -> dict:
    members = sorted(members, key=_slice_order)
    probabilities = np.array([[row[f"p_{name}"] for name in class_names] for row in members], dtype=np.float64)
    flagged = [bool(row["flagged"]) for row in members]
    record = {
        "study_key": key,
        "study_uid": members[0]["study_uid"],
        "series_uid": members[0]["series_uid"],
        "slices": len(members),
        "flagged_slices": sum(flagged),
    }
    if len(members) < rule.min_consecutive:
        reason = f"{len(members)} slice(s): the study rule needs {rule.min_consecutive} consecutive slices"
        return record | {"finding": "indeterminate", "reason": reason, "peak_source": None, "peak_slice": None}
    positions = [row["position_mm"] for row in members]
    finding = study_finding(probabilities, class_names, flagged=flagged, gaps_after=find_gaps(positions), rule=rule)
    peak = None if finding.peak_slice is None else members[finding.peak_slice]
    return record | {
        "finding": finding.finding,
        "reason": finding.reason,
        "peak_source": None if peak is None else peak["source"],
        "peak_slice": finding.peak_slice,  # its place in the series' slice order
        "peak_probability": finding.peak_probability,
    }


def study_rows(rows: Sequence[dict[str, Any]], class_names: Sequence[str], rule: StudyRule) -> list[dict]:
    """One finding per series among ``rows`` (rows without a study key or with an error are left out)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["study_key"] and row["error"] is None:
            groups[row["study_key"]].append(row)
    return [_study_row(key, groups[key], class_names, rule) for key in sorted(groups)]


def _write_studies(out_dir: Path, studies: list[dict[str, Any]]) -> list[str]:
    """``studies.parquet`` and ``studies.csv`` (nothing when no input had a series)."""
    if not studies:
        return []
    pa = need_pyarrow()
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    columns = ["study_key", "study_uid", "series_uid", "slices", "flagged_slices", "finding", "reason"]
    columns += ["peak_source", "peak_slice", "peak_probability"]
    table = pa.Table.from_pylist([{name: study.get(name) for name in columns} for study in studies])
    written = []
    for suffix, write in ((".csv", pcsv.write_csv), (".parquet", pq.write_table)):
        target = out_dir / f"{STUDIES_STEM}{suffix}"
        temporary = temporary_path(target)
        write(table, temporary)
        temporary.replace(target)
        written.append(target.name)
    return written


def summarise(rows: Sequence[dict[str, Any]], plan: BatchPlan) -> dict[str, Any]:
    """Counts over every row, and whether each input of the plan appears exactly once (in one shard)."""
    seen = Counter(row["item"] for row in rows)
    keys = Counter((row["item"], row["slice_index"]) for row in rows)
    missing = [plan.sources[i] for i in range(len(plan.sources)) if i not in seen]
    scored = [row for row in rows if row["error"] is None]
    return {
        "complete": not missing,
        "inputs": len(plan.sources),
        "rows": len(rows),
        "scored": len(scored),
        "errors": len(rows) - len(scored),
        "flagged": sum(bool(row["flagged"]) for row in scored),
        "referred": sum(bool(row["referred"]) for row in scored),
        "classes": dict(sorted(Counter(row["class_name"] for row in scored if row["class_name"]).items())),
        "inputs_missing": missing[:20],
        "rows_repeated": sum(count - 1 for count in keys.values() if count > 1),
    }


def finish_batch(out_dir: Path, plan: BatchPlan, class_names: Sequence[str], rule: StudyRule) -> dict[str, Any] | None:
    """When every shard of every part is written: write the study findings and ``summary.json``; else None.

    Any part may be the last to finish, and a rerun writes the same files again: the result is the same.
    """
    if not all(shard_done(out_dir, shard) for shard in plan.all_shards()):
        return None
    rows = read_shards(out_dir).to_pylist()
    summary = summarise(rows, plan)
    studies = study_rows(rows, class_names, rule)
    summary["studies"] = len(studies)
    summary["study_findings"] = dict(sorted(Counter(study["finding"] for study in studies).items()))
    summary["study_rule"] = rule.describe()
    summary["files"] = _write_studies(out_dir, studies)
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    return summary
