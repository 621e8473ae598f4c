"""Batch prediction end to end: a run killed with SIGKILL resumes to every input exactly once, and the Ray engine
on a local 2-CPU cluster writes what the local engine writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from braintumor.batch import plan_batch, read_shards, run_batch
from braintumor.batch.shards import SUMMARY_FILE, shard_path
from braintumor.data.synthetic_volumes import dicom_series_bytes, tumour_stack
from tests.integration.test_flagged_surfaces import photo_like

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def large_tree(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1200 small images (the synthetic Training images copied under 20 folders), enough shards to stop half-way."""
    tree = tmp_path_factory.mktemp("large")
    images = sorted((synthetic_root / "Training").rglob("*.jpg"))
    for copy in range(20):
        folder = tree / f"site{copy:02d}"
        folder.mkdir()
        for index, path in enumerate(images[:60]):
            (folder / f"{index:03d}-{path.name}").write_bytes(path.read_bytes())
    return tree


def _predict(bundle: Path, tree: Path, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "braintumor.cli", "predict", str(bundle), str(tree), "--out-dir", str(out)]
    return subprocess.Popen([*command, "--shard-size", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_after_shards(process: subprocess.Popen, out: Path, shards: int, timeout: float = 120.0) -> int:
    """SIGKILL ``process`` as soon as ``shards`` shard files are written; returns how many there were then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        written = len(list(out.glob("part-*/shard-*.parquet")))
        if written >= shards:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return len(list(out.glob("part-*/shard-*.parquet")))
        time.sleep(0.005)
    process.kill()
    output = process.communicate()[0].decode(errors="replace")
    pytest.fail(f"the batch ended before {shards} shards were written: {output[-2000:]}")


def test_a_killed_batch_resumes_with_every_input_exactly_once(trained_run, large_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = plan_batch([large_tree], shard_size=4)
    total = len(plan.all_shards())
    written = _kill_after_shards(_predict(trained_run.bundle_dir, large_tree, out), out, shards=total // 3)
    assert written < total and not (out / SUMMARY_FILE).exists()
    resumed = _predict(trained_run.bundle_dir, large_tree, out)
    output = resumed.communicate(timeout=300)[0].decode(errors="replace")
    assert resumed.returncode == 0, output
    assert f"{written} already there" in output or f"{written + 1} already there" in output, output
    rows = read_shards(out).to_pylist()
    assert sorted(row["item"] for row in rows) == list(range(len(plan.sources)))
    assert not list(out.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed_tree(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images, one unreadable file, one photo the guard flags and one DICOM series spread over two folders."""
    tree = tmp_path_factory.mktemp("mixed")
    for path in sorted((synthetic_root / "Testing").rglob("*.jpg"))[:24]:
        (tree / path.name).write_bytes(path.read_bytes())
    (tree / "broken.png").write_bytes(b"\x89PNG but nothing after")
    photo_like().save(tree / "photo.png")
    for index, (name, data) in enumerate(dicom_series_bytes(tumour_stack(5, 48, tumour_slices=(1, 2, 3)))):
        folder = tree / "series" / str(index % 2)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return tree


def _shard_frame(out: Path):
    frame = read_shards(out).to_pandas()
    return frame.sort_values("item").reset_index(drop=True)


def test_ray_and_local_engines_write_the_same_shards_and_mix_across_parts(
    trained_run, mixed_tree: Path, ray_cluster, tmp_path: Path
) -> None:
    """One Ray run (its start-up costs a minute on 2 cores): part 0 of 2 on Ray agrees with the local engine's part
    0; a lost shard is redone by the local engine, which then finishes part 1 to the full local run's results."""
    settings = {"num_parts": 2, "shard_size": 4, "show_progress": False}
    local_all = run_batch(trained_run.bundle_dir, [mixed_tree], tmp_path / "local", shard_size=4, show_progress=False)
    assert local_all.complete and local_all.summary["errors"] == 1 and local_all.summary["studies"] == 1
    out = tmp_path / "mixed"
    first = run_batch(trained_run.bundle_dir, [mixed_tree], out, part_id=0, engine="ray", **settings)
    plan = plan_batch([mixed_tree], num_parts=2, shard_size=4)
    assert not first.complete and first.shards_written == len(plan.shards(0))
    ray_part, local = _shard_frame(out), _shard_frame(tmp_path / "local")
    local_part = local[local["item"].isin(ray_part["item"])].reset_index(drop=True)
    assert ray_part["source"].tolist() == local_part["source"].tolist()
    assert ray_part["class_name"].fillna("").tolist() == local_part["class_name"].fillna("").tolist()
    columns = [name for name in ray_part.columns if name.startswith("p_")]
    difference = ray_part[columns].to_numpy(float) - local_part[columns].to_numpy(float)
    assert np.nanmax(np.abs(difference)) <= 1e-5
    # Part 0 lost a shard: the next run of part 0 (here on the local engine: the shards are the same) redoes only it.
    shard_path(out, plan.shards(0)[1]).unlink()
    again = run_batch(trained_run.bundle_dir, [mixed_tree], out, part_id=0, **settings)
    assert again.shards_written == 1
    last = run_batch(trained_run.bundle_dir, [mixed_tree], out, part_id=1, **settings)
    assert last.complete and last.summary["rows_repeated"] == 0 and last.summary["inputs_missing"] == []
    assert last.summary == local_all.summary
    assert (out / "studies.csv").read_text() == (tmp_path / "local" / "studies.csv").read_text()
