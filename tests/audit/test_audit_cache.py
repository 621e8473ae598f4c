"""The audit cache: a second audit reads nothing, changes are picked up, interruptions resume, damage is survived.

Every test compares the cached audit with an audit of the same folder without the cache: the cache may
only save work, never change a result.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import braintumor.auditing.cache as cache_module
import braintumor.auditing.near_copies as near_copies
import braintumor.auditing.scan as scan
from braintumor.auditing.candidate_index import search_candidates
from braintumor.auditing.constants import CACHE_DIR_NAME, CACHE_FILE
from braintumor.auditing.run import run_audit
from braintumor.auditing.similarity import check_pairs, nearest_candidates
from braintumor.cli import app
from tests.audit.test_audit import random_scan

AN_HOUR_AGO = time.time() - 3600


def _comparable(audit: dict[str, Any]) -> dict[str, Any]:
    """The audit without what differs between any two runs (times, the cache's own counts)."""
    kept = {k: v for k, v in audit.items() if k not in ("created", "timing", "cache")}
    kept["near_duplicates"] = {k: v for k, v in audit["near_duplicates"].items() if k not in ("search_s", "check_s")}
    return kept


def _make_root(root: Path) -> Path:
    """Training: 2 scans per class; Testing: re-encoded and resized copies, unrelated scans and a broken file."""
    rng = np.random.default_rng(3)
    training = []
    for folder in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"):
        for index in range(2):
            path = root / "Training" / folder / f"t{index}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            random_scan(rng).save(path, quality=95)
            training.append(path)
    testing = root / "Testing" / "glioma_tumor"
    testing.mkdir(parents=True)
    Image.open(training[0]).save(testing / "reencoded.jpg", quality=60)
    Image.open(training[1]).resize((120, 120)).save(testing / "resized.png")
    shutil.copy(training[2], testing / "exact.jpg")
    random_scan(rng).save(testing / "unrelated.jpg", quality=95)
    (testing / "broken.jpg").write_bytes(b"not an image")
    _age(root)
    return root


def _age(root: Path) -> None:
    """Give every file an old modification time, so the cache trusts its stat (a fresh one is re-hashed)."""
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))


