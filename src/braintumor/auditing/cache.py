"""The audit's cache: what it computed per file and per candidate pair, reused by the next audit of the folder.

One SQLite file (default ``<audit folder>/cache/audit_cache.sqlite``) with four tables:

- ``files``: relative path -> size, modification time (ns), when it was last verified, content digest;
- ``contents``: content digest -> the decoded header fields (or the decode error), the ``[2, 64, 64]``
  search thumbnails and the ``[128, 128]`` detail image, as zlib-compressed raw ``uint8`` bytes of a
  fixed shape (no pickle: nothing in the file is executed when read, and zlib's checksum catches a
  damaged blob);
- ``pairs``: (query digest, reference digest, mirrored) -> the aligned detail check's four results;
- ``searches``: the candidate index of the last search (every query's ``k`` best references per channel,
  by digest): new queries are searched in full, kept ones only against new references
  (:mod:`braintumor.auditing.candidate_index`).

A file whose size and modification time match its row is not read at all; one whose stat changed
(touched, copied, renamed) is read and hashed, and decoded only when its digest is new. SQLite commits
each chunk atomically, so an audit stopped by Ctrl-C or ``SIGKILL`` keeps every chunk it finished.
The cache belongs to one :func:`fingerprint` (code of the per-file and per-pair steps, library
versions, sizes); a cache with another, or one that is damaged, is replaced with a one-line note, and
any SQLite error later turns the cache off for the rest of the audit (the results do not change: the
cache only ever stands for work that would give the same values).

Example:
    >>> import tempfile
    >>> cache = AuditCache.open(Path(tempfile.mkdtemp()) / "c.sqlite", "fp")
    >>> cache.store_pairs([(("q", "r", False), (0.9, 0.8, True, (1.0, 1.0, 0.0, 0.0)))])
    >>> cache.pair_results([("q", "r", False), ("q", "x", False)])
    {('q', 'r', False): (0.9, 0.8, True, (1.0, 1.0, 0.0, 0.0))}
    >>> cache.close()
    >>> AuditCache.open(cache.path, "other code", print).pair_results([("q", "r", False)])  # doctest: +ELLIPSIS
    audit cache ... was made by other code or settings: starting a new one
    {}
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CACHE_FORMAT = "braintumor-audit-cache"
# Bump when the tables change; code changes of the cached steps are caught by fingerprint().
SCHEMA_VERSION = 2
# The modules whose code decides a file's cached values (decoding, digest, thumbnails) or a pair's check.
FINGERPRINT_MODULES = (
    "braintumor.auditing.scan",
    "braintumor.auditing.similarity",
    "braintumor.auditing.candidate_index",
    "braintumor.data.images",
    "braintumor.data.dicom",
    "braintumor.data.dataset",
)
FINGERPRINT_LIBRARIES = ("pillow", "numpy", "torch", "torchvision", "pydicom")
# A file modified within this long before it was stat'ed may change again without a new modification
# time on file systems with coarse timestamps (FAT: 2 s), so such a row is checked by digest next time.
RACY_NS = 3_000_000_000
# How long an audit waits for another one holding the cache's lock before it runs without the cache.
LOCK_TIMEOUT_S = 30.0
# Parameters per SQL statement stay under SQLite's oldest limit (999).
_SQL_BATCH = 500
PairKey = tuple[str, str, bool]
PairValue = tuple[float, float, bool, tuple[float, float, float, float]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    verified_ns INTEGER NOT NULL, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contents (
    digest TEXT PRIMARY KEY, header TEXT NOT NULL, thumbnails BLOB, detail BLOB);
CREATE TABLE IF NOT EXISTS pairs (
    query TEXT NOT NULL, reference TEXT NOT NULL, mirrored INTEGER NOT NULL,
    detail_ncc REAL NOT NULL, overlap REAL NOT NULL, aligned INTEGER NOT NULL,
    t0 REAL NOT NULL, t1 REAL NOT NULL, t2 REAL NOT NULL, t3 REAL NOT NULL,
    PRIMARY KEY (query, reference, mirrored));
CREATE TABLE IF NOT EXISTS searches (key TEXT PRIMARY KEY, result TEXT NOT NULL);
"""


