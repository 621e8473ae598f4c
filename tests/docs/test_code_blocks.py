"""Every ```python block of README.md and docs/*.md runs, page by page, like a notebook.

Blocks of one page run in order in one namespace, in a fresh temporary working folder, with MLflow pointed
into it. A block is left out only when the line just before it is ``<!-- not run: REASON -->`` (a blocking
``model.serve()``, a path to the real data set); the reasons are listed, and a skip without one fails.

A page whose examples continue from the quickstart says so with ``<!-- requires: demo-data -->`` (the
synthetic ``demo/`` folder) or ``<!-- requires: demo-bundle -->`` (``demo/`` and the demo model in
``runs/demo/bundle``); the test puts copies of them into the page's working folder, made once per session
with the public API (``braintumor.demo_data`` and ``braintumor.train("demo-cnn", ...)``).
"""

from __future__ import annotations

import os
import re
import shutil
import traceback
from pathlib import Path

import pytest

from tests.docs.markdown_blocks import CodeBlock, pages, python_blocks, relative, requirements

TRAINS = re.compile(r"\bbraintumor\.train\(")
KNOWN_REQUIREMENTS = {"demo-data", "demo-bundle"}


def _runnable(blocks: list[CodeBlock]) -> list[CodeBlock]:
    return [block for block in blocks if not block.skipped]


def _is_slow(path: Path) -> bool:
    trains = any(TRAINS.search(block.code) for block in _runnable(python_blocks(path)))
    return trains or "demo-bundle" in requirements(path)


def _page_params() -> list:
    params = []
    for path in pages():
        if not python_blocks(path):
            continue
        # Every page runs in a workspace with the demo data and model, trained once: the slow lane.
        marks = [pytest.mark.slow, pytest.mark.timeout(900 if _is_slow(path) else 300)]
        params.append(pytest.param(path, id=relative(path), marks=marks))
    return params


@pytest.fixture(scope="session")
def demo_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding demo/ (synthetic data) and runs/demo/bundle (the demo-cnn model), made once."""
    import braintumor

    root = tmp_path_factory.mktemp("docs-demo")
    previous = Path.cwd()
    os.chdir(root)
    try:
        braintumor.demo_data("demo")
        braintumor.train("demo-cnn", data="demo", out="runs/demo", show_progress=False)
    finally:
        os.chdir(previous)
    return root


def _prepare(path: Path, workdir: Path, request: pytest.FixtureRequest) -> None:
    needs = requirements(path)
    unknown = needs - KNOWN_REQUIREMENTS
    assert not unknown, f"{relative(path)}: unknown <!-- requires: --> value(s) {sorted(unknown)}"
    if not needs:
        return
    workspace: Path = request.getfixturevalue("demo_workspace")
    shutil.copytree(workspace / "demo", workdir / "demo")
    if "demo-bundle" in needs:
        shutil.copytree(workspace / "runs" / "demo", workdir / "runs" / "demo")


@pytest.mark.parametrize("page", _page_params())
def test_python_blocks_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    blocks = python_blocks(page)
    for block in blocks:
        if block.skipped:
            print(f"not run: {block.where}: {block.skip_reason or '(no reason given)'}")
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("BRAINTUMOR_DATA", raising=False)
    _prepare(page, workdir, request)
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": "__main__"}
    for block in _runnable(blocks):
        try:
            exec(compile(block.code, f"{block.where} (python block)", "exec"), namespace)
        except Exception as error:
            pytest.fail(
                f"the python block at {block.where} failed: {type(error).__name__}: {error}\n"
                + "".join(traceback.format_exception(error)[-6:]),
                pytrace=False,
            )


def test_every_skipped_block_gives_its_reason() -> None:
    skipped = [block for path in pages() for block in python_blocks(path) if block.skipped]
    for block in skipped:
        print(f"not run: {block.where}: {block.skip_reason or '(no reason given)'}")
    without = [block.where for block in skipped if not block.skip_reason]
    assert not without, "python blocks skipped without a reason (write <!-- not run: REASON -->): " + ", ".join(without)


def test_python_blocks_compile() -> None:
    """A cheap check for every block, skipped ones included: it is valid Python."""
    errors = []
    for path in pages():
        for block in python_blocks(path):
            try:
                compile(block.code, block.where, "exec")
            except SyntaxError as error:
                errors.append(f"{block.where}: {error}")
    assert not errors, "python blocks that do not compile:\n" + "\n".join(errors)
