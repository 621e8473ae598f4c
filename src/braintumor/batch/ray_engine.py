"""The Ray engine: Ray Data reads and decodes the inputs on CPU tasks, a pool of actors (each loading the bundle
once) scores them, and this process writes each shard as soon as all its inputs are scored.

The shards are those of the local engine and hold the same rows (both call :mod:`braintumor.batch.records`),
so either engine continues what the other started. The pool's size comes from the cluster: one actor per GPU
where the cluster has GPUs, else one per CPU on small clusters (one thread each) and one per four CPUs on larger
ones (four threads each), leaving a quarter of each actor's CPU share to the decoding tasks.

Every node must read the bundle and the inputs at the same paths (a shared file system); only this process
writes into the output folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.batch.local import EngineSettings
from braintumor.batch.plan import BatchPlan, Shard
from braintumor.batch.records import Decoded, decode_input, row_order, score_decoded
from braintumor.batch.shards import write_shard
from braintumor.batch.tracker import Tracker
from braintumor.errors import BrainTumorError

RAY_EXTRA = "pip install 'braintumor[ray]'"
# Inputs per decoding task and images per scoring call.
DECODE_BATCH = 16
SCORE_BATCH = 64
# CPU share of a decoding task (decoding is light next to the model; several run beside each actor).
DECODE_CPUS = 0.25


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line error naming the extra that installs them."""
    try:
        import ray
        import ray.data  # a bare ``ray`` install lacks Ray Data, the engine's API
    except ImportError:
        raise BrainTumorError(f"--engine ray needs Ray Data: {RAY_EXTRA}") from None
    return ray


@dataclass(frozen=True)
class Pool:
    """How many scoring actors, and what each asks of the cluster (CPUs, GPUs, threads)."""

    actors: int
    cpus: float
    gpus: float
    threads: int


