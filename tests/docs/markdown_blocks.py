"""Read the fenced code blocks of the project's Markdown pages (README.md and docs/*.md)."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^`\s]*)[^`]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
NOT_RUN_LOOSE = re.compile(r"<!--\s*not run\b", re.IGNORECASE)
REQUIRES = re.compile(r"^\s*<!--\s*requires:\s*(?P<what>[\w, -]+?)\s*-->\s*$", re.MULTILINE)


@dataclass(frozen=True)
class CodeBlock:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip_reason: str | None  # the text of a `<!-- not run: REASON -->` comment on the line before the fence
    skipped: bool

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/, in a fixed order."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced block of a page, with its language and the skip comment just before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        fence, start = match["fence"], index
        end = start + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        previous = lines[start - 1] if start > 0 else ""
        skip = NOT_RUN.match(previous)
        skipped = bool(skip) or bool(NOT_RUN_LOOSE.search(previous))
        reason = skip["reason"].strip() if skip else None
        code = textwrap.dedent("\n".join(lines[start + 1 : end]))
        blocks.append(CodeBlock(relative(path), start + 1, match["info"].lower(), code, reason or None, skipped))
        index = end + 1
    return blocks


def python_blocks(path: Path) -> list[CodeBlock]:
    return [block for block in code_blocks(path) if block.language in {"python", "py", "python3"}]


def requirements(path: Path) -> set[str]:
    """What a page's examples expect in their working folder: `<!-- requires: demo-data -->` or `demo-bundle`."""
    found: set[str] = set()
    for match in REQUIRES.finditer(path.read_text(encoding="utf-8")):
        found.update(part.strip() for part in match["what"].split(",") if part.strip())
    return found
