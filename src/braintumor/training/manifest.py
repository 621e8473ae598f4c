"""Run manifests: what a result depends on, stored in every bundle so a number can be traced back.

Example:
    >>> data_manifest_hash([("a.jpg", "00ff"), ("b.jpg", "11ee")]) == data_manifest_hash(
    ...     [("b.jpg", "11ee"), ("a.jpg", "00ff")])
    True
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from braintumor.bundle import library_versions
from braintumor.config import Recipe


def data_manifest_hash(entries: Iterable[tuple[str, str]]) -> str:
    """SHA-256 over sorted ``(relative path, content hash)`` pairs: changes when any file is added,
    removed, renamed or edited, and not when the folder is moved."""
    digest = hashlib.sha256()
    for relative, content in sorted(entries):
        digest.update(f"{relative}\t{content}\n".encode())
    return digest.hexdigest()


def git_state(folder: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding the code (``None`` when not in git)."""
    where = folder or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=where,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:  # a symlink out of the data root: keep the path as given
        return str(path)


def data_record(data_root: Path, paths: list[Path], hashes: list[str]) -> dict[str, Any]:
    """The data set a run used: its root, file count and :func:`data_manifest_hash` over the files."""
    root = data_root.resolve()
    entries = [(_relative(Path(p), root), h) for p, h in zip(paths, hashes, strict=True)]
    return {"root": str(root), "files": len(entries), "manifest_sha256": data_manifest_hash(entries)}


# The sources that decide a trained model (the recipe, data, network, training loop and CPU runtime); bundles,
# guard, evaluation and serving code can change without changing the weights a resumed run would produce.
TRAINING_CODE = ("config.py", "runtime.py", "classes.py", "data", "models", "training", "workflows/train.py")


def code_digest() -> str:
    """SHA-256 over the Python sources in :data:`TRAINING_CODE`: a code version that needs no git checkout."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for part in TRAINING_CODE:
        sources = [package / part] if part.endswith(".py") else sorted((package / part).rglob("*.py"))
        for source in sources:
            digest.update(f"{source.relative_to(package).as_posix()}\n".encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def build_manifest(
    recipe: Recipe, data_root: Path, paths: list[Path], hashes: list[str], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Git state, data-set manifest hash (files actually used), recipe, seed, versions, machine."""
    return {
        "git": git_state(),
        "data": data_record(data_root, paths, hashes),
        "recipe": recipe.model_dump(mode="json"),
        "seed": recipe.train.seed,
        "versions": library_versions(),
        "machine": machine_info(),
        **(extra or {}),
    }