def pool_for(resources: dict[str, float], device: str) -> Pool:
    """The actor pool for a cluster with ``resources`` (see the module docstring).

    Example:
        >>> pool_for({"CPU": 2.0}, "auto"), pool_for({"CPU": 64.0, "GPU": 4.0}, "auto").actors
        (Pool(actors=2, cpus=0.75, gpus=0.0, threads=1), 4)
    """
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        return Pool(actors=gpus, cpus=1.0, gpus=1.0, threads=1)
    cpus = max(1, int(resources.get("CPU", 1)))
    threads = 1 if cpus < 16 else 4
    return Pool(actors=max(1, cpus // threads), cpus=0.75 * threads, gpus=0.0, threads=threads)


def _decode_batch(batch: dict[str, np.ndarray], preprocessing: Any) -> dict[str, np.ndarray]:
    """Ray Data task: a batch of ``(shard, item, source)`` rows becomes one row per image or volume slice."""
    shard_of, decoded = {}, []
    for shard, item, source in zip(batch["shard"], batch["item"], batch["source"], strict=True):
        shard_of[int(item)] = int(shard)
        decoded += decode_input(int(item), str(source), preprocessing)
    size = preprocessing.image_size
    blank = np.zeros((3, size, size), dtype=np.uint8)
    return {
        "shard": np.array([shard_of[entry.item] for entry in decoded], dtype=np.int64),
        "item": np.array([entry.item for entry in decoded], dtype=np.int64),
        "rows_of_input": np.array([entry.rows_of_input for entry in decoded], dtype=np.int64),
        "source": np.array([entry.source for entry in decoded], dtype=object),
        "kind": np.array([entry.kind for entry in decoded], dtype=object),
        "slice_index": np.array([-1 if entry.slice_index is None else entry.slice_index for entry in decoded]),
        "header_flag": np.array([entry.header_flag or "" for entry in decoded], dtype=object),
        "error": np.array([entry.error or "" for entry in decoded], dtype=object),
        "study": np.array([json.dumps(entry.study) for entry in decoded], dtype=object),
        "pixels": np.stack([blank if entry.pixels is None else entry.pixels for entry in decoded]),
    }


def _decoded_of(batch: dict[str, np.ndarray]) -> list[Decoded]:
    return [
        Decoded(
            item=int(batch["item"][i]),
            source=str(batch["source"][i]),
            kind=str(batch["kind"][i]),
            pixels=None if batch["error"][i] else np.asarray(batch["pixels"][i], dtype=np.uint8),
            slice_index=None if int(batch["slice_index"][i]) < 0 else int(batch["slice_index"][i]),
            header_flag=str(batch["header_flag"][i]) or None,
            error=str(batch["error"][i]) or None,
            study=json.loads(str(batch["study"][i])),
            rows_of_input=int(batch["rows_of_input"][i]),
        )
        for i in range(len(batch["item"]))
    ]


class ScoreActor:
    """A Ray actor of the scoring pool: loads the bundle once, then scores batch after batch."""

    def __init__(self, bundle_dir: str, tta: bool, backend: str, device: str, threads: int) -> None:
        from braintumor.batch.model import build_predictor

        self.predictor = build_predictor(bundle_dir, tta=tta, backend=backend, device=device, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decoded = _decoded_of(batch)
        about = {entry.item: (shard, entry.rows_of_input) for entry, shard in zip(decoded, batch["shard"], strict=True)}
        rows = score_decoded(self.predictor, decoded)
        return {
            "shard": np.array([int(about[row["item"]][0]) for row in rows], dtype=np.int64),
            "item": np.array([row["item"] for row in rows], dtype=np.int64),
            "rows_of_input": np.array([about[row["item"]][1] for row in rows], dtype=np.int64),
            "row": np.array([json.dumps(row) for row in rows], dtype=object),
        }


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (or ``$RAY_ADDRESS``, else start a local one); True when this call did."""
    if ray.is_initialized():
        return False
    # "local": a new cluster for this run, never one that ``ray start`` left behind on this machine (--address auto).
    target = address or ("local" if not os.environ.get("RAY_ADDRESS") else None)
    try:
        ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as error:
        raise BrainTumorError(
            f"cannot reach the Ray cluster at {address}: {error} (a cluster with token authentication also needs "
            "RAY_AUTH_MODE=token and its token here: docs/batch.md)"
        ) from None
    return True


def _dataset(ray: Any, plan: BatchPlan, shards: Sequence[Shard], settings: EngineSettings, pool: Pool) -> Any:
    """The Ray Data pipeline: the shards' inputs, decoded by tasks, scored by the actor pool."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # this engine shows its own bar (images/s, ETA)
    items = [
        {"shard": position, "item": item, "source": plan.sources[item]}
        for position, shard in enumerate(shards)
        for item in shard.items
    ]
    blocks = {"override_num_blocks": max(1, -(-len(items) // DECODE_BATCH))}
    if "override_num_blocks" not in inspect.signature(ray.data.from_items).parameters:  # Ray before 2.10
        blocks = {"parallelism": blocks["override_num_blocks"]}
    decoded = ray.data.from_items(items, **blocks).map_batches(
        _decode_batch,
        batch_size=DECODE_BATCH,
        batch_format="numpy",
        fn_kwargs={"preprocessing": settings.preprocessing},
        num_cpus=DECODE_CPUS,
    )
    return decoded.map_batches(
        ScoreActor,
        batch_size=SCORE_BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        fn_constructor_kwargs={
            "bundle_dir": str(settings.bundle_dir),
            "tta": settings.tta,
            "backend": settings.backend,
            "device": "cuda" if pool.gpus else "cpu",
            "threads": pool.threads,
        },
        num_cpus=pool.cpus,
        num_gpus=pool.gpus,
    )


def _collect(dataset: Any, shards: Sequence[Shard], out_dir: Path, settings: EngineSettings, tracker: Tracker) -> None:
    """Gather the scored rows per shard and write a shard once every row of every one of its inputs is in."""
    waiting = {position: set(shard.items) for position, shard in enumerate(shards)}
    rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: Counter[int] = Counter()
    for batch in dataset.iter_batches(batch_size=SCORE_BATCH, batch_format="numpy"):
        arrived: list[dict[str, Any]] = []
        finished_inputs, touched = 0, set()
        for position, item, expected, text in zip(
            batch["shard"], batch["item"], batch["rows_of_input"], batch["row"], strict=True
        ):
            row = json.loads(str(text))
            position, item = int(position), int(item)
            rows[position].append(row)
            arrived.append(row)
            seen[item] += 1
            if seen[item] == int(expected):
                waiting[position].discard(item)
                finished_inputs += 1
                touched.add(position)
        tracker.rows_done(arrived, finished_inputs)
        for position in sorted(touched):
            if not waiting[position]:
                write_shard(out_dir, shards[position], sorted(rows.pop(position), key=row_order), settings.class_names)
                tracker.shard_written()


def run_ray(
    plan: BatchPlan,
    shards: Sequence[Shard],
    out_dir: Path,
    settings: EngineSettings,
    tracker: Tracker,
    *,
    address: str | None = None,
) -> None:
    """Score ``shards`` on a Ray cluster (joined at ``address``, or a local one started here and stopped after)."""
    if not shards:
        return
    ray = import_ray()
    started = _connect(ray, address)
    # Ray Data's own lines (execution plans, where its logs are) would scroll the progress bar away.
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)
    try:
        pool = pool_for(ray.cluster_resources(), settings.device)
        with warnings.catch_warnings():
            # A batch smaller than the pool leaves actors idle: nothing to act on.
            warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")
            _collect(_dataset(ray, plan, shards, settings, pool), shards, out_dir, settings, tracker)
    except ray.exceptions.RayError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise BrainTumorError(
            f"the Ray pipeline failed ({first}); the {tracker.shards_written} shards written are kept: "
            "run the same command again to continue"
        ) from None
    finally:
        data_logger.setLevel(level)
        if started:
            ray.shutdown()
