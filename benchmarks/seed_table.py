"""Reproduce the seed project's comparison: train each recipe on Training, evaluate on Testing.

Writes a Markdown table (and JSON) with test accuracy, test loss, macro-F1, glioma recall, training
time and epochs, beside the seed's published numbers. A recipe whose pretrained weights cannot be had
on this machine gets a row that says so; no number is ever filled in by hand.

    python benchmarks/seed_table.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights

``--evaluate-only`` re-evaluates bundles already in ``--runs-dir`` (e.g. after a data audit exists).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from common import (
    command_line,
    data_parser,
    markdown_header,
    markdown_row,
    option,
    produced_by,
    use_weights_dir,
    write_table,
)

from braintumor.bundle import read_bundle_config
from braintumor.config import load_recipe
from braintumor.errors import BrainTumorError
from braintumor.evaluation.evaluate import evaluate_bundle
from braintumor.workflows.train import RunOptions, train_recipe

SEED_PUBLISHED = {
    "seed-cnn": ("64.72%", "1.2796"),
    "seed-cnn-keras": ("64.72%", "1.2796"),
    "seed-cnn-distilled": ("64.72%", "1.2796"),
    "seed-resnet50": ("70.81%", "1.2345"),
}
DEFAULT_OUT = Path("benchmarks/results/seed_table.md")
DEFAULT_RECIPES = [
    "lite0-frozen",
    "seed-resnet50",
    "seed-cnn",
    "seed-cnn-keras",
    "seed-cnn-distilled",
    "vit-tiny",
    "vit-tiny-deit",
]


def _overrides_for(recipe: str, overrides: list[str]) -> list[str]:
    """``section.field=value`` applies to every recipe, ``RECIPE:section.field=value`` to one."""
    chosen = []
    for override in overrides:
        key = override.split("=", 1)[0]
        if ":" not in key:
            chosen.append(override)
        elif key.split(":", 1)[0] == recipe:
            chosen.append(override.split(":", 1)[1])
    return chosen


def _row(recipe: str, bundle_dir: Path, data: Path, out_dir: Path) -> dict[str, Any]:
    config = read_bundle_config(bundle_dir)
    evaluation = evaluate_bundle(bundle_dir, data, "Testing", out_dir / f"eval-{recipe}", show_progress=False)
    metrics = evaluation.metrics
    training = config.training
    row: dict[str, Any] = {
        "recipe": recipe,
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "macro_f1": metrics["macro_f1"],
        "glioma_recall": metrics["per_class"]["glioma"]["recall"],
        "val_accuracy": training.val_metrics["accuracy"],
        "training_s": training.duration_s,
        "epochs_run": training.epochs_run,
        "best_epoch": training.best_epoch,
    }
    if training.distillation:
        teacher = training.distillation
        row["teacher"] = {
            "recipe": teacher["recipe"],
            "val_accuracy": teacher["val_metrics"]["accuracy"],
            "loss": teacher["loss"],
            "weight": teacher["weight"],
            "temperature": teacher["temperature"],
        }
    deduplicated = metrics.get("deduplicated")
    if deduplicated:
        row["dedup_accuracy"] = deduplicated["accuracy"]
        row["dedup_macro_f1"] = deduplicated["macro_f1"]
        row["dedup_n"] = deduplicated["n_images"]
    return row


def _markdown(rows: list[dict[str, Any]], command: str) -> str:
    has_dedup = any("dedup_accuracy" in row for row in rows)
    header = ["recipe", "test acc", "test loss", "macro-F1", "glioma recall"]
    if has_dedup:
        header += ["dedup test acc", "dedup macro-F1"]
    header += ["val acc", "train time", "epochs (best)", "seed paper acc / loss"]
    lines = markdown_header(header)
    for row in rows:
        published = " / ".join(SEED_PUBLISHED.get(row["recipe"], ("-", "-")))
        name = row["recipe"]
        if "teacher" in row:
            name += f" (distilled from {row['teacher']['recipe']}, validation {row['teacher']['val_accuracy']:.2%})"
        if "error" in row:
            cells = [name, f"not measured: {row['error']}"] + [""] * (len(header) - 3) + [published]
        else:
            cells = [
                name,
                f"{row['test_accuracy']:.2%}",
                f"{row['test_loss']:.4f}",
                f"{row['macro_f1']:.3f}",
                f"{row['glioma_recall']:.2f}",
            ]
            if has_dedup:
                cells += (
                    [f"{row['dedup_accuracy']:.2%} (n={row['dedup_n']})", f"{row['dedup_macro_f1']:.3f}"]
                    if "dedup_accuracy" in row
                    else ["-", "-"]
                )
            cells += [
                f"{row['val_accuracy']:.2%}",
                f"{row['training_s'] / 60:.1f} min",
                f"{row['epochs_run']} ({row['best_epoch']})",
                published,
            ]
        lines.append(markdown_row(cells))
    lines += ["", produced_by(command)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/seed-table"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--evaluate-only", action="store_true", help="Only re-evaluate existing bundles.")
    parser.add_argument("--reuse", action="store_true", help="Re-evaluate recipes whose bundle exists; train the rest.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is faster on a busy machine).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="Override for every recipe, or RECIPE:section.field=value for one.",
    )
    args = parser.parse_args()
    use_weights_dir(args)
    command = command_line(
        "seed_table.py",
        option("--data", args.data),
        option("--weights-dir", args.weights_dir),
        option("--evaluate-only", args.evaluate_only),
        option("--reuse", args.reuse),
        option("--threads", args.threads or None),
        option("--recipes", args.recipes, DEFAULT_RECIPES),
        option("--out", args.out, DEFAULT_OUT),
        *(option("--set", override) for override in args.overrides),
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for name in args.recipes:
        run_dir = args.runs_dir / name
        try:
            if not args.evaluate_only and not (args.reuse and (run_dir / "bundle" / "config.json").is_file()):
                print(f"== training {name}", flush=True)
                recipe = load_recipe(name, _overrides_for(name, args.overrides))
                options = RunOptions(show_progress=False, tracker="none")
                train_recipe(recipe, args.data, run_dir, console_log=print, options=options)
            rows.append(_row(name, run_dir / "bundle", args.data, args.runs_dir))
        except BrainTumorError as error:
            print(f"== {name}: not measured: {error}", flush=True)
            rows.append({"recipe": name, "error": str(error).split(". Pass")[0]})
        write_table(args.out, _markdown(rows, command), rows)
        print(args.out.read_text(encoding="utf-8"), flush=True)


if __name__ == "__main__":
    main()
