"""Load a split into memory once, split it stratified, and serve it to PyTorch.

CPU training is the common case here, so every image is decoded and resized exactly once into a
uint8 tensor; epochs then only augment and normalise. Undecodable files are skipped and reported.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from braintumor.classes import CLASS_NAMES
from braintumor.config import Recipe
from braintumor.data.images import SkippedFile, decode_image_bytes, read_file_bytes
from braintumor.data.layout import Sample
from braintumor.data.preprocessing import Preprocessing, resize_to_uint8_tensor
from braintumor.errors import DatasetLayoutError, ImageDecodeError
from braintumor.progress import progress_bar


@dataclass
class ImageSet:
    """Decoded images of one split: ``images`` is ``[N, 3, S, S]`` uint8, aligned with the other fields."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[Path]
    hashes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageSet:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            paths=[self.paths[i] for i in index.tolist()],
            hashes=[self.hashes[i] for i in index.tolist()],
            skipped=list(self.skipped),
        )

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(CLASS_NAMES)).tolist()
        return dict(zip(CLASS_NAMES, counts, strict=True))


def file_digest(data: bytes) -> str:
    """Content hash of a file's bytes (blake2b, 128 bits): equal digests mean byte-identical files.

    Training's duplicate dropping and the data audit (:mod:`braintumor.auditing.scan`) both use it, so
    their exact-copy groups are the same.
    """
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _decode_one(sample: Sample, prep: Preprocessing) -> tuple[torch.Tensor, str] | SkippedFile:
    try:
        data = read_file_bytes(sample.path)
        image = decode_image_bytes(data, sample.path)
    except ImageDecodeError as error:
        return SkippedFile(path=str(sample.path), reason=error.reason)
    # Hash the file's bytes (not pixels) so exact-copy groups match the data audit's.
    return resize_to_uint8_tensor(image, prep), file_digest(data)


def load_images(
    samples: Sequence[Sample],
    prep: Preprocessing,
    *,
    description: str = "Decoding images",
    show_progress: bool = True,
    workers: int | None = None,
) -> ImageSet:
    """Decode and resize ``samples`` (threads: PIL releases the GIL while decoding; default one per core).

    Files that cannot be decoded are left out and listed in ``ImageSet.skipped`` with the reason.
    Raises :class:`DatasetLayoutError` when no file at all could be decoded.
    """
    images: list[torch.Tensor] = []
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
    if not images:
        raise DatasetLayoutError(f"none of the {len(samples)} files could be decoded as images")
    return ImageSet(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        paths=paths,
        hashes=hashes,
        skipped=skipped,
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
    """Applies a transform to pre-decoded uint8 images on the fly."""

    def __init__(self, image_set: ImageSet, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.image_set = image_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.image_set.images[index]), self.image_set.labels[index]


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
