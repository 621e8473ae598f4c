"""Decompression stops at the byte limit while it streams: a gzip or zip bomb is refused after inflating about
the limit, quickly and with bounded memory, never after inflating the whole content."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
import pytest

pytest.importorskip("nibabel")

from braintumor.data.archives import ArchiveError, ArchiveLimits, read_zip_members
from braintumor.data.nifti import inflate_limited
from braintumor.data.synthetic_volumes import nifti_bytes
from braintumor.data.volume_core import VolumeError
from braintumor.data.volumes import VolumeRequest, load_volume_bytes
from braintumor.errors import BrainTumorError

BOMB_BYTES = 50 * 1024 * 1024
LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """A valid NIfTI header followed by 50 MB of zeros, gzipped (about 50 kB)."""
    header = nifti_bytes(np.zeros((8, 8, 4), dtype=np.int16), compress=False)
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    data = packer.compress(header) + packer.compress(bytes(BOMB_BYTES)) + packer.flush()
    assert len(data) < BOMB_BYTES / 500
    return data


def _refused(call: Callable[[], object]) -> tuple[BrainTumorError, float, int]:
    """The error ``call`` raises, the seconds it took and the peak memory traced meanwhile."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(BrainTumorError) as caught:
            call()
        return caught.value, time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_gzip_bomb_stops_at_the_limit(gzip_bomb: bytes) -> None:
    request = VolumeRequest(archive=ArchiveLimits(max_total_bytes=LIMIT))
    error, seconds, peak = _refused(lambda: load_volume_bytes(gzip_bomb, "bomb.nii.gz", request))
    assert isinstance(error, VolumeError)
    assert _one_line(error).startswith("bomb.nii.gz: ") and "over the limit of 1,048,576 bytes" in str(error)
    assert "gzip bomb" in str(error)
    assert seconds < 1.0
    assert peak < 8 * LIMIT  # the 50 MB are never inflated


def test_inflating_stops_just_past_the_limit_whatever_the_limit(gzip_bomb: bytes) -> None:
    for limit in (1, 1000, 3 * LIMIT):
        error, seconds, peak = _refused(lambda limit=limit: inflate_limited(gzip_bomb, "bomb.nii.gz", limit))
        assert "over the limit" in _one_line(error) and seconds < 1.0 and peak < 8 * LIMIT + 2 * limit


def test_a_gzip_bomb_inside_a_zip_stops_at_the_limit(gzip_bomb: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("scan.nii.gz", gzip_bomb)
    request = VolumeRequest(archive=ArchiveLimits(max_total_bytes=LIMIT))
    error, seconds, peak = _refused(lambda: load_volume_bytes(buffer.getvalue(), "export.zip", request))
    assert "export.zip:scan.nii.gz: " in _one_line(error) and "over the limit" in str(error)
    assert seconds < 1.0 and peak < 8 * LIMIT


def _zip_bomb(declared: int | None = None) -> bytes:
    """A zip of one deflated member of 50 MB of zeros; ``declared`` overwrites its declared size."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slice.dcm", bytes(BOMB_BYTES))
    data = bytearray(buffer.getvalue())
    if declared is not None:
        size = declared.to_bytes(4, "little")
        local, central = data.find(b"PK\x03\x04"), data.rfind(b"PK\x01\x02")
        data[local + 22 : local + 26] = size  # the local header's uncompressed size
        data[central + 24 : central + 28] = size  # the central directory's uncompressed size
    return bytes(data)


def test_a_zip_bomb_is_refused_before_it_is_inflated() -> None:
    bomb = _zip_bomb()
    lax_ratio = ArchiveLimits(max_total_bytes=LIMIT, max_ratio=1e9)
    for limits, expected in ((ArchiveLimits(), "zip bomb"), (lax_ratio, "over the limit of 1,048,576 bytes")):
        error, seconds, peak = _refused(lambda limits=limits: read_zip_members(bomb, "bomb.zip", limits))
        assert isinstance(error, ArchiveError) and expected in _one_line(error)
        assert seconds < 1.0 and peak < 8 * LIMIT


def test_a_zip_member_that_hides_its_size_stops_while_streaming() -> None:
    # The directory claims 100 kB: the ratio and total checks pass, the member is read and must stop there.
    liar = _zip_bomb(declared=100_000)
    limits = ArchiveLimits(max_total_bytes=LIMIT, max_ratio=1e9)
    error, seconds, peak = _refused(lambda: read_zip_members(liar, "liar.zip", limits))
    assert isinstance(error, ArchiveError) and "'slice.dcm'" in _one_line(error)
    assert seconds < 1.0 and peak < 8 * LIMIT


def test_inflating_within_the_limit_keeps_every_member() -> None:
    data = bytes(range(256)) * 4000
    packed = b"".join(zlib.compress(part, wbits=zlib.MAX_WBITS | 16) for part in (data, data))
    assert inflate_limited(packed + bytes(8), "two.gz", 2 * len(data)) == data + data
    with pytest.raises(VolumeError, match="over the limit of 2,047,999 bytes"):
        inflate_limited(packed, "two.gz", 2 * len(data) - 1)
    with pytest.raises(VolumeError, match="truncated gzip file"):
        inflate_limited(packed[:-30], "two.gz", 10 * len(data))
