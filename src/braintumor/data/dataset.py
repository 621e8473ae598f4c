"""Read a split's images, split it stratified, and serve it to PyTorch.

Two ways to hold a split: :func:`scan_images` reads every file once to hash and check it, keeps only
paths, labels and hashes, and decodes the pixels again per batch when they are needed (a DataLoader
with bounded prefetch; memory does not grow with the data); :func:`load_images` decodes every image
once into one uint8 tensor (fast for small sets, memory linear in the data). Both give bitwise the same
pixels, both skip and report undecodable files.

Example:
    >>> import torch
    >>> labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    >>> train_idx, val_idx = stratified_split(labels, val_fraction=0.5, seed=0)
    >>> sorted(labels[val_idx].tolist())
    [0, 0, 1, 1]
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from braintumor.classes import CLASS_NAMES
from braintumor.config import Recipe
from braintumor.data.images import SkippedFile, decode_image_bytes, read_file_bytes
from braintumor.data.layout import Sample
from braintumor.data.preprocessing import Preprocessing, resize_to_uint8_tensor
from braintumor.errors import DatasetLayoutError, ImageDecodeError
from braintumor.progress import progress_bar


@dataclass
class ImageSet:
    """The images of one split, aligned with ``labels``, ``paths`` and ``hashes``.

    ``images`` is ``[N, 3, S, S]`` uint8 when the split was decoded into memory (:func:`load_images`), or
    ``None`` when it is decoded from disk per batch with ``prep`` (:func:`scan_images`). Read pixels through
    :meth:`batches` or :meth:`image`, which work either way.
    """

    images: torch.Tensor | None
    labels: torch.Tensor
    paths: list[Path]
    hashes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    # How the files are decoded when ``images`` is None (the preprocessing they were scanned for).
    prep: Preprocessing | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def streaming(self) -> bool:
        """True when the pixels are decoded from disk per batch, not held in memory."""
        return self.images is None

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSet:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(
            images=None if self.images is None else self.images[index],
            labels=self.labels[index],
            paths=[self.paths[i] for i in index.tolist()],
            hashes=[self.hashes[i] for i in index.tolist()],
            skipped=list(self.skipped),
            prep=self.prep,
        )

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(CLASS_NAMES)).tolist()
        return dict(zip(CLASS_NAMES, counts, strict=True))

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``[3, S, S]`` uint8 (decoded from its file when the set streams)."""
        if self.images is not None:
            return self.images[index]
        return decode_path(self.paths[index], self._prep())

    def batches(self, batch_size: int, *, workers: int | None = None) -> Iterator[torch.Tensor]:
        """Consecutive uint8 batches ``[<=batch_size, 3, S, S]`` in the set's order.

        A streaming set decodes them in ``workers`` processes (default :func:`decode_workers`) a few batches
        ahead of the caller, so decoding overlaps with the network; at most ``2 * workers`` batches wait.
        """
        if self.images is not None:
            for start in range(0, len(self), batch_size):
                yield self.images[start : start + batch_size]
            return
        yield from image_loader(DecodedImages(self.paths, self._prep()), batch_size, workers=workers)

    def _prep(self) -> Preprocessing:
        if self.prep is None:
            raise ValueError("this image set holds neither decoded images nor the preprocessing to decode them")
        return self.prep


