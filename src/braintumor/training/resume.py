"""Whether a run folder may be resumed: the same recipe, the same data and the same code, or ``--force``.

A run records what decides its result in ``run.json`` (:func:`resume_key`). Resuming it with another recipe,
another data set (the manifest hash over the files used differs) or another code version would mix two runs
into one model, so :func:`check_resumable` refuses with the differences, or with ``force`` lets it through and
returns warnings that go into ``run.json`` and the run's manifest.

Example:
    >>> key = {"recipe_sha256": "a", "data_manifest_sha256": "b", "code_sha256": "c"}
    >>> check_resumable({"resume_key": key}, key, force=False)
    []
    >>> check_resumable({"resume_key": key}, {**key, "code_sha256": "d"}, force=True)
    ['another code version: the training sources differ from the ones the run started with (c -> d)']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from braintumor.config import Recipe
from braintumor.errors import BrainTumorError
from braintumor.training.manifest import code_digest, data_record

WHAT = {
    "recipe_sha256": "another recipe: the recipe differs from the one in run.json",
    "data_manifest_sha256": "another data set: the manifest hash over the training files differs",
    "code_sha256": "another code version: the training sources differ from the ones the run started with",
}


class ResumeMismatchError(BrainTumorError):
    """A run folder that was started with another recipe, data set or code version than the resume has."""


def recipe_digest(recipe: Recipe) -> str:
    """SHA-256 of the recipe as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(recipe.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def resume_key(recipe: Recipe, data_root: Path, paths: list[Path], hashes: list[str]) -> dict[str, str]:
    """What a resumed run must share with the run it continues."""
    return {
        "recipe_sha256": recipe_digest(recipe),
        "data_manifest_sha256": data_record(data_root, paths, hashes)["manifest_sha256"],
        "code_sha256": code_digest(),
    }


def check_resumable(previous: dict[str, Any], key: dict[str, str], *, force: bool) -> list[str]:
    """The differences between ``previous`` (the run's ``run.json``) and ``key``: raised, or returned with ``force``."""
    recorded = previous.get("resume_key")
    if not isinstance(recorded, dict):
        problems = ["the run folder has no resume record (started by an older braintumor): it cannot be checked"]
    else:
        problems = [
            f"{WHAT[name]} ({str(recorded.get(name))[:12]} -> {value[:12]})"
            for name, value in key.items()
            if recorded.get(name) != value
        ]
    if problems and not force:
        raise ResumeMismatchError(
            "refusing to resume: " + "; ".join(problems) + ". Start a new run folder, or resume anyway with "
            "--force (the mismatch is recorded in the run's manifest)"
        )
    return problems
