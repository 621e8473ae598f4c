"""The DICOM header gate before the network, beside the pixel guard: see :mod:`braintumor.data.dicom_header`.

A pure function over a pydicom dataset: ``refuse`` another modality than MR, ``flag`` a header that names another
body region than the head or brain, ``pass`` otherwise (missing or unknown values go on to the pixel guard).

Example:
    >>> from pydicom.dataset import Dataset
    >>> header = Dataset()
    >>> header.Modality = "US"
    >>> check_dicom_header(header)
    HeaderVerdict(action='refuse', reason='modality US: this model reads MR images')
"""

from __future__ import annotations

from braintumor.data.dicom_header import (
    HEAD_WORDS,
    OTHER_REGION_WORDS,
    HeaderRefusedError,
    HeaderVerdict,
    check_dicom_header,
    region_verdict,
)

__all__ = [
    "HEAD_WORDS",
    "OTHER_REGION_WORDS",
    "HeaderRefusedError",
    "HeaderVerdict",
    "check_dicom_header",
    "region_verdict",
]
