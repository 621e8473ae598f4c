"""Batch prediction on a large tree: one process, the Ray engine, a two-part job array, and a killed run resumed.

Usage:
    .venv/bin/python benchmarks/batch_predict.py BUNDLE [--data ROOT] [--images 3000] [--work DIR]
    .venv/bin/python benchmarks/batch_predict.py --quick        # a small tree and a tiny untrained bundle

The tree is made here from the Training images of ``--data`` (Testing is never read): ``--images`` JPEGs, each a
Training image (in turn, sorted paths) with a seeded random horizontal flip, crop (85-100 % of each side) and
intensity change (gain 0.85-1.15, offset -12..12), in folders of 500, plus two unreadable files. Every mode is
the command a user types, run as a subprocess:

- ``one process``: ``braintumor predict BUNDLE TREE --json`` (everything in one process and in memory);
- ``--out-dir, local``: the batch engine in one process, shards written as it goes;
- ``--engine ray``: a local Ray cluster of 2 CPUs (``ray start --head --num-cpus 2``), joined with ``--address``;
- ``--num-parts 2``: parts 0 and 1 started together, as two jobs of an array on this machine;
- ``killed + resumed``: the local engine killed with SIGKILL once half its shards are written, then run again.

Each gets images/s (wall clock of the whole command: start-up, model load and Ray's worker start included; the
cluster itself is started before) and, sampled every 0.5 s, the peak RSS of the command's process and the peak
PSS of its whole process tree (Ray's workers and the cluster included; PSS counts a shared page once in all, where
summed RSS would count it in each process). The predictions of every mode are compared
with the one-process ones (same class, probabilities within 1e-5), and the resumed run is checked to have every
input exactly once. ``--quick`` writes its results into ``--work`` only, never over the committed ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import command_line, markdown_header, markdown_row, option, produced_by, script_parser, write_json
from lib.replicas import augmented_copy
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
FOLDER_SIZE = 500
TOLERANCE = 1e-5
RAY_PORT = 6391
# Ray's token authentication on the cluster and in every client (the token in ~/.ray/auth_token).
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "token"}


def build_tree(data: Path, tree: Path, count: int, seed: int = 0) -> int:
    """``count`` augmented copies of the Training images under ``tree`` and two unreadable files; returns count."""
    sources = sorted(path for path in (data / "Training").rglob("*") if path.suffix.lower() in {".jpg", ".jpeg"})
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = augmented_copy(Image.open(sources[index % len(sources)]), rng)
        folder = tree / f"batch{index // FOLDER_SIZE:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:06d}.jpg", quality=90)
    (tree / "batch000" / "truncated.jpg").write_bytes((tree / "batch000" / "000000.jpg").read_bytes()[:200])
    (tree / "batch000" / "notes.txt").write_text("not an image\n")
    return count


class PeakMemory:
    """Samples, every 0.5 s, the RSS of a process and the summed PSS of its tree (plus any extra trees)."""

    def __init__(self, pid: int, extra: list[int] | None = None) -> None:
        import psutil

        self.psutil = psutil
        self.roots = [pid, *(extra or [])]
        self.main_mb = self.tree_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self, pid: int) -> tuple[float, float]:
        try:
            root = self.psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except self.psutil.NoSuchProcess:
            return 0.0, 0.0
        total = 0.0
        for process in processes:
            try:  # PSS: a page shared by several processes (Ray's object store, libraries) is counted once in all
                total += process.memory_full_info().pss
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied):
                continue
        main = root.memory_info().rss if root.is_running() else 0.0
        return main / 2**20, total / 2**20

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                main, _ = self._rss(self.roots[0])
                total = sum(self._rss(pid)[1] for pid in self.roots)
            except self.psutil.Error:
                main, total = 0.0, 0.0
            self.main_mb, self.tree_mb = max(self.main_mb, main), max(self.tree_mb, total)
            self._stop.wait(0.5)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": round(self.main_mb, 1), "peak_tree_pss_mb": round(self.tree_mb, 1)}


def braintumor(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "braintumor.cli", *arguments]


def run_commands(commands: list[list[str]], extra_trees: list[int] | None = None) -> dict[str, Any]:
    """Start ``commands`` together, wait for all; wall seconds, peak RSS of each, their output."""
    started = time.perf_counter()
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=RAY_ENV) for c in commands
    ]
    monitors = [PeakMemory(process.pid, extra_trees) for process in processes]
    outputs = [process.communicate()[0] for process in processes]
    seconds = time.perf_counter() - started
    memory = [monitor.stop() for monitor in monitors]
    for process, output in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(process.args)} failed:\n{output[-3000:]}")
    return {"seconds": round(seconds, 2), "memory": memory, "outputs": outputs}


def engine_rate(output: str) -> float | None:
    """The images/s the batch command printed (scoring only, without the start-up)."""
    found = re.findall(r"\(([\d.]+) images/s\)", output)
    return float(found[-1]) if found else None


def shard_predictions(out: Path) -> dict[str, dict[str, Any]]:
    from braintumor.batch import read_shards

    return {row["source"]: row for row in read_shards(out).to_pylist()}


def json_predictions(path: Path) -> dict[str, dict[str, Any]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    return {
        item["source"]: {"class_name": item["class_name"], **{f"p_{k}": v for k, v in item["probabilities"].items()}}
        for item in payload["predictions"]
    }


def compare(reference: dict[str, dict], other: dict[str, dict]) -> dict[str, Any]:
    """Same sources, same classes, and the largest probability difference."""
    scored = {source: row for source, row in other.items() if row.get("error") is None}
    shared = sorted(set(reference) & set(scored))
    columns = [key for key in next(iter(reference.values())) if key.startswith("p_")]
    diff = max((abs(reference[s][c] - scored[s][c]) for s in shared for c in columns), default=0.0)
    same = sum(reference[s]["class_name"] == scored[s]["class_name"] for s in shared)
    return {
        "same_sources": set(reference) == set(scored),
        "same_class": same,
        "compared": len(shared),
        "max_probability_diff": float(diff),
        "identical": set(reference) == set(scored) and same == len(shared) and diff <= TOLERANCE,
    }


def start_ray_cluster() -> subprocess.Popen:
    """``ray start --head --num-cpus 2 --block``: a local 2-CPU cluster this script started (and stops by pid)."""
    ray = str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "get-auth-token", "--generate"], check=True, capture_output=True)  # kept if one exists
    command = [ray, "start", "--head", "--num-cpus", "2", "--port", str(RAY_PORT), "--block"]
    command += ["--include-dashboard", "false", "--disable-usage-stats"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=RAY_ENV)
    time.sleep(15)  # the head node's GCS and raylet come up in a few seconds on a busy 2-core machine
    if process.poll() is not None:
        raise SystemExit(f"ray start failed:\n{process.communicate()[0][-3000:]}")
    return process


def stop_ray_cluster(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)  # --block: ray start stops the processes it started, then exits
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    # ray start leaves the cluster's address behind; a later ray.init() on this machine would try to join it.
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.is_file() and current.read_text().strip().endswith(f":{RAY_PORT}"):
        current.unlink()


def killed_and_resumed(bundle: Path, tree: Path, out: Path, shard_size: int, total_shards: int) -> dict[str, Any]:
    """Kill the local engine with SIGKILL once half its shards are written, run it again, check exactly-once."""
    command = braintumor("predict", str(bundle), str(tree), "--out-dir", str(out), "--shard-size", str(shard_size))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = total_shards // 2
    while process.poll() is None and len(list(out.glob("part-*/shard-*.parquet"))) < half:
        time.sleep(0.05)
    if process.poll() is not None:
        raise SystemExit("the run to kill ended before half its shards were written: use more --images")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = len(list(out.glob("part-*/shard-*.parquet")))
    resumed = run_commands([command])
    from braintumor.batch import read_shards

    rows = read_shards(out, columns=["item", "slice_index"]).to_pylist()
    keys = [(row["item"], row["slice_index"]) for row in rows]
    inputs = len((out / "inputs.txt").read_text(encoding="utf-8").splitlines())
    return {
        "shards": total_shards,
        "shards_when_killed": written,
        "reused_on_restart": int(re.search(r"(\d+) already there", resumed["outputs"][0]).group(1)),
        "rows": len(rows),
        "rows_repeated": len(keys) - len(set(keys)),
        "inputs_missing": inputs - len({item for item, _ in keys}),
        "resume_seconds": resumed["seconds"],
    }


def run_modes(bundle: Path, tree: Path, work: Path, shard_size: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every mode's timings and predictions (keyed by mode name)."""
    size = ["--shard-size", str(shard_size)]
    timings: dict[str, dict] = {}
    predictions: dict[str, dict] = {}
    one = work / "one-process.json"
    timings["one process (predict --json)"] = run_commands(
        [braintumor("predict", str(bundle), str(tree), "--json", str(one))]
    )
    predictions["one process (predict --json)"] = json_predictions(one)
    local = work / "local"
    timings["--out-dir, local engine"] = run_commands(
        [braintumor("predict", str(bundle), str(tree), "--out-dir", str(local), *size)]
    )
    predictions["--out-dir, local engine"] = shard_predictions(local)
    cluster = start_ray_cluster()
    try:
        ray_out = work / "ray"
        address = ["--engine", "ray", "--address", f"127.0.0.1:{RAY_PORT}"]
        command = braintumor("predict", str(bundle), str(tree), "--out-dir", str(ray_out), *size, *address)
        timings["--engine ray (2-CPU cluster)"] = run_commands([command], extra_trees=[cluster.pid])
        predictions["--engine ray (2-CPU cluster)"] = shard_predictions(ray_out)
    finally:
        stop_ray_cluster(cluster)
    parts = work / "parts"
    commands = [
        braintumor(
            "predict", str(bundle), str(tree), "--out-dir", str(parts), *size, "--num-parts", "2", "--part-id", str(k)
        )
        for k in range(2)
    ]
    timings["--num-parts 2 (both parts at once)"] = run_commands(commands)
    predictions["--num-parts 2 (both parts at once)"] = shard_predictions(parts)
    return timings, predictions


