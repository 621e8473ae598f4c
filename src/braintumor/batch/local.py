"""The local engine: this process scores its shards one after the other, decoding the next images while the
model scores the current ones, and holds one shard's rows at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braintumor.batch.plan import BatchPlan, Shard
from braintumor.batch.records import Decoded, decode_input, score_decoded
from braintumor.batch.shards import write_shard
from braintumor.batch.tracker import Tracker

# Inputs decoded and scored together: two of the predictor's batches, small enough to keep the bar moving.
CHUNK = 64


@dataclass(frozen=True)
class EngineSettings:
    """What every engine needs to score: the bundle, how to run it, and the shape of its input."""

    bundle_dir: Path
    class_names: tuple[str, ...]
    preprocessing: Any
    tta: bool = False
    backend: str = "auto"
    device: str = "auto"


def _decode_chunk(plan: BatchPlan, items: Sequence[int], preprocessing: Any) -> list[Decoded]:
    return [entry for item in items for entry in decode_input(item, plan.sources[item], preprocessing)]


def _chunks(shards: Sequence[Shard]) -> list[tuple[Shard, tuple[int, ...]]]:
    return [(shard, shard.items[i : i + CHUNK]) for shard in shards for i in range(0, len(shard.items), CHUNK)]


def _decoded_ahead(plan: BatchPlan, shards: Sequence[Shard], preprocessing: Any) -> Iterator[tuple[Shard, list]]:
    """Each chunk's decoded inputs, the next chunk decoding in a thread while the caller scores this one."""
    jobs = _chunks(shards)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        future = pool.submit(_decode_chunk, plan, jobs[0][1], preprocessing) if jobs else None
        for index, (shard, _) in enumerate(jobs):
            assert future is not None
            decoded = future.result()
            if index + 1 < len(jobs):
                future = pool.submit(_decode_chunk, plan, jobs[index + 1][1], preprocessing)
            yield shard, decoded


def run_local(
    plan: BatchPlan, shards: Sequence[Shard], out_dir: Path, settings: EngineSettings, tracker: Tracker
) -> None:
    """Score ``shards`` in this process and write each as soon as its last input is scored."""
    if not shards:
        return
    from braintumor.batch.model import build_predictor

    predictor = build_predictor(settings.bundle_dir, tta=settings.tta, backend=settings.backend, device=settings.device)
    current: Shard | None = None
    rows: list[dict[str, Any]] = []
    for shard, decoded in _decoded_ahead(plan, shards, settings.preprocessing):
        if current is not None and shard != current:
            write_shard(out_dir, current, rows, settings.class_names)
            tracker.shard_written()
            rows = []
        current = shard
        scored = score_decoded(predictor, decoded)
        rows += scored
        tracker.rows_done(scored, len({entry.item for entry in decoded}))
    if current is not None:
        write_shard(out_dir, current, rows, settings.class_names)
        tracker.shard_written()
