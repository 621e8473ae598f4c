"""A volume prediction as files: one CSV row per slice, and JSON with the input, the study finding and every slice.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> from braintumor.data.volume_core import Volume
    >>> from braintumor.inference.volume import SliceResult, VolumeResult, study_finding
    >>> names = ["glioma", "meningioma", "no_tumor", "pituitary"]
    >>> p = {"glioma": 0.1, "meningioma": 0.1, "no_tumor": 0.7, "pituitary": 0.1}
    >>> slices = [SliceResult(i, 2.5 * i, "no_tumor", p, False, 0.2) for i in range(3)]
    >>> study = study_finding(np.array([list(p.values())] * 3), names, flagged=[False] * 3, gaps_after=[])
    >>> volume = Volume("demo.nii.gz", "NIfTI", [], [0.0, 2.5, 5.0], (8, 8, 3), (1.0, 1.0, 2.5), "axial")
    >>> result = VolumeResult(volume, slices, study, "tiny", "0123456789ab", names)
    >>> path = Path(tempfile.mkdtemp()) / "slices.csv"
    >>> write_volume_csv(path, result)
    >>> path.read_text().splitlines()[0]
    'index,position_mm,class,p_glioma,p_meningioma,p_no_tumor,p_pituitary,flagged,flag_reason,out_of_distribution,ood_score,sop_instance_uid,frame_number'

A slice the input guard flags has no class (empty in the CSV, null in the JSON), ``flagged`` true and a
``flag_reason``; its probabilities stay, but they are not a diagnosis.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from braintumor.guard.defaults import FLAG_REASON
from braintumor.inference.volume import VolumeResult

# FLAG_REASON (re-exported for the output surfaces): why a flagged input has no class when no more specific reason
# is known; the guard's own reasons (braintumor.guard.reasons) say more.
__all__ = ["FLAG_REASON"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def write_volume_csv(path: Path, result: VolumeResult) -> None:
    """One row per axial slice, inferior to superior: position, class, probabilities, guard verdict, DICOM image."""
    names = result.class_names
    header = ["index", "position_mm", "class", *[f"p_{n}" for n in names]]
    header += ["flagged", "flag_reason", "out_of_distribution", "ood_score", "sop_instance_uid", "frame_number"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for item in result.slices:
            flagged = item.out_of_distribution
            shown = None if flagged else item.class_name
            row = [item.index, item.position_mm, shown, *[item.probabilities[n] for n in names]]
            row += [flagged, (item.flag_reason or FLAG_REASON) if flagged else None, flagged, item.ood_score]
            row += [item.sop_instance_uid, item.frame_number]
            writer.writerow([_cell(value) for value in row])


def public_slice(record: dict[str, Any]) -> dict[str, Any]:
    """A slice's JSON record under the public rule: a flagged slice has no class and says why.

    Example:
        >>> public_slice({"class_name": "glioma", "out_of_distribution": True})["class_name"] is None
        True
    """
    flagged = record.get("out_of_distribution")
    return {
        **record,
        "class_name": None if flagged else record["class_name"],
        "flagged": flagged,
        "flag_reason": (record.get("flag_reason") or FLAG_REASON) if flagged else None,
    }


def write_volume_json(path: Path, result: VolumeResult, extra: dict[str, Any] | None = None) -> None:
    """The input's description, the model, the study finding with its rule, and every slice (flagged: no class)."""
    payload = {**result.to_json(), **(extra or {})}
    payload["slices"] = [public_slice(record) for record in payload["slices"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