def table(rows: list[dict[str, Any]], kill: dict[str, Any], caption: str) -> str:
    columns = ["mode", "images", "wall s", "images/s (wall)", "images/s (scoring)", "peak RSS MB", "tree PSS MB"]
    columns += ["same class", "max prob. diff"]
    lines = markdown_header(columns, align="lrrrrrrrr")
    for row in rows:
        rss = " + ".join(str(item["peak_rss_mb"]) for item in row["memory"])
        tree = " + ".join(str(item["peak_tree_pss_mb"]) for item in row["memory"])
        check = row["comparison"]
        cells = [row["mode"], str(row["images"]), f"{row['seconds']:.1f}", f"{row['images_per_s']:.1f}"]
        cells += [row["engine_rate"], rss, tree, f"{check['same_class']}/{check['compared']}"]
        cells.append(f"{check['max_probability_diff']:.1e}")
        lines.append(markdown_row(cells))
    lines += [
        "",
        f"Killed with SIGKILL after {kill['shards_when_killed']} of {kill['shards']} shards and run again: "
        f"{kill['reused_on_restart']} shards reused, {kill['rows']} rows, {kill['rows_repeated']} repeated, "
        f"{kill['inputs_missing']} inputs missing (resume {kill['resume_seconds']:.1f} s).",
        "",
        caption,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("bundle", type=Path, nargs="?", help="The bundle (--quick: a tiny untrained one by default).")
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BRAINTUMOR_DATA", "../shared/data/brain-tumor-mri"))
    )
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument(
        "--work", type=Path, default=None, help="Where the tree and outputs go (default: a temp folder)."
    )
    parser.add_argument("--quick", action="store_true", help="120 images, shards of 8; results stay in --work.")
    args = parser.parse_args()
    images, shard_size = (120, 8) if args.quick else (args.images, args.shard_size)
    work = args.work or Path(tempfile.mkdtemp(prefix="batch-predict-"))
    bundle = args.bundle
    if bundle is None:
        if not args.quick:
            raise SystemExit("give a BUNDLE (or --quick for a tiny untrained one)")
        from braintumor.bundle.examples import tiny_bundle

        bundle = tiny_bundle(work / "tiny-bundle")
    tree = work / "tree"
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    build_tree(args.data, tree, images)
    print(f"tree of {images} images (+2 unreadable) in {time.perf_counter() - started:.0f} s: {tree}", flush=True)
    timings, predictions = run_modes(bundle, tree, work, shard_size)
    reference = predictions["one process (predict --json)"]
    rows = []
    for mode, timing in timings.items():
        rate = [engine_rate(output) for output in timing["outputs"]]
        rows.append(
            {
                "mode": mode,
                "images": images,
                "seconds": timing["seconds"],
                "images_per_s": round(images / timing["seconds"], 2),
                "engine_rate": " + ".join(f"{value:.1f}" for value in rate if value is not None) or "-",
                "memory": timing["memory"],
                "comparison": compare(reference, predictions[mode]),
            }
        )
    from braintumor.batch import plan_batch

    total = len(plan_batch([tree], shard_size=shard_size).all_shards())
    kill = killed_and_resumed(bundle, tree, work / "killed", shard_size, total)
    kill["comparison"] = compare(reference, shard_predictions(work / "killed"))
    command = command_line("batch_predict.py", str(args.bundle or ""), option("--images", args.images, 3000))
    if args.quick:
        command = command_line("batch_predict.py", "--quick")
    caption = produced_by(
        command.replace("  ", " "),
        f"bundle {Path(bundle).parent.name}/{Path(bundle).name}, {images} images (+2 unreadable), shards of "
        f"{shard_size}, ray {ray_version()}, load average {load_start:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end, ",
    )
    markdown = table(rows, kill, caption)
    target = (work if args.quick else RESULTS) / "batch_predict.md"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(markdown, encoding="utf-8")
    full = {"images": images, "shard_size": shard_size, "modes": rows, "killed_and_resumed": kill, "command": command}
    full["load_average"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
    full["identical"] = all(row["comparison"]["identical"] for row in rows) and kill["comparison"]["identical"]
    full["exactly_once"] = kill["rows_repeated"] == 0 and kill["inputs_missing"] == 0
    write_json(target.with_suffix(".json"), full)
    print(markdown)
    print(f"identical predictions: {full['identical']}; exactly once after the kill: {full['exactly_once']}")


def ray_version() -> str:
    try:
        import ray
    except ImportError:
        return "not installed"
    return ray.__version__


if __name__ == "__main__":
    main()
