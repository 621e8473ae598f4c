"""The audit's thumbnails on disk: written as files are read, read back a block at a time.

A data set's thumbnails (``[2, 64, 64]`` uint8, 8 KB per image) would otherwise sit in memory for the
whole audit: 250 MB at 30,000 images, twice that while they are stacked. The store keeps them in an
unnamed temporary file (gone when the store closes, or when the process dies) and reads rows back with
``pread``, so only the block being compared is in memory; the operating system's page cache keeps the
file fast without counting against the process.

Example:
    >>> import numpy as np
    >>> with ThumbnailStore(capacity=3, row_shape=(2, 4, 4)) as store:
    ...     store.write(2, np.full((2, 4, 4), 7, np.uint8))
    ...     store.shape, int(store[2].max()), int(store[[2, 0]].sum())
    ((3, 2, 4, 4), 7, 224)
    >>> rows = ThumbnailRows(np.arange(32, dtype=np.uint8).reshape(2, 2, 2, 4), channel=1)
    >>> rows[:].shape, int(rows.subset([1])[:].min())
    ((2, 2, 4), 24)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class ThumbnailStore:
    """``[capacity, *row_shape]`` uint8 rows in an unnamed temporary file; rows never written read as zeros.

    Args:
        capacity: the number of rows.
        row_shape: one row's shape.
        directory: where the temporary file goes (default: the system's temporary folder). Point it at a
            disk: a temporary folder in memory (tmpfs) would keep the rows in memory after all.
    """

    def __init__(self, capacity: int, row_shape: Sequence[int], directory: str | Path | None = None) -> None:
        self.row_shape = tuple(int(size) for size in row_shape)
        self.capacity = int(capacity)
        self.row_bytes = int(np.prod(self.row_shape))
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (open for the store's life; close() closes it)
        self._file.truncate(self.capacity * self.row_bytes)
        self._fd = self._file.fileno()

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.capacity, *self.row_shape)

    def __len__(self) -> int:
        return self.capacity

    def write(self, row: int, values: np.ndarray) -> None:
        """Store one row."""
        data = np.ascontiguousarray(values, dtype=np.uint8)
        if data.shape != self.row_shape:
            raise ValueError(f"a row has shape {self.row_shape}, got {data.shape}")
        os.pwrite(self._fd, data.tobytes(), int(row) * self.row_bytes)

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """The rows ``[len(rows), *row_shape]``, in the order asked (repeats allowed), read in consecutive runs."""
        wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.capacity):
            raise IndexError(f"rows must be in [0, {self.capacity}), got {wanted.min()}..{wanted.max()}")
        unique, inverse = np.unique(wanted, return_inverse=True)
        block = np.empty((len(unique), self.row_bytes), np.uint8)
        # Runs of consecutive rows are one read each: a dense selection costs a few large reads.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(unique)], strict=True):
            size = int(stop - start) * self.row_bytes
            data = os.pread(self._fd, size, int(unique[start]) * self.row_bytes)
            block[start:stop] = np.frombuffer(data, np.uint8).reshape(int(stop - start), self.row_bytes)
        return block[inverse.reshape(-1)].reshape(len(wanted), *self.row_shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        """``store[i]`` is one row; ``store[rows]`` and ``store[a:b]`` are ``[n, *row_shape]``."""
        if isinstance(key, (int, np.integer)):
            return self.read([int(key)])[0]
        return self.read(np.arange(self.capacity)[key])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ThumbnailStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThumbnailRows:
    """Some rows of an array or a :class:`ThumbnailStore` (one channel, or all), read only when sliced.

    ``len()`` and slicing (``rows[a:b]`` gives an array) are what the candidate search needs, so it takes
    a block of references at a time from disk instead of all of them from memory.
    """

    def __init__(
        self,
        source: np.ndarray | ThumbnailStore,
        rows: Sequence[int] | np.ndarray | None = None,
        channel: int | None = None,
    ) -> None:
        self.source = source
        self.rows = np.arange(len(source)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        self.channel_index = channel

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def n_channels(self) -> int:
        """Channels of each row (1 when one channel was chosen)."""
        return 1 if self.channel_index is not None else int(self.source.shape[1])

    def subset(self, positions: Sequence[int] | np.ndarray) -> ThumbnailRows:
        """These rows at ``positions`` (lazily)."""
        return ThumbnailRows(self.source, self.rows[np.asarray(positions, dtype=np.int64)], self.channel_index)

    def channel(self, channel: int) -> ThumbnailRows:
        """One channel of these rows (lazily)."""
        return ThumbnailRows(self.source, self.rows, channel)

    def __getitem__(self, part: slice) -> np.ndarray:
        """The rows in ``part`` as an array."""
        rows = self.rows[part]
        values = self.source.read(rows) if isinstance(self.source, ThumbnailStore) else self.source[rows]
        return values if self.channel_index is None else np.ascontiguousarray(values[:, self.channel_index])

    def array(self) -> np.ndarray:
        """All these rows as an array."""
        return self[:]