@dataclass(frozen=True)
class FileRow:
    """What the cache knows about one path: its stat when it was read, when that was, and its content."""

    size: int
    mtime_ns: int
    verified_ns: int
    digest: str

    def trusted(self, size: int, mtime_ns: int) -> bool:
        """Whether a file with this stat can be taken as unchanged without reading it.

        Example:
            >>> row = FileRow(10, 0, RACY_NS + 1, "d")
            >>> row.trusted(10, 0), row.trusted(11, 0), FileRow(10, 0, 1, "d").trusted(10, 0)
            (True, False, False)
        """
        return size == self.size and mtime_ns == self.mtime_ns and self.verified_ns - self.mtime_ns > RACY_NS


@dataclass
class CacheStats:
    """How much of this audit came from the cache; ``audit.json`` keeps it under ``cache``."""

    path: str | None = None
    files_reused: int = 0
    files_rehashed: int = 0
    files_decoded: int = 0
    pairs_reused: int = 0
    pairs_checked: int = 0
    queries_searched: int = 0
    queries_extended: int = 0
    search_comparisons: int = 0
    notes: list[str] = field(default_factory=list)


def encode_pixels(array: np.ndarray) -> bytes:
    """A ``uint8`` array's raw bytes, zlib-compressed (level 1: the cache is written once per file, read often).

    Example:
        >>> pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
        >>> bool((decode_pixels(encode_pixels(pixels), (3, 4)) == pixels).all())
        True
    """
    return zlib.compress(np.ascontiguousarray(array, dtype=np.uint8).tobytes(), 1)


def decode_pixels(blob: bytes | None, shape: Sequence[int]) -> np.ndarray | None:
    """The ``uint8`` array of ``shape`` in ``blob``, or None when there is none or it is damaged.

    Args:
        blob: bytes from :func:`encode_pixels`.
        shape: the array's shape; a blob of another size is damaged.
    """
    if blob is None:
        return None
    try:
        raw = zlib.decompress(blob)
    except zlib.error:
        return None
    if len(raw) != int(np.prod(shape)):
        return None
    return np.frombuffer(raw, dtype=np.uint8).reshape(tuple(shape))


