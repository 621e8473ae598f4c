"""The accuracy benchmark: train recipes from scratch (seeded), calibrate on validation, evaluate on Testing.

For every recipe: train on Training (a stratified validation split taken out of it), fit the temperature
and the referral threshold on that validation split (``calibrate``), then evaluate once on the official
Testing split and on its deduplicated subset (the data audit's clean manifest). Ensembles of trained
recipes (``--ensemble NAME=RECIPE+RECIPE``) are combined with equal weights and treated the same way.
Nothing is chosen on Testing; no number is typed in by hand.

    python benchmarks/accuracy.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights

Writes ``benchmarks/results/accuracy.md`` and ``.json``: test accuracy with its bootstrap 95% CI, macro-F1
(CI), glioma recall (CI), ECE after temperature scaling (and before), the deduplicated accuracy, the
validation accuracy and the training time on this machine.
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

from braintumor.auditing.audit_file import find_audit_file
from braintumor.auditing.run import run_audit
from braintumor.bundle import read_bundle_config
from braintumor.config import load_recipe
from braintumor.errors import BrainTumorError
from braintumor.evaluation.evaluate import evaluate_bundle
from braintumor.workflows.calibrate import calibrate_bundle
from braintumor.workflows.ensemble import combine_bundles
from braintumor.workflows.train import RunOptions, train_recipe

DEFAULT_RECIPES = [
    "lite0-probe",
    "lite1-probe",
    "lite2-probe",
    "lite0-lpft-cached",
    "lite0-lpft",
    "lite0-frozen",
    "lite0-frozen-headcrop",
]
DEFAULT_OUT = Path("benchmarks/results/accuracy.md")
DEFAULT_ENSEMBLES = ["probe-ensemble=lite0-probe+lite1-probe+lite2-probe"]


def _row(name: str, bundle_dir: Path, data: Path, out_dir: Path, audit: Path | None, train_s: float | None) -> dict:
    calibration_run = calibrate_bundle(bundle_dir, data, out_dir / f"calibration-{name}", show_progress=False)
    evaluation = evaluate_bundle(
        bundle_dir, data, "Testing", out_dir / f"eval-{name}", show_progress=False, audit=audit
    )
    metrics = evaluation.metrics
    intervals = metrics["confidence_intervals"]
    calibration = metrics["calibration"]
    row: dict[str, Any] = {
        "recipe": name,
        "test_accuracy": metrics["accuracy"],
        "test_accuracy_ci": intervals["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "macro_f1_ci": intervals["macro_f1"],
        "glioma_recall": metrics["per_class"]["glioma"]["recall"],
        "glioma_recall_ci": intervals["recall"]["glioma"],
        "ece": calibration["ece"],
        "ece_uncalibrated": calibration.get("uncalibrated", {}).get("ece", calibration["ece"]),
        "temperature": calibration["temperature"],
        "test_loss": metrics["loss"],
        # The bundle's own validation accuracy (T = 1), measured by calibrate: for an ensemble too.
        "val_accuracy": calibration_run.record["before"]["accuracy"],
        "training_s": train_s,
    }
    deduplicated = metrics.get("deduplicated")
    if deduplicated:
        row.update(dedup_accuracy=deduplicated["accuracy"], dedup_n=deduplicated["n_images"])
        row["dedup_glioma_recall"] = deduplicated["per_class"]["glioma"]["recall"]
    return row


def _markdown(rows: list[dict[str, Any]], command: str) -> str:
    header = [
        "recipe", "test acc [95% CI]", "macro-F1 [CI]", "glioma recall [CI]", "ECE (T=1 → fitted T)",
        "dedup acc (n)", "val acc", "train time",
    ]  # fmt: skip
    lines = markdown_header(header)
    for row in rows:
        if "error" in row:
            lines.append(markdown_row([row["recipe"], f"not measured: {row['error']}"] + [""] * 6))
            continue
        cells = [
            row["recipe"],
            f"{row['test_accuracy']:.2%} [{row['test_accuracy_ci']['low']:.1%}, {row['test_accuracy_ci']['high']:.1%}]",
            f"{row['macro_f1']:.3f} [{row['macro_f1_ci']['low']:.3f}, {row['macro_f1_ci']['high']:.3f}]",
            f"{row['glioma_recall']:.2f} [{row['glioma_recall_ci']['low']:.2f}, {row['glioma_recall_ci']['high']:.2f}]",
            f"{row['ece_uncalibrated']:.3f} → {row['ece']:.3f} (T={row['temperature']:.2f})",
            f"{row['dedup_accuracy']:.2%} ({row['dedup_n']})" if "dedup_accuracy" in row else "-",
            f"{row['val_accuracy']:.2%}",
            f"{row['training_s'] / 60:.1f} min" if row.get("training_s") is not None else "-",
        ]
        lines.append(markdown_row(cells))
    lines += [
        "",
        produced_by(command, f"torch threads {torch.get_num_threads()}, ")
        + " Temperature and referral threshold fitted on the validation split from Training; CIs are percentile "
        "bootstraps over test images.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--recipes", nargs="*", default=DEFAULT_RECIPES)
    parser.add_argument(
        "--ensemble", nargs="*", default=None, help="NAME=RECIPE+RECIPE[+...] (default: the README's ensemble)."
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/accuracy"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--audit", type=Path, default=None, help="audit.json (default: found or made by the audit).")
    parser.add_argument("--reuse", action="store_true", help="Re-evaluate recipes whose bundle exists; train the rest.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads.")
    args = parser.parse_args()
    ensembles = DEFAULT_ENSEMBLES if args.ensemble is None else args.ensemble
    use_weights_dir(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = command_line(
        "accuracy.py",
        option("--data", args.data),
        option("--weights-dir", args.weights_dir),
        option("--recipes", args.recipes, DEFAULT_RECIPES),
        option("--ensemble", ensembles, DEFAULT_ENSEMBLES),
        option("--reuse", args.reuse),
        option("--threads", args.threads or None),
        option("--out", args.out, DEFAULT_OUT),
    )
    audit = find_audit_file(args.data, args.audit)
    if audit is None:
        print("== no data audit found: running it for the deduplicated Testing subset", flush=True)
        run_audit(args.data, show_progress=False, console_log=print)
        audit = find_audit_file(args.data, None)
    rows: list[dict[str, Any]] = []
    times: dict[str, float | None] = {}

    def emit() -> None:
        write_table(args.out, _markdown(rows, command), rows)
        print(args.out.read_text(encoding="utf-8"), flush=True)

    for recipe_ref in args.recipes:
        # A recipe is a name under configs/ or a YAML path; rows and run folders use its stem.
        name = Path(recipe_ref).stem if recipe_ref.endswith((".yaml", ".yml")) else recipe_ref
        run_dir = args.runs_dir / name
        try:
            if not (args.reuse and (run_dir / "bundle" / "config.json").is_file()):
                print(f"== training {name}", flush=True)
                options = RunOptions(show_progress=False, tracker="none")
                train_recipe(load_recipe(recipe_ref), args.data, run_dir, console_log=print, options=options)
            times[name] = read_bundle_config(run_dir / "bundle").training.duration_s
            rows.append(_row(name, run_dir / "bundle", args.data, args.runs_dir, audit, times[name]))
        except BrainTumorError as error:
            print(f"== {name}: not measured: {error}", flush=True)
            rows.append({"recipe": name, "error": str(error).split(". Pass")[0]})
        emit()
    for spec in ensembles:
        name, _, members = spec.partition("=")
        recipes = members.split("+")
        try:
            missing = [r for r in recipes if r not in times]
            if missing:
                raise BrainTumorError(f"ensemble {name}: recipes {missing} were not trained in this run")
            folder = combine_bundles([args.runs_dir / r / "bundle" for r in recipes], args.runs_dir / name, name=name)
            total = sum(t for t in (times[r] for r in recipes) if t is not None)
            rows.append(_row(name, folder, args.data, args.runs_dir, audit, total))
        except BrainTumorError as error:
            rows.append({"recipe": name, "error": str(error)})
        emit()


if __name__ == "__main__":
    main()
