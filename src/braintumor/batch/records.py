"""The two steps every engine runs: decode an input to model-size pixels, then score pixels into result rows.

:func:`decode_input` reads one input of the plan. An image file (JPEG, PNG, BMP, TIFF, a single DICOM slice) is
decoded as ``braintumor predict`` decodes it and gives one :class:`Decoded`; a DICOM slice also carries its
study, series and position, so the slices of one series can be given a study-level finding afterwards. A
volume (a NIfTI file, a zip of a DICOM series, a multi-frame DICOM file) gives one :class:`Decoded` per axial
slice, for every series or 4D volume it holds. A file that cannot be read gives one :class:`Decoded` with the
reason in ``error``: it becomes an error row, never an exception that stops the batch.

:func:`score_decoded` runs the bundle's :class:`~braintumor.inference.predictor.Predictor` (PyTorch or ONNX,
with TTA and the input guard as configured) on the pixels and turns each answer into a row under the public
rule: an image the input guard flags has no class (``class_name`` None, ``flagged`` True, ``flag_reason``).
Both engines call these two functions, so they write the same rows.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.data.dicom import HEADER_FLAG_KEY
from braintumor.data.images import decode_image_bytes, is_dicom, read_file_bytes
from braintumor.data.preprocessing import Preprocessing, resize_to_uint8_tensor
from braintumor.errors import ImageDecodeError
from braintumor.guard.defaults import FLAG_REASON

# The study fields a row carries (None for a plain image): rows with the same study_key form one series.
STUDY_FIELDS = ("study_key", "study_uid", "series_uid", "position_mm", "instance_number")


@dataclass
class Decoded:
    """One image (or volume slice) ready to score, or the reason its input could not be read.

    ``rows_of_input`` is how many :class:`Decoded` its input gave (an engine knows an input is finished when it
    has seen that many rows of it).
    """

    item: int
    source: str
    kind: str
    pixels: np.ndarray | None = None
    slice_index: int | None = None
    header_flag: str | None = None
    error: str | None = None
    study: dict[str, Any] = field(default_factory=dict)
    rows_of_input: int = 1


def _dicom_study(data: bytes) -> dict[str, Any]:
    """Study, series, slice position (mm along the slice normal) and instance number from a DICOM header."""
    import pydicom

    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # the pixels decoded, so a header pydicom cannot re-read only loses the grouping
        return {}
    study, series = str(header.get("StudyInstanceUID", "") or ""), str(header.get("SeriesInstanceUID", "") or "")
    if not series:
        return {}
    position = None
    try:
        origin = np.asarray(header.ImagePositionPatient, dtype=np.float64)
        axes = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        position = float(origin @ np.cross(axes[:3], axes[3:]))
    except (AttributeError, ValueError, TypeError, IndexError):
        location = header.get("SliceLocation")
        position = None if location is None else float(location)
    number = header.get("InstanceNumber")
    return {
        "study_key": f"dicom:{study}/{series}",
        "study_uid": study or None,
        "series_uid": series,
        "position_mm": position,
        "instance_number": None if number in (None, "") else int(number),
    }


def _decode_image(item: int, path: Path, preprocessing: Preprocessing) -> list[Decoded]:
    data = read_file_bytes(path)
    image = decode_image_bytes(data, path)
    pixels = resize_to_uint8_tensor(image, preprocessing).numpy()
    dicom = is_dicom(data)
    return [
        Decoded(
            item,
            str(path),
            "dicom" if dicom else "image",
            pixels=pixels,
            header_flag=image.info.get(HEADER_FLAG_KEY),
            study=_dicom_study(data) if dicom else {},
        )
    ]


def _volume_requests(path: Path) -> list[tuple[str, Any]]:
    """``(study key, volume)`` for every series or 4D volume ``path`` holds."""
    from braintumor.data.volume_core import SeriesChoiceError
    from braintumor.data.volumes import VolumeRequest, load_volume

    try:
        return [(str(path), load_volume(path))]
    except SeriesChoiceError as error:
        volumes = []
        for choice in error.choices:
            if "series_uid" in choice:
                key, request = f"{path}#series={choice['series_uid']}", VolumeRequest(series_uid=choice["series_uid"])
            else:
                key, request = f"{path}#volume={choice['volume']}", VolumeRequest(volume_index=choice["volume"])
            volumes.append((key, load_volume(path, request)))
        return volumes


def _decode_volume(item: int, path: Path, preprocessing: Preprocessing) -> list[Decoded]:
    decoded = []
    for key, volume in _volume_requests(path):
        series = volume.series
        for index, image in enumerate(volume.slices):
            study = {
                "study_key": key,
                "study_uid": None if series is None else series.study_uid or None,
                "series_uid": None if series is None else series.series_uid or None,
                "position_mm": volume.positions_mm[index],
                "instance_number": None,
            }
            pixels = resize_to_uint8_tensor(image, preprocessing).numpy()
            decoded.append(
                Decoded(item, str(path), "volume", pixels, index, header_flag=volume.header_flag, study=study)
            )
    return decoded


def decode_input(item: int, source: str, preprocessing: Preprocessing) -> list[Decoded]:
    """Input ``item`` of the plan (the file ``source``) as model-size uint8 pixels ``[3, S, S]``, one per image
    or volume slice; an unreadable input gives one :class:`Decoded` whose ``error`` says why."""
    from braintumor.data.volumes import is_volume_input

    path = Path(source)
    try:
        decoded = (_decode_volume if is_volume_input(path) else _decode_image)(item, path, preprocessing)
    except ImageDecodeError as error:
        decoded = [Decoded(item, source, "error", error=error.reason)]
    except Exception as error:  # one damaged file must not stop a batch of thousands: its row says what failed
        decoded = [Decoded(item, source, "error", error=f"cannot read: {type(error).__name__}: {error}")]
    if not decoded:
        decoded = [Decoded(item, source, "error", error="holds no image")]
    for entry in decoded:
        entry.rows_of_input = len(decoded)
    return decoded


def empty_row(decoded: Decoded, class_names: Sequence[str]) -> dict[str, Any]:
    """A row with every column, the prediction's left empty (what an unreadable input's row is)."""
    row: dict[str, Any] = {
        "item": decoded.item,
        "source": decoded.source,
        "slice_index": decoded.slice_index,
        "kind": decoded.kind,
        "class_name": None,
        "confidence": None,
        **{f"p_{name}": None for name in class_names},
        "flagged": None,
        "flag_reason": None,
        "ood_score": None,
        "referred": None,
        "error": decoded.error,
    }
    row.update({name: decoded.study.get(name) for name in STUDY_FIELDS})
    return row


def row_order(row: dict[str, Any]) -> tuple[int, int]:
    """Rows in plan order, a volume's slices in slice order."""
    return row["item"], -1 if row["slice_index"] is None else row["slice_index"]