def _audit(root: Path, out: Path, **options: Any) -> dict[str, Any]:
    return run_audit(root, out, show_progress=False, write_report=False, workers=2, **options).audit


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every image the scan decodes (and every detail image the check decodes again), by source."""
    seen: list[str] = []
    decode, detail = scan.decode_image_bytes, near_copies.detail_thumbnail

    def counting_decode(data: bytes, source: Any, **options: Any) -> Any:
        seen.append(str(source))
        return decode(data, source, **options)

    def counting_detail(path: Path) -> np.ndarray:
        seen.append(f"detail:{path}")
        return detail(path)

    monkeypatch.setattr(scan, "decode_image_bytes", counting_decode)
    monkeypatch.setattr(near_copies, "detail_thumbnail", counting_detail)
    return seen


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return _make_root(tmp_path / "data")


def test_second_audit_reads_nothing_and_equals_the_uncached_one(root: Path, tmp_path: Path, decodes: list) -> None:
    plain = _audit(root, tmp_path / "plain", use_cache=False)
    assert plain["cache"] is None and not (tmp_path / "plain" / CACHE_DIR_NAME).exists()
    assert plain["near_duplicates"]["pairs_checked"] > 0 and plain["leakage"]["Testing"]["near_copy"] >= 1
    decodes.clear()
    first = _audit(root, tmp_path / "cached")
    assert _comparable(first) == _comparable(plain)
    # The cold cached audit decodes each file once: its check uses the scan's detail images.
    assert first["cache"]["files_decoded"] == len(decodes) == 13
    assert (tmp_path / "cached" / CACHE_DIR_NAME / CACHE_FILE).is_file()
    decodes.clear()
    second = _audit(root, tmp_path / "cached")
    assert decodes == []
    assert _comparable(second) == _comparable(plain)
    stats = second["cache"]
    assert (stats["files_reused"], stats["files_decoded"], stats["pairs_checked"]) == (13, 0, 0)
    assert stats["pairs_reused"] == plain["near_duplicates"]["pairs_checked"] and stats["notes"] == []


def test_added_deleted_modified_and_touched_files(root: Path, tmp_path: Path, decodes: list) -> None:
    out = tmp_path / "audit"
    _audit(root, out)
    rng = np.random.default_rng(11)
    random_scan(rng).save(root / "Testing" / "glioma_tumor" / "new.jpg", quality=95)
    random_scan(rng).save(root / "Training" / "no_tumor" / "new.jpg", quality=95)
    (root / "Training" / "pituitary_tumor" / "t1.jpg").unlink()
    random_scan(rng).save(root / "Training" / "glioma_tumor" / "t1.jpg", quality=95)  # modified in place
    os.utime(root / "Training" / "meningioma_tumor" / "t0.jpg")  # touched: same bytes, new time
    decodes.clear()
    updated = _audit(root, out)
    assert sorted(Path(d).name for d in decodes) == ["new.jpg", "new.jpg", "t1.jpg"]
    assert updated["cache"]["files_decoded"] == 3 and updated["cache"]["files_rehashed"] >= 1
    assert updated["cache"]["pairs_reused"] > 0
    # The search met only what changed: the new Testing query in full, kept queries only the 2 new
    # Training images (new.jpg and the modified t1.jpg); the deleted one was nobody's candidate or is re-searched.
    stats, near = updated["cache"], updated["near_duplicates"]
    assert stats["queries_searched"] + stats["queries_extended"] == near["queries_searched"]
    assert stats["queries_searched"] < near["queries_searched"]
    assert stats["search_comparisons"] < near["queries_searched"] * near["reference_images"]
    assert _comparable(updated) == _comparable(_audit(root, tmp_path / "plain", use_cache=False))
    with sqlite3.connect(out / CACHE_DIR_NAME / CACHE_FILE) as db:
        cached = {path for (path,) in db.execute("SELECT path FROM files")}
    assert "Training/pituitary_tumor/t1.jpg" not in cached and "Testing/glioma_tumor/new.jpg" in cached


def test_an_audit_stopped_mid_scan_or_mid_check_resumes(
    root: Path, tmp_path: Path, decodes: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _audit(root, tmp_path / "plain", use_cache=False)
    out = tmp_path / "audit"
    monkeypatch.setattr(scan, "CACHE_COMMIT_EVERY", 3)
    counting = scan.decode_image_bytes

    def interrupted(data: bytes, source: Any, **options: Any) -> Any:
        if len(decodes) >= 7:
            raise KeyboardInterrupt
        return counting(data, source, **options)

    monkeypatch.setattr(scan, "decode_image_bytes", interrupted)
    decodes.clear()
    with pytest.raises(KeyboardInterrupt):
        run_audit(root, out, show_progress=False, write_report=False, workers=1)
    monkeypatch.setattr(scan, "decode_image_bytes", counting)
    # Stopped during the pair check after its first chunk: the chunks done are kept.
    monkeypatch.setattr(near_copies, "CACHED_CHECK_CHUNK", 2)
    calls: list[int] = []

    def stop_after_one(*args: Any, **kwargs: Any) -> Any:
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return check_pairs(*args, **kwargs)

    monkeypatch.setattr(near_copies, "check_pairs", stop_after_one)
    decodes.clear()
    with pytest.raises(KeyboardInterrupt):
        _audit(root, out)
    assert 0 < len(decodes) <= 13 - 6  # the files committed before the first stop were not decoded again
    monkeypatch.setattr(near_copies, "check_pairs", check_pairs)
    decodes.clear()
    resumed = _audit(root, out)
    assert decodes == [] and resumed["cache"]["pairs_reused"] == 2
    assert _comparable(resumed) == _comparable(plain)


# Killed in a reading thread at the 6th decode; each decode waits a little so the main thread has
# committed the first chunks (2 files each) by then.
KILLED_AUDIT = """
import os, signal, sys, time
import braintumor.auditing.scan as scan
from braintumor.auditing.run import run_audit
scan.CACHE_COMMIT_EVERY = 2
decode, seen = scan.decode_image_bytes, []
def killing(data, source, **options):
    seen.append(source)
    time.sleep(0.05)
    if len(seen) == 6:
        os.kill(os.getpid(), signal.SIGKILL)
    return decode(data, source, **options)
