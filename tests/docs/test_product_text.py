"""Product text (README, docs, source) speaks to users: no scratch paths, issue numbers or session wording."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs.markdown_blocks import REPO

FORBIDDEN = re.compile(r"/tmp/|[Ii]ssue [0-9]|[Tt]his session")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and not any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in path.relative_to(REPO).parts)
    )


def _hits(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []  # binary files (images, compiled files) hold no product text
    rel = path.relative_to(REPO).as_posix()
    lines = enumerate(text.splitlines(), 1)
    return [f"{rel}:{number}: {line.strip()[:160]}" for number, line in lines if FORBIDDEN.search(line)]


def _check(*roots: str) -> None:
    hits = [hit for root in roots for path in _files(REPO / root) for hit in _hits(path)]
    assert not hits, f"{len(hits)} line(s) with /tmp/ paths, issue numbers or session wording:\n" + "\n".join(hits)


def test_readme_has_no_scratch_paths_issue_numbers_or_session_wording() -> None:
    _check("README.md")


def test_docs_have_no_scratch_paths_issue_numbers_or_session_wording() -> None:
    _check("docs")


def test_source_has_no_scratch_paths_issue_numbers_or_session_wording() -> None:
    _check("src")
