"""Reading the data set once: every file's bytes, digest, header and size, and the thumbnails the search compares.

Each file becomes a :class:`FileRecord` with its path relative to the data root; a file that cannot be
read or decoded is recorded with the reason instead of stopping the audit. The digest is training's
:func:`~braintumor.data.dataset.file_digest`, so the audit's duplicate groups are the ones training drops.

Example:
    >>> import tempfile
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), per_class=2, size=32)
    >>> records, thumbnails, rows = read_all(root, discover_splits(root), workers=2, show_progress=False)
    >>> len(records), thumbnails.shape, split_summary(records, ["glioma"])["classes"]
    (16, (16, 2, 64, 64), {'glioma': 4})
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from braintumor.audit.constants import QUERY_SPLITS, REFERENCE_SPLIT
from braintumor.audit.similarity import DETAIL_SIZE, THUMBNAIL_SIZE, content_box
from braintumor.data.dataset import file_digest
from braintumor.data.images import decode_image_bytes, is_dicom, read_file_bytes
from braintumor.data.layout import Sample, discover_split, find_split_dir
from braintumor.errors import DatasetLayoutError, ImageDecodeError
from braintumor.progress import progress_bar


@dataclass
class FileRecord:
    """One file of the data set as the audit saw it; ``path`` is relative to the data root (POSIX)."""

    path: str
    split: str
    class_name: str
    bytes: int | None = None
    digest: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    error: str | None = None
    status: str | None = None


def file_entry(record: FileRecord) -> dict[str, str]:
    """How ``audit.json`` names a file in its groups and lists: path, split and class.

    Args:
        record: the file.
    """
    return {"path": record.path, "split": record.split, "class": record.class_name}


def discover_splits(root: Path) -> dict[str, list[Sample]]:
    """Every file of each split present under ``root`` (Training first), with its class.

    Args:
        root: the data root, holding ``<split>/<class>/<image>``.
    """
    if not root.is_dir():
        raise DatasetLayoutError(f"data folder {root} does not exist or is not a folder")
    splits: dict[str, list[Sample]] = {}
    for split in (REFERENCE_SPLIT, *QUERY_SPLITS):
        try:
            find_split_dir(root, split)
        except DatasetLayoutError:
            continue
        splits[split] = discover_split(root, split)
    if not splits:
        raise DatasetLayoutError(
            f"{root} has no Training, Validation or Testing folder; expected <root>/<split>/<class>/<image>"
        )
    return splits


def _header(data: bytes) -> tuple[str | None, str | None]:
    """File format and pixel mode as stored (before the RGB conversion every stage uses)."""
    if is_dicom(data):
        return "DICOM", None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format, image.mode
    except Exception:  # the decoder below reports the reason; the header is only informative
        return None, None


def _grey_thumbnail(image: Image.Image, size: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    # Squashed to a square on purpose: a copy resized with another aspect ratio still lines up.
    grey = image if image.mode == "L" else image.convert("L")
    pixels = (
        None if box is None else (box[0] * grey.width, box[1] * grey.height, box[2] * grey.width, box[3] * grey.height)
    )
    resized = grey.resize((size, size), Image.Resampling.BILINEAR, box=pixels, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8)


def _thumbnails(image: Image.Image) -> np.ndarray:
    """``[2, 64, 64]``: the whole frame, and the head's bounding box (a padded or cropped copy matches there)."""
    grey = image.convert("L")
    box = content_box(_grey_thumbnail(grey, DETAIL_SIZE))
    return np.stack([_grey_thumbnail(grey, THUMBNAIL_SIZE), _grey_thumbnail(grey, THUMBNAIL_SIZE, box)])


def _read_one(sample: Sample, root: Path, split: str) -> tuple[FileRecord, np.ndarray | None]:
    record = FileRecord(path=sample.path.relative_to(root).as_posix(), split=split, class_name=sample.class_name)
    try:
        data = read_file_bytes(sample.path)
    except ImageDecodeError as error:
        record.error = error.reason
        return record, None
    record.bytes, record.digest = len(data), file_digest(data)
    record.format, record.mode = _header(data)
    try:
        image = decode_image_bytes(data, sample.path)
    except ImageDecodeError as error:
        record.error = error.reason
        return record, None
    record.width, record.height = image.size
    record.mode = record.mode or image.mode
    return record, _thumbnails(image)


def read_all(
    root: Path, splits: dict[str, list[Sample]], workers: int, show_progress: bool
) -> tuple[list[FileRecord], np.ndarray, np.ndarray]:
    """Every file's record, the ``[N, 2, 64, 64]`` thumbnails of the decodable files, and each record's row.

    A record's row is its index into the thumbnails, or -1 when the file could not be decoded.

    Args:
        root: the data root; record paths are relative to it.
        splits: the files of each split, as :func:`discover_splits` lists them.
        workers: threads reading and decoding files.
        show_progress: draw a progress bar.
    """
    jobs = [(sample, split) for split, samples in splits.items() for sample in samples]
    records: list[FileRecord] = []
    thumbnails: list[np.ndarray] = []
    rows = np.full(len(jobs), -1, dtype=np.int64)
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(show_progress) as progress:
        task = progress.add_task("Reading images", total=len(jobs))
        for index, (record, thumbnail) in enumerate(pool.map(lambda job: _read_one(job[0], root, job[1]), jobs)):
            progress.advance(task)
            records.append(record)
            if thumbnail is not None:
                rows[index] = len(thumbnails)
                thumbnails.append(thumbnail)
    stacked = np.stack(thumbnails) if thumbnails else np.zeros((0, 2, THUMBNAIL_SIZE, THUMBNAIL_SIZE), np.uint8)
    return records, stacked, rows


def detail_thumbnail(path: Path) -> np.ndarray:
    """The ``128 x 128`` grey image of ``path`` that the aligned detail check compares.

    Args:
        path: an image the scan decoded; only files in candidate pairs need this size, so they are decoded
            again rather than kept from the scan.
    """
    image = decode_image_bytes(read_file_bytes(path), path)
    return _grey_thumbnail(image, DETAIL_SIZE)


def split_summary(records: Sequence[FileRecord], class_names: Iterable[str]) -> dict[str, Any]:
    """Counts of one split's files: decodable or not, per class, exact copies inside it, sizes, modes, formats.

    Args:
        records: the split's files.
        class_names: the classes to count, in order.
    """
    decodable = [r for r in records if r.error is None]
    sizes = Counter(f"{r.width}x{r.height}" for r in decodable)
    digests = [r.digest for r in records if r.digest is not None]
    groups = Counter(digests)
    return {
        "files": len(records),
        "decodable": len(decodable),
        "undecodable": len(records) - len(decodable),
        "classes": {name: sum(r.class_name == name for r in records) for name in class_names},
        "exact_duplicate_groups": sum(count > 1 for count in groups.values()),
        "redundant_exact_copies": len(digests) - len(groups),
        "distinct_sizes": len(sizes),
        "most_common_sizes": dict(sizes.most_common(10)),
        "modes": dict(Counter(r.mode or "unknown" for r in decodable).most_common()),
        "formats": dict(Counter(r.format or "unknown" for r in decodable).most_common()),
    }
