"""What a batch counts while it runs, and the progress bar that shows it: inputs done, images/s and the ETA."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class Tracker:
    """Counts of this call (shards written, rows scored and failed) and, when shown, a rich progress bar.

    The bar advances per input of the plan (its ETA is the time the inputs left take at the rate so far);
    ``images/s`` counts scored images, a volume's slices each.
    """

    inputs: int
    show: bool = True
    shards_written: int = 0
    scored: int = 0
    errors: int = 0
    started: float = field(default_factory=time.perf_counter)
    _progress: Progress | None = None
    _task: Any = None

    def __enter__(self) -> Tracker:
        self.started = time.perf_counter()
        if self.show:
            self._progress = Progress(
                TextColumn("[bold]predict"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("predict", total=self.inputs, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def rows_done(self, rows: Sequence[dict[str, Any]], inputs: int) -> None:
        """Count rows that were scored (or failed), of ``inputs`` finished inputs."""
        failed = sum(row["error"] is not None for row in rows)
        self.errors += failed
        self.scored += len(rows) - failed
        if self._progress is not None:
            self._progress.update(self._task, advance=inputs, rate=f"{self.images_per_s:.1f} images/s")

    def shard_written(self) -> None:
        self.shards_written += 1