def fingerprint(settings: dict[str, Any]) -> str:
    """A hash of everything that decides the cached values: the steps' code, library versions, ``settings``.

    Args:
        settings: sizes and limits the cached steps use (JSON-ready).
    """
    parts: dict[str, Any] = {"schema": SCHEMA_VERSION, "settings": settings, "code": {}, "libraries": {}}
    for module in FINGERPRINT_MODULES:
        spec = importlib.util.find_spec(module)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        parts["code"][module] = (
            hashlib.sha256(origin.read_bytes()).hexdigest() if origin is not None and origin.is_file() else None
        )
    for library in FINGERPRINT_LIBRARIES:
        try:
            parts["libraries"][library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            parts["libraries"][library] = None
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _batches(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _SQL_BATCH):
        yield items[start : start + _SQL_BATCH]


class AuditCache:
    """The open cache file; every method turns the cache off (with a note) instead of raising on SQLite errors."""

    def __init__(self, path: Path, connection: sqlite3.Connection | None, say: Callable[[str], Any]) -> None:
        self.path = path
        self._connection = connection
        self._say = say
        self.stats = CacheStats(path=str(path))

    @classmethod
    def open(cls, path: Path | str, key: str, say: Callable[[str], Any] | None = None) -> AuditCache:
        """Open (or create) the cache at ``path`` for fingerprint ``key``; a damaged or foreign one is replaced.

        Args:
            path: the SQLite file; its folder is created.
            key: the :func:`fingerprint` the cached values must have been made with.
            say: where the one-line notes go; None drops them.
        """
        path, note = Path(path), say or (lambda message: None)
        cache = cls(path, None, note)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            connection, problem = _connect(path, key)
            if problem is not None:
                cache._note(f"audit cache {path} {problem}: starting a new one")
                connection.close()
                _remove(path)
                connection, _ = _connect(path, key)
            cache._connection = connection
        except (sqlite3.Error, OSError) as error:
            cache._note(f"audit cache {path} cannot be used ({error}): auditing without it")
        return cache

    @property
    def active(self) -> bool:
        """False once the cache was turned off (or could not be opened)."""
        return self._connection is not None

    def _note(self, message: str) -> None:
        self.stats.notes.append(message)
        self._say(message)

    def _run(self, what: str, work: Callable[[sqlite3.Connection], Any], default: Any) -> Any:
        """``work(connection)``, or ``default`` when the cache is off or SQLite fails (which turns it off)."""
        if self._connection is None:
            return default
        try:
            return work(self._connection)
        except sqlite3.Error as error:
            self._note(f"audit cache {self.path}: {what} failed ({error}); continuing without the cache")
            self.close()
            return default

    def known_files(self) -> dict[str, FileRow]:
        """Every cached path's :class:`FileRow`."""

        def work(db: sqlite3.Connection) -> dict[str, FileRow]:
            rows = db.execute("SELECT path, size, mtime_ns, verified_ns, digest FROM files")
            return {path: FileRow(*rest) for path, *rest in rows}

        return self._run("reading the files table", work, {})

    def known_contents(self) -> dict[str, tuple[dict[str, Any], bytes | None]]:
        """Every cached digest's header fields and compressed thumbnails (the detail images stay on disk)."""

        def work(db: sqlite3.Connection) -> dict[str, tuple[dict[str, Any], bytes | None]]:
            rows = db.execute("SELECT digest, header, thumbnails FROM contents")
            return {digest: (json.loads(header), blob) for digest, header, blob in rows}

        try:
            return self._run("reading the contents table", work, {})
        except json.JSONDecodeError:
            self._note(f"audit cache {self.path}: a damaged header; continuing without the cache")
            self.close()
            return {}

    def store(self, files: Sequence[tuple[str, FileRow]], contents: Sequence[tuple[str, dict, bytes, bytes]]) -> None:
        """Add or replace file rows and content rows (digest, header, thumbnails, detail), in one transaction.

        Args:
            files: ``(path, row)`` pairs.
            contents: ``(digest, header fields, compressed thumbnails, compressed detail)``; blobs may be None.
        """

        def work(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO contents VALUES (?, ?, ?, ?)",
                    [(digest, json.dumps(header), thumbs, detail) for digest, header, thumbs, detail in contents],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                    [(path, r.size, r.mtime_ns, r.verified_ns, r.digest) for path, r in files],
                )

        if files or contents:
            self._run("writing file rows", work, None)

    def details(self, digests: Sequence[str], shape: Sequence[int]) -> dict[str, np.ndarray]:
        """The cached detail images of ``digests`` (those found and intact).

        Args:
            digests: content digests.
            shape: the detail image's shape.
        """

        def work(db: sqlite3.Connection) -> dict[str, np.ndarray]:
            found: dict[str, np.ndarray] = {}
            for batch in _batches(list(digests)):
                marks = ",".join("?" * len(batch))
                for digest, blob in db.execute(f"SELECT digest, detail FROM contents WHERE digest IN ({marks})", batch):
                    pixels = decode_pixels(blob, shape)
                    if pixels is not None:
                        found[digest] = pixels
            return found

        return self._run("reading detail images", work, {})

    def pair_results(self, keys: Sequence[PairKey]) -> dict[PairKey, PairValue]:
        """The cached check results of those ``(query digest, reference digest, mirrored)`` keys that have one.

        Args:
            keys: the candidate pairs.
        """

        def work(db: sqlite3.Connection) -> dict[PairKey, PairValue]:
            table = {
                (q, r, bool(m)): (ncc, ov, bool(al), (t0, t1, t2, t3))
                for q, r, m, ncc, ov, al, t0, t1, t2, t3 in db.execute("SELECT * FROM pairs")
            }
            return {key: table[key] for key in keys if key in table}

        return self._run("reading pair checks", work, {})

    def store_pairs(self, results: Sequence[tuple[PairKey, PairValue]]) -> None:
        """Add checked pairs, in one transaction.

        Args:
            results: ``(key, (detail NCC, overlap, aligned, transform))`` per pair.
        """

        def work(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(q, r, int(m), ncc, ov, int(al), *t) for (q, r, m), (ncc, ov, al, t) in results],
                )

        if results:
            self._run("writing pair checks", work, None)

    def search_result(self, key: str) -> dict[str, Any] | None:
        """The stored candidate search under ``key``, or None.

        Args:
            key: the hash of the search's inputs.
        """

        def work(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT result FROM searches WHERE key = ?", (key,)).fetchone()
            try:
                value = json.loads(row[0]) if row is not None else None
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None

        return self._run("reading the candidate search", work, None)

    def store_search(self, key: str, result: dict[str, Any]) -> None:
        """Keep ``result`` as the one stored candidate search.

        Args:
            key: the hash of the search's inputs.
            result: JSON-ready.
        """

        def work(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM searches")
                db.execute("INSERT INTO searches VALUES (?, ?)", (key, json.dumps(result)))

        self._run("writing the candidate search", work, None)

    def prune(self, paths: Iterable[str]) -> None:
        """Drop the rows of files no longer in the data set, and the contents and pairs no file has any more.

        Args:
            paths: every relative path of this audit.
        """

        def work(db: sqlite3.Connection) -> None:
            with db:
                db.execute("CREATE TEMP TABLE IF NOT EXISTS seen (path TEXT PRIMARY KEY)")
                db.execute("DELETE FROM seen")
                db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", [(p,) for p in paths])
                db.execute("DELETE FROM files WHERE path NOT IN (SELECT path FROM seen)")
                db.execute("DELETE FROM contents WHERE digest NOT IN (SELECT digest FROM files)")
                db.execute(
                    "DELETE FROM pairs WHERE query NOT IN (SELECT digest FROM contents) "
                    "OR reference NOT IN (SELECT digest FROM contents)"
                )

        self._run("pruning", work, None)

    def summary(self) -> dict[str, Any]:
        """The stats as ``audit.json`` keeps them."""
        return asdict(self.stats)

    def close(self) -> None:
        """Close the file (every finished chunk is already committed)."""
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None


def _connect(path: Path, key: str) -> tuple[sqlite3.Connection, str | None]:
    """Open ``path``; the problem that makes it unusable for ``key`` (None when it is fine or new).

    A locked or unopenable file raises (the audit runs without the cache and leaves the file alone);
    only a damaged or foreign one comes back with a problem, and is then replaced.
    """
    # A hot journal left by a killed audit is rolled back here, on the first read.
    connection = sqlite3.connect(path, timeout=LOCK_TIMEOUT_S)
    try:
        check = connection.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            return connection, f"is damaged ({check[0] if check else 'no answer'})"
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = dict(connection.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
    except sqlite3.OperationalError:
        connection.close()
        raise
    except sqlite3.DatabaseError as error:
        return connection, f"is damaged ({error})"
    if not tables:
        with connection:
            connection.executescript(_SCHEMA)
            connection.executemany("INSERT INTO meta VALUES (?, ?)", [("format", CACHE_FORMAT), ("fingerprint", key)])
        return connection, None
    if meta.get("format") != CACHE_FORMAT:
        return connection, "is not an audit cache"
    if meta.get("fingerprint") != key:
        return connection, "was made by other code or settings"
    return connection, None


def _remove(path: Path) -> None:
    """Delete the cache file and SQLite's side files (a stale journal must not be applied to the new file)."""
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
