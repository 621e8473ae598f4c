"""``braintumor audit``: duplicates, leakage and label conflicts of a data root, printed and written to files."""

from __future__ import annotations

from pathlib import Path

import typer

from braintumor.auditing.constants import CACHE_DIR_NAME, CACHE_FILE, DEFAULT_CANDIDATES, DEFAULT_NEAR_THRESHOLD
from braintumor.cli.common import QuietOption, data_root, stage_errors, warn


def audit_command(
    root: Path | None = typer.Argument(
        None, help="Data root holding Training/ and Testing/ (default: $BRAINTUMOR_DATA).", show_default=False
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Audit folder (default: audits/<data root name>, where evaluate looks for it)."
    ),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        help=f"Aligned detail NCC from which a pair is a near copy (default {DEFAULT_NEAR_THRESHOLD}, docs/audit.md).",
    ),
    candidates: int | None = typer.Option(
        None,
        "--candidates",
        min=1,
        help=f"Most similar Training images checked per image (default {DEFAULT_CANDIDATES}).",
    ),
    near: bool = typer.Option(True, "--near/--exact-only", help="Search near copies, or only byte-identical ones."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write audit.html with example pairs."),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help=f"Folder of the audit cache ({CACHE_FILE}: what was computed per file and pair, so a re-run reads "
        f"only new or changed files; default <audit folder>/{CACHE_DIR_NAME}, docs/audit.md).",
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Read and check everything; write no cache."),
    quiet: bool = QuietOption,
) -> None:
    """Duplicates, train/test leakage, label conflicts and unreadable files; writes audit.json, a clean
    test manifest and audit.html."""
    import braintumor
    from braintumor.cli.display import audit_table, console

    with stage_errors():
        result = braintumor.audit(
            data_root(root),
            out,
            near=near,
            report=report,
            cache_dir=cache,
            use_cache=not no_cache,
            near_threshold=DEFAULT_NEAR_THRESHOLD if threshold is None else threshold,
            candidates=DEFAULT_CANDIDATES if candidates is None else candidates,
            show_progress=not quiet,
            say=console.print,
        )
    console.print(audit_table(result.raw))
    for warning in result.raw["size_by_class"]["warnings"]:
        warn("warning", warning)
    for item in result.raw["undecodable"]:
        warn("undecodable", f"{item['path']}: {item['reason']}")
    for name, path in sorted(result.outputs.items()):
        console.print(f"{name}: {path}", highlight=False)
    stats = result.raw.get("cache")
    if stats is not None:
        files = sum(s["files"] for s in result.raw["splits"].values())
        console.print(
            f"cache: reused {stats['files_reused'] + stats['files_rehashed']} of {files} files "
            f"({stats['files_rehashed']} after checking their bytes), {stats['pairs_reused']} of "
            f"{stats['pairs_reused'] + stats['pairs_checked']} pair checks ({stats['path']})",
            highlight=False,
        )
    console.print(f"audit took {result.raw['timing']['total_s']:.1f} s")
