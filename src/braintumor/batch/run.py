"""One call of a batch prediction: plan, claim the output folder, score what is left, finish when all is there."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from braintumor.batch.defaults import DEFAULT_ENGINE, DEFAULT_SHARD_SIZE, ENGINES
from braintumor.batch.finish import finish_batch
from braintumor.batch.local import EngineSettings, run_local
from braintumor.batch.plan import plan_batch
from braintumor.batch.shards import claim_output, make_manifest, need_pyarrow, remove_leftovers, shard_done
from braintumor.batch.tracker import Tracker
from braintumor.errors import BrainTumorError
from braintumor.inference.volume import StudyRule
from braintumor.results import BatchRun


def _check_options(engine: str, address: str | None, device: str) -> None:
    from braintumor.batch.model import resolve_device

    if engine not in ENGINES:
        raise BrainTumorError(f"unknown engine {engine!r}: use {' or '.join(ENGINES)}")
    if address and engine != "ray":
        raise BrainTumorError("--address names a Ray cluster: it needs --engine ray")
    if engine == "local":
        resolve_device(device)


def run_batch(
    bundle_dir: Path | str,
    sources: Sequence[Path | str],
    out_dir: Path | str,
    *,
    engine: str = DEFAULT_ENGINE,
    num_parts: int = 1,
    part_id: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    tta: bool = False,
    backend: str = "auto",
    device: str = "auto",
    address: str | None = None,
    rule: StudyRule | None = None,
    show_progress: bool = True,
) -> BatchRun:
    """Predict every input of ``sources`` into shards under ``out_dir``; a shard already written is kept.

    ``part_id`` runs one part of ``num_parts`` (one job of an array); None runs every part. ``engine`` is
    ``local`` (this process) or ``ray`` (a Ray cluster at ``address``; without one, a local cluster).
    """
    from braintumor.bundle import read_bundle_config

    _check_options(engine, address, device)
    need_pyarrow()
    if engine == "ray":
        from braintumor.batch.ray_engine import import_ray

        import_ray()  # a missing extra fails before any file is written
    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    config = read_bundle_config(bundle_dir)
    plan = plan_batch(sources, num_parts=num_parts, shard_size=shard_size, exclude=out_dir)
    parts = list(range(num_parts)) if part_id is None else [part_id]
    for part in parts:
        plan.check_part(part)
    claim_output(out_dir, make_manifest(plan, bundle_dir, config.class_names, tta=tta), plan)
    remove_leftovers(out_dir, sorted({shard.folder for part in parts for shard in plan.shards(part)}))
    shards = [shard for part in parts for shard in plan.shards(part)]
    pending = [shard for shard in shards if not shard_done(out_dir, shard)]
    settings = EngineSettings(bundle_dir, tuple(config.class_names), config.preprocessing, tta, backend, device)
    with Tracker(sum(len(shard.items) for shard in pending), show=show_progress) as tracker:
        if engine == "ray":
            from braintumor.batch.ray_engine import run_ray

            run_ray(plan, pending, out_dir, settings, tracker, address=address)
        else:
            run_local(plan, pending, out_dir, settings, tracker)
    summary = finish_batch(out_dir, plan, config.class_names, rule or StudyRule())
    return BatchRun(
        out_dir=out_dir,
        engine=engine,
        parts=parts,
        num_parts=num_parts,
        shards_written=tracker.shards_written,
        shards_reused=len(shards) - len(pending),
        images=tracker.scored,
        errors=tracker.errors,
        seconds=round(tracker.seconds, 3),
        images_per_s=round(tracker.images_per_s, 2),
        complete=summary is not None,
        summary=summary or {},
    )
