"""A normal (non-editable) install ships everything the package reads at run time: recipes, the web page.

The wheel is built from this checkout and installed into a temporary folder that comes first on the
path, and the commands run from a folder that has no ``configs/`` beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from braintumor.config import builtin_recipes

REPO_ROOT = Path(__file__).resolve().parents[2]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of this checkout."""
    wheels = tmp_path_factory.mktemp("wheels")
    build = [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(REPO_ROOT)]
    subprocess.run(build, check=True, capture_output=True, timeout=300, cwd=wheels)
    (wheel,) = wheels.glob("braintumor-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed_wheel(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the wheel was installed into (``pip install --target``, no dependencies)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(target), str(built_wheel)], check=True, timeout=300)
    return target


def _run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def test_the_wheel_holds_every_recipe_and_the_web_page(built_wheel: Path, installed_wheel: Path) -> None:
    shipped = {path.stem for path in (installed_wheel / "braintumor" / "configs").glob("*.yaml")}
    assert shipped == set(builtin_recipes())
    assert (installed_wheel / "braintumor" / "serving" / "static" / "index.html").is_file()
    # Data and weights are read by path, never shipped.
    assert not [n for n in zipfile.ZipFile(built_wheel).namelist() if n.endswith((".safetensors", ".jpg", ".onnx"))]


def test_the_installed_package_loads_every_recipe_from_any_folder(installed_wheel: Path, tmp_path: Path) -> None:
    script = (
        "import braintumor, braintumor.config as c; print(braintumor.__file__); "
        "print(sorted(r.name for r in map(c.load_recipe, c.builtin_recipes())))"
    )
    result = _run_installed(installed_wheel, tmp_path, "-c", script)
    assert result.returncode == 0, result.stderr
    location, names = result.stdout.splitlines()
    assert Path(location).is_relative_to(installed_wheel)  # the installed copy, not this checkout
    assert names == str(sorted(builtin_recipes()))


def test_the_installed_cli_lists_recipes_and_explains_train(installed_wheel: Path, tmp_path: Path) -> None:
    listed = _run_installed(installed_wheel, tmp_path, "-m", "braintumor.cli", "recipes")
    assert listed.returncode == 0, listed.stderr
    for name in builtin_recipes():
        assert f"{name}:" in listed.stdout
    helped = _run_installed(installed_wheel, tmp_path, "-m", "braintumor.cli", "train", "seed-cnn", "--help")
    assert helped.returncode == 0 and "--evaluate" in helped.stdout, helped.stderr
