"""Reading a zip archive safely, in memory: the one place the CLI and the API open uploaded archives.

A zip of a DICOM series is untrusted input. Before anything is decompressed, the central directory is
checked against :class:`ArchiveLimits`: number of members, total uncompressed bytes, the compression ratio
of every member and of the whole archive (a zip bomb is a tiny archive with huge content), names that would
leave the archive (absolute paths, ``..``, drive letters) and symlink members. While members are read the
byte count is enforced again, because the sizes in the directory are the archive's own claim. Nothing is
written to disk: members come back as bytes.

Example:
    >>> import io, zipfile
    >>> buffer = io.BytesIO()
    >>> with zipfile.ZipFile(buffer, "w") as archive:
    ...     archive.writestr("series/slice1.dcm", b"x" * 10)
    >>> [(m.name, len(m.data)) for m in read_zip_members(buffer.getvalue(), "upload.zip")]
    [('series/slice1.dcm', 10)]
    >>> is_zip(buffer.getvalue()), is_zip(b"not a zip")
    (True, False)
"""

from __future__ import annotations

import io
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from braintumor.errors import ImageDecodeError

# A DICOM series of 1000 slices of 512x512 16-bit pixels is about 525 MB; 1 GiB leaves room and stops bombs.
DEFAULT_MAX_ARCHIVE_BYTES = 1024 * 1024 * 1024
# More files than any single MR series has (thin-slice series reach a few hundred).
DEFAULT_MAX_MEMBERS = 2000
# Deflate rarely beats 20:1 on MR slices (a black background compresses, the noise in the head does not);
# 200:1 lets empty slices through and stops bombs, whose ratios are in the thousands.
DEFAULT_MAX_RATIO = 200.0
_READ_CHUNK = 1 << 20
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class ArchiveError(ImageDecodeError):
    """An archive refused for safety or because it cannot be read; names the archive and the reason."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may hold: members, total uncompressed bytes and compression ratio."""

    max_total_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS
    max_ratio: float = DEFAULT_MAX_RATIO


@dataclass(frozen=True)
class ArchiveMember:
    """One regular file of an archive: its name inside the archive and its bytes."""

    name: str
    data: bytes


def is_zip(data: bytes) -> bool:
    """True when ``data`` starts like a zip archive (a local file header or an empty archive)."""
    return data[:4] in ZIP_MAGIC


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    # Unix zip tools keep the file mode in the high 16 bits of external_attr.
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_name(name: str) -> str | None:
    """The reason a member name would leave the archive, or None when it stays inside."""
    if "\x00" in name:
        return "contains a NUL byte"
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        return "is an absolute path"
    if ".." in path.parts:
        return "points outside the archive (..)"
    return None


def _skipped(name: str) -> bool:
    """Folders and the clutter archivers add (macOS resource forks, hidden files) are not series files."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.endswith("/") or not parts or parts[0] == "__MACOSX" or parts[-1].startswith(".")


def _check_directory(infos: list[zipfile.ZipInfo], source: str | Path, limits: ArchiveLimits, size: int) -> None:
    """Refuse the archive from its central directory, before anything is decompressed."""
    if len(infos) > limits.max_members:
        raise ArchiveError(source, f"archive has {len(infos):,} members, over the limit of {limits.max_members:,}")
    total = 0
    for info in infos:
        reason = _safe_name(info.filename)
        if reason is not None:
            raise ArchiveError(source, f"archive member {info.filename!r} {reason}: refused")
        if _is_symlink(info):
            raise ArchiveError(source, f"archive member {info.filename!r} is a symbolic link: refused")
        if info.flag_bits & 0x1:
            raise ArchiveError(source, f"archive member {info.filename!r} is encrypted: send an unencrypted zip")
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_ratio:
            raise ArchiveError(
                source,
                f"archive member {info.filename!r} expands {ratio:,.0f} times (over {limits.max_ratio:g}): "
                "refused as a possible zip bomb",
            )
        total += info.file_size
    if total > limits.max_total_bytes:
        raise ArchiveError(
            source, f"archive would expand to {total:,} bytes, over the limit of {limits.max_total_bytes:,} bytes"
        )
    if total / max(size, 1) > limits.max_ratio:
        raise ArchiveError(source, f"archive expands {total / max(size, 1):,.0f} times: refused as a possible zip bomb")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str | Path, budget: int) -> bytes:
    """A member's bytes, stopping as soon as it exceeds what it declared or what the budget leaves."""
    allowed = min(info.file_size, budget)
    chunks, count = [], 0
    with archive.open(info) as handle:
        while chunk := handle.read(_READ_CHUNK):
            count += len(chunk)
            if count > allowed:
                raise ArchiveError(
                    source,
                    f"archive member {info.filename!r} holds more than it declares: refused as corrupt or hostile",
                )
            chunks.append(chunk)
    return b"".join(chunks)


def read_zip_members(data: bytes, source: str | Path, limits: ArchiveLimits | None = None) -> list[ArchiveMember]:
    """The regular files of a zip archive, checked against ``limits`` and read in memory.

    Raises :class:`ArchiveError` (an :class:`~braintumor.errors.ImageDecodeError`) naming the archive and
    the reason: not a zip, too many members, too large, a zip bomb, a path outside the archive, a
    symlink, an encrypted or corrupt member.
    """
    limits = limits or ArchiveLimits()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ArchiveError(source, f"not a readable zip archive: {error}") from None
    with archive:
        infos = archive.infolist()
        _check_directory(infos, source, limits, len(data))
        members, budget = [], limits.max_total_bytes
        for info in infos:
            if _skipped(info.filename) or info.is_dir():
                continue
            try:
                content = _read_member(archive, info, source, budget)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as error:
                raise ArchiveError(source, f"archive member {info.filename!r} cannot be read: {error}") from None
            budget -= len(content)
            members.append(ArchiveMember(info.filename, content))
    return members
