"""Exact resume on real images: an uninterrupted run against one killed with SIGKILL and resumed.

A small data root of symlinks (``--per-class`` images per class in Training and Testing) is built under
``--work``; every run is the CLI a user types. Per precision: the recipe trained twice uninterrupted (is it
repeatable?), then once more, killed with SIGKILL as soon as ``history.csv`` holds ``--kill-after`` epochs,
and continued with ``braintumor train --resume``. The table gives the issue's columns and whether the whole
history and the final weights are identical.

    python benchmarks/resume_check.py --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import command_line, data_parser, markdown_header, markdown_row, option, produced_by, write_json
from safetensors.torch import load_file

from braintumor.data.layout import discover_split

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SETS = ["data.image_size=64", "train.max_epochs=8"]
PRECISIONS = {"recipe default": [], "fp32": ["train.precision=32"]}


def small_root(data: Path, work: Path, per_class: int) -> Path:
    """``per_class`` images per class and split of ``data`` (name order), as symlinks under ``work``."""
    root = work / "data"
    for split in ("Training", "Testing"):
        by_class: dict[str, list[Path]] = {}
        for sample in discover_split(data, split):
            by_class.setdefault(sample.path.parent.name, []).append(sample.path)
        for folder, paths in by_class.items():
            target = root / split / folder
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(paths)[:per_class]:
                link = target / path.name
                if not link.exists():
                    link.symlink_to(path.resolve())
    return root


def _train(arguments: list[str], kill_after: int | None = None, run_dir: Path | None = None) -> float:
    """Run ``braintumor train ...``; with ``kill_after``, SIGKILL it once history.csv has that many epochs."""
    command = [sys.executable, "-m", "braintumor.cli", "train", *arguments, "--tracker", "none", "-q", "--no-onnx"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_after is not None and run_dir is not None:
        history = run_dir / "history.csv"
        while process.poll() is None:
            if history.is_file() and len(history.read_text().splitlines()) > kill_after:  # header + epochs
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    output, _ = process.communicate()
    if kill_after is None and process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output}")
    if kill_after is not None and process.returncode != -signal.SIGKILL:
        raise SystemExit(f"the run ended before it could be killed:\n{output}")
    return time.perf_counter() - started


def _outcome(run_dir: Path) -> dict[str, Any]:
    training = json.loads((run_dir / "bundle" / "config.json").read_text())["training"]
    history = [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in training["history"]]
    return {
        "history": history,
        "weights": load_file(str(run_dir / "bundle" / "model.safetensors")),
        "val_accuracy": training["val_metrics"]["accuracy"],
        "val_loss": training["val_metrics"]["loss"],
        "precision": json.loads((run_dir / "bundle" / "config.json").read_text())["recipe"]["train"]["precision"],
    }


def _compare(run: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    keys = reference["weights"].keys()
    differences = [float((run["weights"][k].float() - reference["weights"][k].float()).abs().max()) for k in keys]
    pairs = zip(run["history"], reference["history"], strict=False)
    losses = [abs(a["train_loss"] - b["train_loss"]) for a, b in pairs]
    return {
        "history_identical": run["history"] == reference["history"],
        "weights_bitwise_equal": all(torch.equal(run["weights"][k], reference["weights"][k]) for k in keys),
        "max_abs_weight_difference": max(differences),
        "max_train_loss_difference": max(losses) if losses else None,
    }


RUNS = {"first": "uninterrupted", "second": "uninterrupted, again", "resumed": "killed + resume"}


def _train_loss(history: list[dict[str, Any]], epoch: int) -> float | None:
    return history[epoch - 1].get("train_loss") if len(history) >= epoch else None


def _runs(recipe: str, root: Path, folders: dict[str, Path], overrides: list[str], kill_after: int) -> dict[str, Any]:
    """Train the three runs; their seconds and the epochs history.csv held when the third was killed."""
    seconds = {}
    for name in ("first", "second"):
        seconds[name] = _train([recipe, "--data", str(root), "--out", str(folders[name]), *overrides])
    resumed = folders["resumed"]
    killed = _train([recipe, "--data", str(root), "--out", str(resumed), *overrides], kill_after, resumed)
    killed_epochs = len((resumed / "history.csv").read_text().splitlines()) - 1
    seconds["resumed"] = killed + _train(["--resume", str(resumed)])
    return {"seconds": seconds, "killed_epochs": killed_epochs}


def check(recipe: str, root: Path, work: Path, sets: list[str], kill_after: int) -> list[dict[str, Any]]:
    """The table's rows: per precision, two uninterrupted runs and one killed and resumed."""
    rows = []
    for label, extra in PRECISIONS.items():
        overrides = [part for value in [*sets, *extra] for part in ("--set", value)]
        folders = {name: work / label.replace(" ", "-") / name for name in RUNS}
        done = _runs(recipe, root, folders, overrides, kill_after)
        outcomes = {name: _outcome(folder) for name, folder in folders.items()}
        for name, outcome in outcomes.items():
            rows.append(
                {
                    "precision": f"{label} ({outcome['precision']})",
                    "run": RUNS[name],
                    "train_loss_epoch_killed": _train_loss(outcome["history"], kill_after),
                    "train_loss_epoch_after": _train_loss(outcome["history"], kill_after + 1),
                    "epochs": len(outcome["history"]),
                    "val_accuracy": outcome["val_accuracy"],
                    "val_loss": outcome["val_loss"],
                    "killed_with_epochs_in_history": done["killed_epochs"] if name == "resumed" else None,
                    "seconds": round(done["seconds"][name], 1),
                    **_compare(outcome, outcomes["first"]),
                }
            )
    return rows