def file_digest(data: bytes) -> str:
    """Content hash of a file's bytes (blake2b, 128 bits): equal digests mean byte-identical files.

    Training's duplicate dropping and the data audit (:mod:`braintumor.auditing.scan`) both use it, so
    their exact-copy groups are the same.
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _decode_one(sample: Sample, prep: Preprocessing | None) -> tuple[torch.Tensor | None, str] | SkippedFile:
    """The file's pixels at the model's size (or ``None`` without ``prep``: decoded only to check it) and digest."""
    try:
        data = read_file_bytes(sample.path)
        image = decode_image_bytes(data, sample.path)
    except ImageDecodeError as error:
        return SkippedFile(path=str(sample.path), reason=error.reason)
    # Hash the file's bytes (not pixels) so exact-copy groups match the data audit's.
    return (None if prep is None else resize_to_uint8_tensor(image, prep)), file_digest(data)


def _read_all(
    samples: Sequence[Sample], prep: Preprocessing | None, description: str, show_progress: bool, workers: int | None
) -> tuple[list[torch.Tensor | None], list[int], list[Path], list[str], list[SkippedFile]]:
    images: list[torch.Tensor | None] = []
    labels: list[int] = []
    paths: list[Path] = []
    hashes: list[str] = []
    skipped: list[SkippedFile] = []
    # More decoding threads than cores only adds switches between them.
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(show_progress) as progress:
        task = progress.add_task(description, total=len(samples))
        for sample, result in zip(samples, pool.map(lambda s: _decode_one(s, prep), samples), strict=True):
            progress.advance(task)
            if isinstance(result, SkippedFile):
                skipped.append(result)
                continue
            images.append(result[0])
            hashes.append(result[1])
            labels.append(sample.label)
            paths.append(sample.path)
    if not hashes:
        raise DatasetLayoutError(f"none of the {len(samples)} files could be decoded as images")
    return images, labels, paths, hashes, skipped


def load_images(
    samples: Sequence[Sample],
    prep: Preprocessing,
    *,
    description: str = "Decoding images",
    show_progress: bool = True,
    workers: int | None = None,
) -> ImageSet:
    """Decode and resize ``samples`` into memory (threads: PIL releases the GIL while decoding; default one per core).

    Files that cannot be decoded are left out and listed in ``ImageSet.skipped`` with the reason.
    Raises :class:`DatasetLayoutError` when no file at all could be decoded. For large sets see :func:`scan_images`.
    """
    images, labels, paths, hashes, skipped = _read_all(samples, prep, description, show_progress, workers)
    return ImageSet(
        images=torch.stack(images),  # type: ignore[arg-type]
        labels=torch.tensor(labels, dtype=torch.long),
        paths=paths,
        hashes=hashes,
        skipped=skipped,
        prep=prep,
    )


def scan_images(
    samples: Sequence[Sample],
    prep: Preprocessing,
    *,
    description: str = "Checking images",
    show_progress: bool = True,
    workers: int | None = None,
) -> ImageSet:
    """A streaming :class:`ImageSet` of ``samples``: every file read once, hashed and decoded to check it, and
    no pixels kept; its :meth:`ImageSet.batches` decode them again from disk when they are needed.

    The same files are skipped, in the same order, with the same hashes and pixels as :func:`load_images`.
    """
    _, labels, paths, hashes, skipped = _read_all(samples, None, description, show_progress, workers)
    return ImageSet(
        images=None,
        labels=torch.tensor(labels, dtype=torch.long),
        paths=paths,
        hashes=hashes,
        skipped=skipped,
        prep=prep,
    )


def decode_path(path: Path, prep: Preprocessing) -> torch.Tensor:
    """One file's ``[3, S, S]`` uint8 pixels, exactly as :func:`load_images` decodes them.

    Raises :class:`ImageDecodeError` when the file no longer decodes (changed since it was scanned).
    """
    data = read_file_bytes(path)
    return resize_to_uint8_tensor(decode_image_bytes(data, path), prep)


class DecodedImages(Dataset[torch.Tensor]):
    """Files decoded and resized on demand (:func:`decode_path`): a Dataset for DataLoader workers."""

    def __init__(self, paths: Sequence[Path], prep: Preprocessing) -> None:
        self.paths = list(paths)
        self.prep = prep

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return decode_path(self.paths[index], self.prep)


# Decoding processes beside the network. On 2 cores one worker decodes a 260 px head-cropped slice several times
# faster than the Lite2 backbone consumes it, and a second one only competes with the network for the cores; in
# the main process (0 workers) decoding does not overlap with the network at all.
DECODE_WORKERS_ENV = "BRAINTUMOR_DECODE_WORKERS"


def decode_workers() -> int:
    """DataLoader workers that decode streamed images: ``$BRAINTUMOR_DECODE_WORKERS``, else half the cores (>= 1)."""
    configured = os.environ.get(DECODE_WORKERS_ENV)
    if configured is not None and configured.strip().isdigit():
        return int(configured)
    return max(1, (os.cpu_count() or 1) // 2)


# Batches each worker decodes ahead: enough to hide a slow file, bounded so memory stays small.
PREFETCH_BATCHES = 2


def image_loader(dataset: Dataset[torch.Tensor], batch_size: int, *, workers: int | None = None) -> DataLoader:
    """A DataLoader over ``dataset`` in order, decoding in ``workers`` processes with bounded prefetch.

    It takes its seed from a private generator, so iterating it does not draw from torch's global one (the
    augmentation of the feature views is drawn from that, image by image, in the caller's process).
    """
    workers = decode_workers() if workers is None else workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        generator=torch.Generator().manual_seed(0),
    )


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`drop_exact_duplicates` removed."""

    removed_copies: int
    removed_conflicts: int
    conflict_groups: list[list[str]]


