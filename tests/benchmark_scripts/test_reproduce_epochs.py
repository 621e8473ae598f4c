"""The reproduction check: a run's first epochs, re-trained in a child process, match its history digit for digit."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from tests.conftest import load_benchmark


def test_a_run_of_this_code_is_reproduced_and_a_changed_history_is_caught(trained_run, tmp_path: Path) -> None:
    reproduce = load_benchmark("reproduce_epochs")
    row = reproduce._compare(trained_run.run_dir, 2, tmp_path / "scratch")
    assert row["identical"], row["differences"]
    assert row["epochs_compared"] == 2
    # The child was stopped after its second epoch: no bundle, so it never trained on.
    assert not (tmp_path / "scratch" / trained_run.run_dir.name / "bundle").exists()

    # The same run with one recorded figure changed, as a run of other code would read.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(trained_run.run_dir / "run.json", other / "run.json")
    with (trained_run.run_dir / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    original = rows[1]["val_loss"]
    rows[1]["val_loss"] = "0.123"
    with (other / "history.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    changed = reproduce._compare(other, 2, tmp_path / "scratch-2")
    assert not changed["identical"]
    assert changed["differences"] == [f"epoch 2 val_loss: 0.123 then, {original} now"]
