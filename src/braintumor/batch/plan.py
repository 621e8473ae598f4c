"""Which input goes where: the inputs in a fixed order, split into parts (one per job of an array) and shards.

The inputs are the files of the sources in the order given, each folder expanded recursively to its non-hidden
files in sorted order (as ``braintumor predict`` reads them). Input ``i`` of ``n`` belongs to part ``i % N``
(round robin, so every part gets a share of every folder and parts finish together); inside a part its inputs
are cut, in order, into shards of ``shard_size``. The same sources, part count and shard size always give the
same plan, on any machine, so each job of an array can compute it on its own.

Example:
    >>> plan = BatchPlan(sources=tuple(f"scan{i}.jpg" for i in range(7)), num_parts=2, shard_size=2)
    >>> [shard.items for shard in plan.shards(0)], [shard.items for shard in plan.shards(1)]
    ([(0, 2), (4, 6)], [(1, 3), (5,)])
    >>> plan.shards(1)[1].relative_path
    'part-00001-of-00002/shard-00001.parquet'
    >>> sorted(i for part in range(2) for shard in plan.shards(part) for i in shard.items) == list(range(7))
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from braintumor.batch.defaults import DEFAULT_SHARD_SIZE
from braintumor.errors import BrainTumorError
from braintumor.inference.predictor import expand_inputs


@dataclass(frozen=True)
class Shard:
    """One shard of one part: the indices of its inputs in the plan, in order."""

    part: int
    num_parts: int
    index: int
    items: tuple[int, ...]

    @property
    def folder(self) -> str:
        """The part's folder inside the output folder, ``part-KKKKK-of-NNNNN``."""
        return f"part-{self.part:05d}-of-{self.num_parts:05d}"

    @property
    def stem(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def relative_path(self) -> str:
        """The shard's Parquet file inside the output folder (its CSV has the same name with ``.csv``)."""
        return f"{self.folder}/{self.stem}.parquet"


@dataclass(frozen=True)
class BatchPlan:
    """The inputs of a batch in plan order, and how they are split into parts and shards."""

    sources: tuple[str, ...]
    num_parts: int = 1
    shard_size: int = DEFAULT_SHARD_SIZE

    def __post_init__(self) -> None:
        if self.num_parts < 1:
            raise BrainTumorError(f"--num-parts must be at least 1 (got {self.num_parts})")
        if self.shard_size < 1:
            raise BrainTumorError(f"the shard size must be at least 1 (got {self.shard_size})")

    def part_items(self, part: int) -> range:
        """The plan indices of part ``part``'s inputs: ``part``, ``part + N``, ``part + 2N``..."""
        self.check_part(part)
        return range(part, len(self.sources), self.num_parts)

    def shards(self, part: int) -> list[Shard]:
        """Part ``part``'s shards, in order."""
        items = self.part_items(part)
        return [
            Shard(part, self.num_parts, index, tuple(items[start : start + self.shard_size]))
            for index, start in enumerate(range(0, len(items), self.shard_size))
        ]

    def all_shards(self) -> list[Shard]:
        """Every shard of every part."""
        return [shard for part in range(self.num_parts) for shard in self.shards(part)]

    def check_part(self, part: int) -> None:
        if not 0 <= part < self.num_parts:
            raise BrainTumorError(f"--part-id must be between 0 and {self.num_parts - 1} (got {part})")

    def fingerprint(self) -> str:
        """A SHA-256 of the inputs in order: the same only for the same files given the same way."""
        digest = hashlib.sha256()
        for source in self.sources:
            digest.update(source.encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()


def plan_batch(
    sources: Iterable[Path | str],
    *,
    num_parts: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    exclude: Path | str | None = None,
) -> BatchPlan:
    """The plan of a batch over ``sources`` (files and folders; see the module docstring).

    ``exclude``: a folder whose files are never inputs (the batch's own output folder, when it lies inside a
    source folder: its shards must not become inputs of the next run).

    Raises:
        BrainTumorError: a source that does not exist, or sources with no file in them.
    """
    given = [Path(source) for source in sources]
    files = expand_inputs(given)
    if exclude is not None:
        outside = Path(exclude).resolve()
        if any(outside.is_relative_to(source.resolve()) for source in given if source.is_dir()):
            files = [path for path in files if not path.resolve().is_relative_to(outside)]
    if not files:
        raise BrainTumorError(f"no files to predict in {', '.join(map(str, given))}")
    return BatchPlan(tuple(str(path) for path in files), num_parts=num_parts, shard_size=shard_size)
