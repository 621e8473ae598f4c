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
    >>> thumbnails.close()
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from braintumor.auditing.cache import AuditCache, FileRow, decode_pixels, encode_pixels
from braintumor.auditing.constants import QUERY_SPLITS, REFERENCE_SPLIT
from braintumor.auditing.similarity import DETAIL_SIZE, THUMBNAIL_SIZE, content_box
from braintumor.auditing.thumbnail_store import ThumbnailStore
from braintumor.data.dataset import file_digest
from braintumor.data.images import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    decode_image_bytes,
    is_dicom,
    read_file_bytes,
)
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


# What decides a file's cached values besides the code (braintumor.auditing.cache.fingerprint hashes that).
CACHE_SETTINGS = {
    "thumbnail_size": THUMBNAIL_SIZE,
    "detail_size": DETAIL_SIZE,
    "max_pixels": DEFAULT_MAX_PIXELS,
    "max_file_bytes": DEFAULT_MAX_FILE_BYTES,
}
# Files decoded between cache commits: an interrupted scan loses at most this many.
CACHE_COMMIT_EVERY = 256
# How a file was handled: not read (trusted stat), read and hashed only, decoded, or not readable.
REUSED, REHASHED, DECODED, UNREAD = "reused", "rehashed", "decoded", "unread"
_HEADER_FIELDS = ("bytes", "width", "height", "mode", "format", "error")
_THUMBNAIL_SHAPE = (2, THUMBNAIL_SIZE, THUMBNAIL_SIZE)


@dataclass
class _Read:
    """One file's outcome: its record and thumbnails, and the cache rows it adds (None: nothing to store)."""

    record: FileRecord
    thumbnails: np.ndarray | None
    file_row: tuple[str, FileRow] | None = None
    content: tuple[str, dict[str, Any], bytes | None, bytes | None] | None = None
    how: str = DECODED


@dataclass
class _Known:
    """The cache's rows, loaded once before the scan (the worker threads only read them)."""

    files: dict[str, FileRow]
    contents: dict[str, tuple[dict[str, Any], bytes | None]]


@dataclass
class _Pending:
    """Rows waiting for the next commit, and the counts for the cache's stats."""

    files: list[tuple[str, FileRow]] = field(default_factory=list)
    contents: list[tuple[str, dict[str, Any], bytes | None, bytes | None]] = field(default_factory=list)

    def add(self, result: _Read, cache: AuditCache) -> None:
        stats = cache.stats
        stats.files_rehashed += result.how == REHASHED
        stats.files_decoded += result.how == DECODED
        if result.file_row is not None:
            self.files.append(result.file_row)
        if result.content is not None:
            self.contents.append(result.content)
        if len(self.files) >= CACHE_COMMIT_EVERY:
            self.flush(cache)

    def flush(self, cache: AuditCache) -> None:
        # Contents first in the same transaction: a file row never points at a digest without its content.
        cache.store(self.files, self.contents)
        self.files, self.contents = [], []


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


