"""The ``braintumor audit`` command (registered in ``braintumor.cli``); heavy imports happen when it runs."""

from __future__ import annotations

from pathlib import Path

import typer


def audit_command(
    root: Path | None = typer.Argument(
        None, help="Data root holding Training/ and Testing/ (default: $BRAINTUMOR_DATA).", show_default=False
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Audit folder (default: audits/<data root name>, where evaluate looks for it)."
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Aligned detail NCC from which a pair is a near copy (default 0.86, docs/audit.md)."
    ),
    candidates: int | None = typer.Option(
        None, "--candidates", min=1, help="Most similar Training images checked per image (default 3)."
    ),
    near: bool = typer.Option(True, "--near/--exact-only", help="Search near copies, or only byte-identical ones."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write audit.html with example pairs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Duplicates, train/test leakage, label conflicts and unreadable files; writes audit.json, a clean
    test manifest and audit.html."""
    from braintumor.cli import _data_root, _fail
    from braintumor.data.audit import DEFAULT_CANDIDATES, DEFAULT_NEAR_THRESHOLD, run_audit
    from braintumor.data.audit_report import summary_table
    from braintumor.display import console
    from braintumor.errors import BrainTumorError

    data_root = root if root is not None else _data_root(None)
    try:
        result = run_audit(
            data_root,
            out,
            near_threshold=DEFAULT_NEAR_THRESHOLD if threshold is None else threshold,
            candidates=DEFAULT_CANDIDATES if candidates is None else candidates,
            near=near,
            write_report=report,
            show_progress=not quiet,
            console_log=console.print,
        )
    except BrainTumorError as error:
        _fail(str(error))
        return
    console.print(summary_table(result.audit))
    for warning in result.audit["size_by_class"]["warnings"]:
        console.print(f"[yellow]warning[/] {warning}", highlight=False)
    for item in result.audit["undecodable"]:
        console.print(f"[yellow]undecodable[/] {item['path']}: {item['reason']}", highlight=False)
    for name, path in sorted(result.outputs.items()):
        console.print(f"{name}: {path}", highlight=False)
    console.print(f"audit took {result.audit['timing']['total_s']:.1f} s")
