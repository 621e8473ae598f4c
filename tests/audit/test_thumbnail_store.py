"""The audit's thumbnails on disk: what is written reads back, and a search over the store equals one in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from braintumor.auditing.candidate_index import search_candidates
from braintumor.auditing.scan import discover_splits, read_all
from braintumor.auditing.thumbnail_store import ThumbnailRows, ThumbnailStore
from braintumor.data.synthetic import make_synthetic_dataset


def test_rows_read_back_in_any_order_with_repeats_and_unwritten_rows_are_zero(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (9, 2, 5, 5), dtype=np.uint8)
    with ThumbnailStore(12, (2, 5, 5), tmp_path) as store:
        for row in (0, 1, 2, 5, 6, 7, 8, 10, 11):
            store.write(row, values[[0, 1, 2, 5, 6, 7, 8, 10, 11].index(row)])
        asked = [11, 0, 5, 5, 1, 10, 2]
        expected = np.stack([values[[0, 1, 2, 5, 6, 7, 8, 10, 11].index(row)] for row in asked])
        np.testing.assert_array_equal(store.read(asked), expected)
        assert not store[3].any() and store[3:5].shape == (2, 2, 5, 5)
        with pytest.raises(IndexError, match=r"\[0, 12\)"):
            store.read([12])
        with pytest.raises(ValueError, match="shape"):
            store.write(0, values[0, 0])
    # The file had no name in the folder and is gone with the store.
    assert list(tmp_path.iterdir()) == []


def test_a_search_over_the_store_equals_the_search_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    thumbnails = rng.integers(0, 256, (40, 2, 16, 16), dtype=np.uint8)
    thumbnails[30:35] = thumbnails[3:8, :, :, ::-1]  # mirrored copies of references
    queries, references = np.arange(28, 40), np.arange(0, 28)
    digests = [f"d{i}" for i in range(40)]
    in_memory = search_candidates(
        [digests[i] for i in queries], [digests[i] for i in references], thumbnails[queries], thumbnails[references], 3
    )
    with ThumbnailStore(40, (2, 16, 16), tmp_path) as store:
        for row, values in enumerate(thumbnails):
            store.write(row, values)
        on_disk = search_candidates(
            [digests[i] for i in queries],
            [digests[i] for i in references],
            ThumbnailRows(store, queries),
            ThumbnailRows(store, references),
            3,
            block=5,
        )
    for memory, disk in zip(in_memory.channels, on_disk.channels, strict=True):
        np.testing.assert_array_equal(memory.indices, disk.indices)
        np.testing.assert_array_equal(memory.scores, disk.scores)
        np.testing.assert_array_equal(memory.mirrored, disk.mirrored)
    assert on_disk.channels[0].indices[2:7, 0].tolist() == [3, 4, 5, 6, 7]


def test_the_scan_writes_each_decodable_file_to_its_row(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "data", per_class=2, size=32)
    broken = root / "Training" / "glioma_tumor" / "broken.jpg"
    broken.write_bytes(b"not an image")
    records, store, rows = read_all(root, discover_splits(root), 2, False, scratch_dir=tmp_path)
    with store:
        bad = [i for i, record in enumerate(records) if record.error]
        assert [records[i].path for i in bad] == ["Training/glioma_tumor/broken.jpg"]
        assert rows[bad[0]] == -1 and (np.delete(rows, bad) >= 0).all()
        decoded = store.read(rows[rows >= 0])
        # Every decodable image left a non-empty thumbnail in both channels.
        assert decoded.reshape(len(decoded), 2, -1).max(axis=2).min() > 0
