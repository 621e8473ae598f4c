"""``braintumor evaluate``: metrics of a bundle on one split, printed as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from braintumor.cli.common import DataOption, PrecisionOption, QuietOption, TtaOption, data_root, stage_errors, warn


def guard_line(metrics: dict[str, Any], bundle: Path | str, data: Path | str) -> str | None:
    """One line on the input guard: what it flagged and the accuracy on the rest, or how to add one.

    None when the guard flagged nothing: the accuracy on the accepted images is then the accuracy above.
    """
    guard = metrics.get("guard")
    if not isinstance(guard, dict):
        return (
            f"guard: none (bundle trained before the input guard; add one with `braintumor guard {bundle} "
            f"--data {data}`)"
        )
    if not guard["n_flagged"]:
        return None
    accepted = guard["accepted"]
    accuracy = f"{accepted['accuracy']:.2%}" if accepted is not None else "- (every image flagged)"
    share = guard["flagged_share"] or 0.0
    return (
        f"input guard: {guard['n_flagged']} of {guard['n_images']} images ({share:.1%}) flagged; "
        f"accuracy on the accepted images {accuracy}"
    )


def evaluate_command(
    bundle: Path = typer.Argument(..., help="Model bundle folder."),
    data: Path | None = DataOption,
    split: str = typer.Option("Testing", "--split", help="Split folder to evaluate."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <bundle>/../eval-<split>)."),
    report: bool = typer.Option(False, "--report", help="Also write report.html (plots, Grad-CAM, model card)."),
    tta: bool = TtaOption,
    precision: str | None = PrecisionOption,
    audit: Path | None = typer.Option(
        None,
        "--audit",
        help="Data audit (audit.json or its folder) for the "
        "deduplicated split (default: audits/<data root name>/ when present).",
    ),
    quiet: bool = QuietOption,
) -> None:
    """Accuracy, loss, per-class metrics, confusion matrix and per-image predictions on a split."""
    import braintumor
    from braintumor.cli.display import console, metrics_table, uncertainty_lines
    from braintumor.evaluation.adaptation_info import adaptation_text

    root = data_root(data)
    with stage_errors():
        evaluation = braintumor.load(bundle).evaluate(
            root, split, out, report=report, tta=tta, audit=audit, precision=precision, show_progress=not quiet
        )
    for skipped in evaluation.skipped:
        warn("skipped", f"{skipped.path}: {skipped.reason}")
    result = evaluation.metrics.raw
    recipe = result["recipe"]
    sections = [(result, f"{recipe} on {split}")]
    if evaluation.deduplicated is not None:
        dedup = evaluation.deduplicated
        sections.append(
            (
                dedup,
                f"{recipe} on {split}, deduplicated: {dedup['n_images']} "
                f"of {dedup['official_n_images']} images have no copy in Training",
            )
        )
    for metrics, title in sections:
        console.print(metrics_table(metrics, title))
        for line in uncertainty_lines(metrics):
            console.print(line, highlight=False)
    line = guard_line(result, bundle, root)
    if line:
        console.print(line, highlight=False)
    adaptation = result.get("adaptation")
    if adaptation is not None:
        console.print(adaptation_text(adaptation), highlight=False)
        if adaptation["warning"]:
            warn("warning", adaptation["warning"])
    if evaluation.deduplicated is None and evaluation.audit_note:
        warn("note", evaluation.audit_note)
    console.print(f"evaluation files: {evaluation.out_dir}")
    if evaluation.report_path is not None:
        console.print(f"report: {evaluation.report_path}")
