"""Does this code still train what a run folder holds? Re-train its first epochs and compare them, row by row.

A results table may list a bundle trained at an earlier commit (a 100-epoch run is not re-trained for every
change). This check re-trains each run's recipe, exactly as its ``run.json`` recorded it (same data root, same
seed), in a scratch folder, stops it after ``--epochs`` epochs of its first stage (SIGKILL through the resume
tests' kill point, once those epochs are in ``history.csv``), and compares the training loss and accuracy, the
validation loss and accuracy and the learning rate of every epoch with the run's own ``history.csv``, digit for
digit. Every row equal means this code replays the run's first epochs exactly: the same data, draws, weights
and arithmetic. It cannot see a change that acts only after those epochs; the table says how many were
compared.

    python benchmarks/reproduce_epochs.py runs/seed-table/seed-cnn-distilled runs/seed-table/vit-tiny \\
        runs/seed-table/vit-tiny-deit --epochs 2

Writes ``benchmarks/results/reproduce_epochs.md`` and ``.json``. Runs on the CPU type and precision the runs
were trained on (bf16 results differ from fp32 ones).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import command_line, markdown_header, markdown_row, option, produced_by, script_parser, write_table

COMPARED = ("train_loss", "train_acc", "val_loss", "val_acc", "learning_rate")
DEFAULT_OUT = Path("benchmarks/results/reproduce_epochs.md")
KILL_ENV = "BRAINTUMOR_KILL_AT"  # braintumor.training.determinism.KILL_ENV; not imported: torch stays out


def _read_history(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "history.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _train_child(run_dir: Path, out_dir: Path) -> None:
    """In the child process: train the run's recorded recipe on its recorded data into ``out_dir``."""
    from braintumor.config import Recipe
    from braintumor.training.steps import read_run_file
    from braintumor.workflows.train import RunOptions, train_recipe

    record = read_run_file(run_dir)
    recipe = Recipe.model_validate(record["recipe"])
    options = RunOptions(show_progress=False, tracker="none")
    train_recipe(recipe, record["data_root"], out_dir, console_log=print, options=options)


def _retrain_first_epochs(run_dir: Path, epochs: int, scratch: Path) -> tuple[list[dict[str, str]], float]:
    """The history of the first ``epochs`` epochs re-trained now, and the seconds that took."""
    stage = _read_history(run_dir)[0]["stage"]
    out_dir = scratch / run_dir.name
    environment = {**os.environ, KILL_ENV: f"epoch:{stage}:{epochs}"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, __file__, "--child", str(run_dir), str(out_dir)],
        env=environment,
        check=False,  # the kill point ends the child with SIGKILL on purpose
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    history = _read_history(out_dir) if (out_dir / "history.csv").is_file() else []
    return history[:epochs], seconds


def differences(recorded: list[dict[str, str]], retrained: list[dict[str, str]], epochs: int) -> list[str]:
    """Every compared figure that differs between two histories' first ``epochs`` rows, in words."""
    if not len(retrained) == len(recorded) == epochs:
        return [f"the re-training wrote {len(retrained)} of {epochs} epochs (the run has {len(recorded)})"]
    return [
        f"epoch {old['epoch']} {column}: {old[column]} then, {new[column]} now"
        for old, new in zip(recorded, retrained, strict=True)
        for column in COMPARED
        if old[column] != new[column]
    ]


def _compare(run_dir: Path, epochs: int, scratch: Path) -> dict[str, Any]:
    recorded = _read_history(run_dir)[:epochs]
    retrained, seconds = _retrain_first_epochs(run_dir, epochs, scratch)
    found = differences(recorded, retrained, epochs)
    return {
        "run": str(run_dir),
        "epochs_compared": min(len(recorded), len(retrained)),
        "identical": not found,
        "differences": found,
        "seconds": round(seconds, 1),
        "first_epoch": {"then": recorded[0], "now": retrained[0] if retrained else None},
    }


def _markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = markdown_header(["run", "epochs compared", "identical", "first difference", "re-training time"])
    for row in rows:
        first = row["differences"][0] if row["differences"] else "-"
        cells = [row["run"], str(row["epochs_compared"]), "yes" if row["identical"] else "**no**", first]
        lines.append(markdown_row([*cells, f"{row['seconds'] / 60:.1f} min"]))
    columns = ", ".join(COMPARED)
    lines += ["", f"Compared per epoch: {columns}, as written in `history.csv`.", "", produced_by(command)]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        _train_child(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = script_parser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="Run folders (with run.json and history.csv).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    command = command_line(
        "reproduce_epochs.py",
        " ".join(map(str, args.runs)),
        option("--epochs", args.epochs),
        option("--out", args.out, DEFAULT_OUT),
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="reproduce-") as scratch:
        for run_dir in args.runs:
            print(f"== re-training the first {args.epochs} epochs of {run_dir}", flush=True)
            rows.append(_compare(run_dir, args.epochs, Path(scratch)))
            print(rows[-1]["identical"], rows[-1]["differences"][:3], flush=True)
    write_table(args.out, _markdown(rows, command), rows)
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
