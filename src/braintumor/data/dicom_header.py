"""A DICOM header gate before the network: what the header says the image is, checked before any pixel is used.

The classifier reads brain MR slices. A DICOM header often says plainly that an input is something else, and
that is cheaper and surer than any pixel statistic. :func:`check_dicom_header` is a pure function of a pydicom
dataset (pixels are never read) returning a :class:`HeaderVerdict`:

- ``refuse``: ``Modality`` is present and is not ``MR`` (CT, US, NM, CR, DX, PT, ...): "modality CT: this
  model reads MR images";
- ``flag``: ``BodyPartExamined``, the first ``AnatomicRegionSequence`` item's code meaning, ``StudyDescription``
  or ``SeriesDescription`` names a region other than the head or brain (KNEE, ABDOMEN, CHEST, SPINE,
  PELVIS, ...) and none of them names the head or brain: the input is processed and marked flagged, with
  that reason;
- ``pass``: otherwise, including missing or unknown values, which are left to the pixel guard.

Readers (:mod:`braintumor.data.dicom`, :mod:`braintumor.data.dicom_series`) raise
:class:`HeaderRefusedError` for a refusal and record a flag's reason on what they return. The gate lives with
the readers that apply it (a data step may not import the guard); :mod:`braintumor.guard.dicom_header`
exports the same names beside the pixel guard.

Example:
    >>> from pydicom.dataset import Dataset
    >>> ds = Dataset()
    >>> ds.Modality, ds.BodyPartExamined = "MR", "KNEE"
    >>> check_dicom_header(ds)
    HeaderVerdict(action='flag', reason='body part examined KNEE: this model reads brain MR images')
    >>> ds.Modality = "CT"
    >>> check_dicom_header(ds).reason
    'modality CT: this model reads MR images'
    >>> check_dicom_header(Dataset()).action
    'pass'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from braintumor.errors import ImageDecodeError

Action = Literal["pass", "flag", "refuse"]
ACCEPTED_MODALITY = "MR"
# Words that name the head or brain (BodyPartExamined defined terms and common description words).
HEAD_WORDS = frozenset(
    [
        "HEAD",
        "BRAIN",
        "SKULL",
        "CRANIUM",
        "CEREBRUM",
        "CEREBRAL",
        "CEREBELLUM",
        "NEURO",
        "NEURORAD",
        "INTRACRANIAL",
        "PITUITARY",
        "SELLA",
        "SELLAR",
        "HYPOPHYSIS",
        "ORBIT",
        "ORBITS",
        "IAC",
        "IACS",
        "HEADNECK",
    ]
)
# Words that name another region; BodyPartExamined's defined terms first, then description words.
OTHER_REGION_WORDS = frozenset(
    [
        "KNEE",
        "ABDOMEN",
        "ABD",
        "ABDOMINAL",
        "CHEST",
        "THORAX",
        "THORACIC",
        "SPINE",
        "CSPINE",
        "TSPINE",
        "LSPINE",
        "SSPINE",
        "CTSPINE",
        "TLSPINE",
        "LSSPINE",
        "SPINAL",
        "LUMBAR",
        "SACRUM",
        "COCCYX",
        "PELVIS",
        "PELVIC",
        "HIP",
        "HIPS",
        "SHOULDER",
        "ELBOW",
        "WRIST",
        "HAND",
        "FINGER",
        "ANKLE",
        "FOOT",
        "TOE",
        "LEG",
        "ARM",
        "THIGH",
        "FEMUR",
        "TIBIA",
        "HUMERUS",
        "EXTREMITY",
        "BREAST",
        "HEART",
        "CARDIAC",
        "AORTA",
        "LIVER",
        "KIDNEY",
        "RENAL",
        "PANCREAS",
        "PROSTATE",
        "UTERUS",
        "OVARY",
        "BLADDER",
        "LUNG",
        "LUNGS",
        "MSK",
        "WHOLEBODY",
        "TMJ",
        "NECK",
    ]
)
_WORD = re.compile(r"[A-Z]+")


@dataclass(frozen=True)
class HeaderVerdict:
    """The gate's verdict: ``pass``, ``flag`` (processed, marked) or ``refuse`` (not processed), and why."""

    action: Action
    reason: str = ""


class HeaderRefusedError(ImageDecodeError):
    """A DICOM input whose header says it is not what the model reads (another modality); names file and reason."""


PASS = HeaderVerdict("pass")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return " ".join(str(item) for item in value)
    return str(value)


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.upper()))


def _region_fields(dataset: Any) -> list[tuple[str, str]]:
    """``(what, text)`` of every header field that may name the examined region, in order of authority."""
    fields = [("body part examined", _text(dataset.get("BodyPartExamined")))]
    try:
        regions = dataset.get("AnatomicRegionSequence") or []
        fields.append(("anatomic region", _text(regions[0].get("CodeMeaning")) if len(regions) else ""))
    except (TypeError, AttributeError, IndexError):
        pass  # a malformed sequence names no region
    fields.append(("study description", _text(dataset.get("StudyDescription"))))
    fields.append(("series description", _text(dataset.get("SeriesDescription"))))
    return [(what, text.strip()) for what, text in fields if text.strip()]


def region_verdict(dataset: Any) -> HeaderVerdict:
    """``flag`` when a region field names another region than the head or brain and none names the head."""
    fields = _region_fields(dataset)
    if any(_words(text) & HEAD_WORDS for _, text in fields):
        return PASS
    for what, text in fields:
        if _words(text) & OTHER_REGION_WORDS:
            return HeaderVerdict("flag", f"{what} {text}: this model reads brain MR images")
    return PASS


def check_dicom_header(dataset: Any) -> HeaderVerdict:
    """The header gate's verdict on a pydicom dataset (see the module docstring); never raises."""
    try:
        modality = _text(dataset.get("Modality")).strip().upper()
        if modality and modality != ACCEPTED_MODALITY:
            return HeaderVerdict("refuse", f"modality {modality}: this model reads MR images")
        return region_verdict(dataset)
    except Exception:  # a header too broken to read names nothing: the pixel guard decides
        return PASS


__all__ = ["HeaderRefusedError", "HeaderVerdict", "check_dicom_header", "region_verdict"]