def score_decoded(predictor: Any, decoded: Sequence[Decoded]) -> list[dict[str, Any]]:
    """Score the readable entries of ``decoded`` in one call of ``predictor`` and return a row per entry.

    The guard's verdict and each image's DICOM header flag are applied as in the one-process path
    (:meth:`~braintumor.inference.predictor.Predictor.predict_images_checked`, then ``to_predictions``).
    """
    import torch

    from braintumor.inference.predictor import with_header_flag_texts

    names = list(predictor.class_names)
    readable = [entry for entry in decoded if entry.error is None]
    rows = [empty_row(entry, names) for entry in decoded if entry.error is not None]
    if readable:
        batch = torch.from_numpy(np.stack([entry.pixels for entry in readable]))
        probabilities, verdicts = predictor.predict_uint8_checked(batch)
        verdicts = with_header_flag_texts(verdicts, [entry.header_flag for entry in readable])
        predictions = predictor.to_predictions([entry.source for entry in readable], probabilities, verdicts)
        for entry, prediction in zip(readable, predictions, strict=True):
            flagged = prediction.out_of_distribution
            row = empty_row(entry, names)
            row.update(
                {
                    "class_name": None if flagged else prediction.class_name,
                    "confidence": prediction.confidence,
                    **{f"p_{name}": prediction.probabilities[name] for name in names},
                    "flagged": flagged,
                    "flag_reason": (prediction.flag_reason or FLAG_REASON) if flagged else None,
                    "ood_score": prediction.ood_score,
                    "referred": prediction.referred,
                }
            )
            rows.append(row)
    return sorted(rows, key=row_order)
