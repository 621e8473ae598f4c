"""The accuracy benchmark script runs end to end on synthetic data: train, calibrate, evaluate, ensemble, table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_RECIPE

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_accuracy_benchmark_writes_the_table(synthetic_root: Path, tmp_path: Path) -> None:
    recipes = []
    for seed in (1, 2):
        recipe = {
            **TINY_RECIPE,
            "name": f"tiny-{seed}",
            "train": {**TINY_RECIPE["train"], "max_epochs": 2, "seed": seed},
        }
        path = tmp_path / f"tiny-{seed}.yaml"
        path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
        recipes.append(str(path))
    out = tmp_path / "accuracy.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--data", str(synthetic_root),
        "--recipes", *recipes, "--ensemble", "pair=tiny-1+tiny-2", "--runs-dir", str(tmp_path / "runs"),
        "--out", str(out), "--threads", "1",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [row["recipe"] for row in rows] == ["tiny-1", "tiny-2", "pair"]
    for row in rows:
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["test_accuracy_ci"]["low"] <= row["test_accuracy"]
        assert row["temperature"] > 0 and "dedup_accuracy" in row
    assert rows[2]["training_s"] == pytest.approx(rows[0]["training_s"] + rows[1]["training_s"])
    table = out.read_text()
    assert "| pair |" in table and "Produced by `python benchmarks/accuracy.py" in table
    assert f"--out {out}`" in table  # the command in the table reproduces this file, not the default one