scan.decode_image_bytes = killing
run_audit(sys.argv[1], sys.argv[2], show_progress=False, write_report=False, workers=1)
"""


@pytest.mark.slow
def test_an_audit_killed_with_sigkill_resumes(root: Path, tmp_path: Path, decodes: list) -> None:
    out = tmp_path / "audit"
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_AUDIT), str(root), str(out)], capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    decodes.clear()
    resumed = _audit(root, out)
    assert resumed["cache"]["notes"] == [] and 0 < resumed["cache"]["files_decoded"] <= 13 - 4
    assert _comparable(resumed) == _comparable(_audit(root, tmp_path / "plain", use_cache=False))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other settings"])
def test_a_damaged_or_foreign_cache_is_replaced_with_a_note(
    root: Path, tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "audit"
    plain = _audit(root, out)
    path = out / CACHE_DIR_NAME / CACHE_FILE
    if damage == "garbage":
        path.write_bytes(b"\x00not a database" * 200)
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        monkeypatch.setitem(scan.CACHE_SETTINGS, "detail_size", 999)
    notes: list[str] = []
    again = run_audit(root, out, show_progress=False, write_report=False, console_log=notes.append).audit
    assert len(notes) == 1 and str(path) in notes[0] and "starting a new one" in notes[0]
    assert again["cache"]["files_decoded"] == 13
    assert _comparable(again) == _comparable(plain)
    assert _audit(root, out)["cache"]["files_decoded"] == 0  # the new cache works


def test_a_locked_cache_is_left_alone(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "audit"
    plain = _audit(root, out)
    monkeypatch.setattr(cache_module, "LOCK_TIMEOUT_S", 0.1)
    path = out / CACHE_DIR_NAME / CACHE_FILE
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")  # another audit in the middle of a commit
    try:
        notes: list[str] = []
        locked = run_audit(root, out, show_progress=False, write_report=False, console_log=notes.append).audit
    finally:
        holder.rollback()
        holder.close()
    assert len(notes) == 1 and "database is locked" in notes[0] and "auditing without it" in notes[0]
    assert _comparable(locked) == _comparable(plain)
    assert _audit(root, out)["cache"]["files_decoded"] == 0  # still there, still whole


def test_a_sqlite_failure_mid_audit_turns_the_cache_off(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _audit(root, tmp_path / "plain", use_cache=False)

    def failing_store(self: cache_module.AuditCache, *args: Any) -> None:  # e.g. the disk is full
        self._run("writing file rows", lambda db: db.execute("INSERT INTO no_such_table VALUES (1)"), None)

    monkeypatch.setattr(cache_module.AuditCache, "store", failing_store)
    notes: list[str] = []
    audit = run_audit(root, tmp_path / "audit", show_progress=False, write_report=False, console_log=notes.append)
    assert len(notes) == 1 and "continuing without the cache" in notes[0]
    assert _comparable(audit.audit) == _comparable(plain)


def test_pair_checks_do_not_depend_on_the_batch() -> None:
    """The pair cache relies on it: a pair checked alone scores bitwise what it scores among others."""
    rng = np.random.default_rng(5)
    images = [np.asarray(random_scan(rng).convert("L").resize((128, 128))) for _ in range(3)]
    shifted = [np.roll(image, (3, -2), axis=(0, 1)) for image in images]
    query = np.stack(images + images[:2])
    reference = np.stack(shifted + images[1:3])
    together = check_pairs(query, reference)
    for index in range(len(query)):
        alone = check_pairs(query[index : index + 1], reference[index : index + 1])
        for name in ("detail_ncc", "overlap", "aligned", "transform"):
            assert np.array_equal(getattr(alone, name)[0], getattr(together, name)[index]), (index, name)
    assert together.aligned.any()


def test_an_extended_candidate_search_equals_a_full_one() -> None:
    """Adding and removing references (with exact ties among them) and queries, step by step."""
    rng = np.random.default_rng(8)
    thumbs = rng.integers(0, 256, (60, 2, 16, 16), dtype=np.uint8)
    thumbs[41] = thumbs[40]  # two references with the same pixels: an exact tie
    thumbs[5, :, :, :] = thumbs[40, :, :, ::-1]  # a mirrored copy among the queries
    names = [f"d{i}" for i in range(len(thumbs))]
    steps = [  # (query rows, reference rows)
        (range(0, 10), range(20, 45)),
        (range(0, 12), range(20, 50)),  # more queries and references
        (range(2, 12), [*range(20, 30), *range(32, 55)]),  # two references and two queries removed
        (range(2, 12), [*range(20, 30), *range(32, 55)]),  # nothing changed
    ]
    stored = None
    for queries, references in steps:
        query, reference = list(queries), list(references)
        args = ([names[i] for i in query], [names[i] for i in reference], thumbs[query], thumbs[reference], 3)
        extended = search_candidates(*args, stored=stored)
        full = search_candidates(*args)
        for a, b in zip(extended.channels, full.channels, strict=True):
            for name in ("scores", "indices", "mirrored"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert extended.index == full.index
        stored = extended.index
    assert extended.comparisons == 0 and extended.queries_extended == len(query)
    assert full.comparisons == len(query) * len(reference)


def test_candidate_scores_do_not_depend_on_the_block() -> None:
    rng = np.random.default_rng(9)
    query = rng.integers(0, 256, (7, 64, 64), dtype=np.uint8)
    reference = rng.integers(0, 256, (40, 64, 64), dtype=np.uint8)
    together = nearest_candidates(query, reference, k=40)
    for row in range(len(query)):
        alone = nearest_candidates(query[row : row + 1], reference, k=40, reference_block=9)
        order = np.argsort(together.indices[row])
        assert np.array_equal(alone.scores[0][np.argsort(alone.indices[0])], together.scores[row][order])


def test_cli_cache_options(root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["audit", str(root), "--exact-only", "--no-report", "-q"]
    cached = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--cache", str(tmp_path / "c")])
    assert cached.exit_code == 0, cached.output
    assert (tmp_path / "c" / CACHE_FILE).is_file() and not (tmp_path / "a" / CACHE_DIR_NAME).exists()
    assert "cache: reused 0 of 13 files" in cached.output
    again = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--cache", str(tmp_path / "c")])
    assert "cache: reused 13 of 13 files" in again.output
    plain = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--no-cache"])
    assert plain.exit_code == 0 and not (tmp_path / "b" / CACHE_DIR_NAME).exists()
    inside = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--cache", str(root / "cache")])
    assert inside.exit_code == 2 and "inside the data folder" in " ".join(inside.output.split())
    assert not (root / "cache").exists()