def table(rows: list[dict[str, Any]], kill_after: int) -> str:
    columns = [
        "precision",
        "run",
        f"train loss, epoch {kill_after}",
        f"train loss, epoch {kill_after + 1}",
        "final validation accuracy / loss",
        "history = first run",
        "weights = first run (max abs diff)",
    ]
    lines = markdown_header(columns, "llrrrll")
    for row in rows:
        weights = "bitwise" if row["weights_bitwise_equal"] else f"no ({row['max_abs_weight_difference']:.2g})"
        lines.append(
            markdown_row(
                [
                    row["precision"],
                    row["run"],
                    f"{row['train_loss_epoch_killed']:.4f}",
                    f"{row['train_loss_epoch_after']:.4f}",
                    f"{row['val_accuracy']:.3f} / {row['val_loss']:.3f}",
                    "identical" if row["history_identical"] else "differs",
                    weights,
                ]
            )
        )
    return "\n".join(lines)


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--recipe", default="seed-cnn")
    parser.add_argument("--per-class", type=int, default=60, help="Images per class and split.")
    parser.add_argument("--set", dest="sets", action="append", default=None, help="Recipe override (repeatable).")
    parser.add_argument("--kill-after", type=int, default=2, help="SIGKILL once history.csv has this many epochs.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/resume-check"), help="Data root and run folders.")
    parser.add_argument("--out", type=Path, default=RESULTS / "resume_check.json")
    args = parser.parse_args()
    sets = args.sets or DEFAULT_SETS
    root = small_root(args.data, args.work, args.per_class)
    rows = check(args.recipe, root, args.work, sets, args.kill_after)
    command = command_line(
        "resume_check.py",
        option("--data", args.data),
        option("--recipe", args.recipe, "seed-cnn"),
        option("--per-class", args.per_class, 60),
        *(f"--set {value}" for value in (args.sets or [])),
        option("--kill-after", args.kill_after, 2),
    )
    markdown = table(rows, args.kill_after)
    provenance = produced_by(command, f"torch threads {torch.get_num_threads()}, ")
    print(markdown + "\n\n" + provenance)
    write_json(args.out, {"command": command, "provenance": provenance, "sets": sets, "rows": rows})


if __name__ == "__main__":
    main()