def drop_exact_duplicates(image_set: ImageSet) -> tuple[ImageSet, DuplicateReport]:
    """Keep one file per byte-identical group; drop every member of a group whose labels disagree."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(image_set.hashes):
        groups[digest].append(index)
    keep: list[int] = []
    removed_copies = removed_conflicts = 0
    conflicts: list[list[str]] = []
    for members in groups.values():
        member_labels = {int(image_set.labels[i]) for i in members}
        if len(member_labels) > 1:
            removed_conflicts += len(members)
            conflicts.append([str(image_set.paths[i]) for i in members])
            continue
        keep.append(members[0])
        removed_copies += len(members) - 1
    keep.sort()
    report = DuplicateReport(removed_copies, removed_conflicts, conflicts)
    return image_set.subset(keep), report


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified ``(train_indices, val_indices)``."""
    indices = np.arange(len(labels))
    label_array = labels.numpy()
    counts = np.bincount(label_array)
    present = counts[counts > 0]
    if present.min() < 2:
        raise DatasetLayoutError(
            "every class needs at least 2 images to take a stratified validation split "
            f"(counts: {dict(zip(CLASS_NAMES, counts.tolist(), strict=False))})"
        )
    n_val = max(round(len(labels) * val_fraction), len(present))
    train_idx, val_idx = train_test_split(indices, test_size=n_val, random_state=seed, stratify=label_array)
    return np.sort(train_idx), np.sort(val_idx)


class ImageTensorDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Applies a transform to uint8 images on the fly (decoded from their files when the set streams)."""

    def __init__(self, image_set: ImageSet, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.image_set = image_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.image_set.image(index)), self.image_set.labels[index]


def keras_split(paths: Sequence[Path], labels: torch.Tensor, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)`` as Keras' ``flow_from_directory(validation_split=...)`` takes them: per
    class, the first ``val_fraction`` of the files in name order are validation, the rest training.

    Example:
        >>> paths = [Path(f"{i}.jpg") for i in range(8)]
        >>> keras_split(paths, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25)
        (array([1, 2, 3, 5, 6, 7]), array([0, 4]))
    """
    val: list[int] = []
    label_array = labels.numpy()
    for label in np.unique(label_array):
        members = sorted(np.flatnonzero(label_array == label), key=lambda index: paths[index].name)
        val.extend(members[: int(val_fraction * len(members))])  # Keras truncates, as here
    val_idx = np.array(sorted(val), dtype=np.int64)
    return np.setdiff1d(np.arange(len(label_array)), val_idx), val_idx


def validation_split(recipe: Recipe, image_set: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's ``(train_indices, val_indices)`` of ``image_set``: stratified (seeded) or Keras' split."""
    if recipe.data.val_split == "keras":
        return keras_split(image_set.paths, image_set.labels, recipe.data.val_fraction)
    return stratified_split(image_set.labels, recipe.data.val_fraction, recipe.data.split_seed)
