"""``braintumor predict ... --out-dir OUT``: batch prediction into resumable shards (docs/batch.md).

The options are parsed here and handed to :meth:`braintumor.api.Bundle.predict_batch`; the command prints what
the call did. Without ``--out-dir`` none of these options apply and ``predict`` answers in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from braintumor.batch.defaults import DEFAULT_SHARD_SIZE, ENGINES
from braintumor.cli.common import fail, stage_errors, warn

OutDirOption = typer.Option(
    None,
    "--out-dir",
    help="Batch mode: write Parquet and CSV shards here; a run that stops continues where it stopped (docs/batch.md).",
)
EngineOption = typer.Option(
    None, "--engine", help=f"Batch engine: {' or '.join(ENGINES)} (default local; ray needs braintumor[ray])."
)
AddressOption = typer.Option(
    None, "--address", help="With --engine ray: the Ray cluster (auto, HOST:PORT; default $RAY_ADDRESS or a local one)."
)
NumPartsOption = typer.Option(1, "--num-parts", min=1, help="Batch: split the inputs into this many parts (job array).")
PartIdOption = typer.Option(
    None, "--part-id", min=0, help="Batch: run only this part (0 to --num-parts - 1); default: every part."
)
ShardSizeOption = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", min=1, help="Batch: inputs per shard file.")


@dataclass(frozen=True)
class BatchOptions:
    """What ``predict`` was given for batch mode."""

    out_dir: Path | None
    engine: str | None
    address: str | None
    num_parts: int
    part_id: int | None
    shard_size: int

    def wanted(self) -> bool:
        """Batch mode is ``--out-dir``; the other batch options without it are a mistake."""
        if self.out_dir is not None:
            return True
        given = [
            name
            for name, value in (
                ("--engine", self.engine),
                ("--address", self.address),
                ("--part-id", self.part_id),
                ("--num-parts", None if self.num_parts == 1 else self.num_parts),
                ("--shard-size", None if self.shard_size == DEFAULT_SHARD_SIZE else self.shard_size),
            )
            if value is not None
        ]
        if given:
            fail(f"{', '.join(given)} need --out-dir (batch mode writes its results there)")
        return False


def run_batch_command(
    bundle: Path, inputs: list[Path], options: BatchOptions, *, tta: bool, threshold: float, min_slices: int
) -> None:
    """Run the batch and print one line on what was done, and the summary once every part is written."""
    import braintumor
    from braintumor.inference.volume import StudyRule

    with stage_errors():
        run = braintumor.load(bundle).predict_batch(
            inputs,
            options.out_dir,
            engine=options.engine or "local",
            num_parts=options.num_parts,
            part_id=options.part_id,
            address=options.address,
            tta=tta,
            show_progress=True,
            shard_size=options.shard_size,
            rule=StudyRule(threshold=threshold, min_consecutive=min_slices),
        )
    parts = "every part" if len(run.parts) == run.num_parts else f"part {run.parts[0]} of {run.num_parts}"
    typer.echo(
        f"{parts}: {run.shards_written} shards written, {run.shards_reused} already there; "
        f"{run.images} images in {run.seconds:.1f} s ({run.images_per_s:.1f} images/s) -> {run.out_dir}"
    )
    if run.errors:
        warn("unreadable", f"{run.errors} inputs could not be read: their rows give the reason (column error)")
    if not run.complete:
        typer.echo("other parts are not finished yet: the last one to finish writes summary.json")
        return
    summary = run.summary
    typer.echo(
        f"batch complete: {summary['scored']} images scored, {summary['errors']} unreadable, "
        f"{summary['flagged']} flagged by the input guard, {summary['studies']} series with a study finding "
        f"(summary.json)"
    )
