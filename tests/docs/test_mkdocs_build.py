"""The documentation site builds with `mkdocs build --strict` (broken links, missing pages and API references fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.markdown_blocks import REPO

pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install 'braintumor[docs]')")
pytest.importorskip("mkdocstrings", reason="the docs extra is not installed (pip install 'braintumor[docs]')")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=570,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (site / "index.html").is_file()
    assert (site / "api" / "index.html").is_file()