def _thumbnails(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """``[2, 64, 64]``: the whole frame, and the head's bounding box (a padded or cropped copy matches there);
    and the ``128 x 128`` detail image (:func:`detail_thumbnail`), which the box is found on anyway."""
    grey = image.convert("L")
    detail = _grey_thumbnail(grey, DETAIL_SIZE)
    box = content_box(detail)
    return np.stack([_grey_thumbnail(grey, THUMBNAIL_SIZE), _grey_thumbnail(grey, THUMBNAIL_SIZE, box)]), detail


def _decode_into(record: FileRecord, data: bytes, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Fill ``record`` from the file's bytes; its thumbnails and detail image, or None when it does not decode."""
    record.bytes, record.digest = len(data), file_digest(data)
    record.format, record.mode = _header(data)
    try:
        image = decode_image_bytes(data, path)
    except ImageDecodeError as error:
        record.error = error.reason
        return None
    record.width, record.height = image.size
    record.mode = record.mode or image.mode
    return _thumbnails(image)


def _new_record(sample: Sample, root: Path, split: str) -> FileRecord:
    return FileRecord(path=sample.path.relative_to(root).as_posix(), split=split, class_name=sample.class_name)


def _read_one(sample: Sample, root: Path, split: str) -> _Read:
    record = _new_record(sample, root, split)
    try:
        data = read_file_bytes(sample.path)
    except ImageDecodeError as error:
        record.error = error.reason
        return _Read(record, None, how=UNREAD)
    images = _decode_into(record, data, sample.path)
    return _Read(record, None if images is None else images[0], how=DECODED)


def _from_content(record: FileRecord, digest: str, content: tuple[dict[str, Any], bytes | None]) -> np.ndarray | None:
    """Fill ``record`` from a cached content row; its thumbnails (an empty array when undecodable), None if damaged."""
    header, blob = content
    if not set(_HEADER_FIELDS) <= set(header):
        return None
    thumbnails = np.zeros(0, np.uint8) if header["error"] is not None else decode_pixels(blob, _THUMBNAIL_SHAPE)
    if thumbnails is None:
        return None
    for name in _HEADER_FIELDS:
        setattr(record, name, header[name])
    record.digest = digest
    return thumbnails


def _reuse(sample: Sample, root: Path, split: str, known: _Known) -> _Read | None:
    """The file's cached outcome when its size and modification time match a trusted row (nothing is read)."""
    record = _new_record(sample, root, split)
    row = known.files.get(record.path)
    if row is None or row.digest not in known.contents:
        return None
    try:
        stat = sample.path.stat()
    except OSError:
        return None
    if not row.trusted(stat.st_size, stat.st_mtime_ns):
        return None
    thumbnails = _from_content(record, row.digest, known.contents[row.digest])
    return None if thumbnails is None else _Read(record, thumbnails if thumbnails.size else None, how=REUSED)


def _read_cached(sample: Sample, root: Path, split: str, known: _Known) -> _Read:
    """One file the cache could not vouch for by its stat: reused after hashing when its bytes are known,
    else decoded; with the rows to store."""
    record = _new_record(sample, root, split)
    # Taken before the stat and the read: a change after them gives the file a newer time than the row's.
    verified_ns = time.time_ns()
    try:
        stat = sample.path.stat()
    except OSError:
        return _read_one(sample, root, split)
    try:
        data = read_file_bytes(sample.path)
    except ImageDecodeError as error:
        record.error = error.reason
        return _Read(record, None, how=UNREAD)
    digest = file_digest(data)
    new_row = (record.path, FileRow(stat.st_size, stat.st_mtime_ns, verified_ns, digest))
    if digest in known.contents:
        thumbnails = _from_content(record, digest, known.contents[digest])
        if thumbnails is not None:
            return _Read(record, thumbnails if thumbnails.size else None, new_row, how=REHASHED)
    images = _decode_into(record, data, sample.path)
    header = {name: getattr(record, name) for name in _HEADER_FIELDS}
    blobs = (None, None) if images is None else (encode_pixels(images[0]), encode_pixels(images[1]))
    return _Read(record, None if images is None else images[0], new_row, (digest, header, *blobs), DECODED)


def read_all(
    root: Path,
    splits: dict[str, list[Sample]],
    workers: int,
    show_progress: bool,
    cache: AuditCache | None = None,
    scratch_dir: Path | None = None,
) -> tuple[list[FileRecord], ThumbnailStore, np.ndarray]:
    """Every file's record, the ``[N, 2, 64, 64]`` thumbnails on disk, and each record's row in them.

    A record's row is its index into the thumbnails, or -1 when the file could not be decoded. The
    thumbnails go to a :class:`~braintumor.auditing.thumbnail_store.ThumbnailStore` as files are read, so
    memory does not grow with the data set; close it when done. With a cache, files it knows are not
    decoded again, and what was decoded is stored every :data:`CACHE_COMMIT_EVERY` files (also when the
    scan stops with an error or Ctrl-C).

    Args:
        root: the data root; record paths are relative to it.
        splits: the files of each split, as :func:`discover_splits` lists them.
        workers: threads reading and decoding files.
        show_progress: draw a progress bar.
        cache: the audit cache, or None to read every file.
        scratch_dir: the folder of the thumbnails' temporary file (default: the system's temporary folder).
    """
    jobs = [(sample, split) for split, samples in splits.items() for sample in samples]
    active = cache is not None and cache.active
    known = _Known(cache.known_files(), cache.known_contents()) if active and cache is not None else _Known({}, {})
    store = ThumbnailStore(len(jobs), _THUMBNAIL_SHAPE, scratch_dir)
    records: list[FileRecord | None] = [None] * len(jobs)
    rows = np.full(len(jobs), -1, dtype=np.int64)

    def keep(index: int, result: _Read) -> None:
        # Only the record stays in memory: the thumbnails go to disk at once.
        records[index] = result.record
        if result.thumbnails is not None:
            store.write(index, result.thumbnails)
            rows[index] = index

    # Reused files need only a stat: checked here, so the thread pool gets only the files to read.
    todo = []
    for index, (sample, split) in enumerate(jobs):
        reused = _reuse(sample, root, split, known) if active else None
        if reused is None:
            todo.append(index)
        else:
            keep(index, reused)
    try:
        _read_todo(todo, jobs, root, known if active else None, workers, show_progress, cache, keep)
    except BaseException:
        store.close()
        raise
    return [record for record in records if record is not None], store, rows


def _read_todo(
    todo: list[int],
    jobs: list[tuple[Sample, str]],
    root: Path,
    known: _Known | None,
    workers: int,
    show_progress: bool,
    cache: AuditCache | None,
    keep: Callable[[int, _Read], None],
) -> None:
    """Read and decode the files at ``todo`` on a thread pool, handing each result to ``keep`` in order."""
    pending = _Pending()

    def work(index: int) -> _Read:
        sample, split = jobs[index]
        return _read_cached(sample, root, split, known) if known is not None else _read_one(sample, root, split)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        with progress_bar(show_progress) as progress:
            task = progress.add_task("Reading images", total=len(jobs), completed=len(jobs) - len(todo))
            for index, result in zip(todo, pool.map(work, todo), strict=True):
                progress.advance(task)
                keep(index, result)
                if cache is not None:
                    pending.add(result, cache)
    except BaseException:
        # Ctrl-C or an error: do not decode the files still queued (the finished ones are stored below).
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        if cache is not None:
            cache.stats.files_reused += len(jobs) - len(todo)
            pending.flush(cache)


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
