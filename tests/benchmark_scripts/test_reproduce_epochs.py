"""The reproduction check: a run's first epochs, re-trained in a child process, match its history digit for digit."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_benchmark


def test_a_run_of_this_code_is_reproduced_and_a_changed_history_is_caught(trained_run, tmp_path: Path) -> None:
    reproduce = load_benchmark("reproduce_epochs")
    row = reproduce._compare(trained_run.run_dir, 2, tmp_path)
    assert row["identical"], row["differences"]
    assert row["epochs_compared"] == 2
    # The child was stopped after its second epoch: no bundle, so it never trained on.
    assert not (tmp_path / trained_run.run_dir.name / "bundle").exists()

    # The same history with one figure changed, as a run of other code would have written it.
    recorded = reproduce._read_history(trained_run.run_dir)[:2]
    retrained = reproduce._read_history(tmp_path / trained_run.run_dir.name)[:2]
    changed = [dict(row) for row in recorded]
    changed[1]["val_loss"] = "0.123"
    assert reproduce.differences(changed, retrained, 2) == [
        f"epoch 2 val_loss: 0.123 then, {recorded[1]['val_loss']} now"
    ]
    assert reproduce.differences(recorded, retrained[:1], 2)[0].startswith("the re-training wrote 1 of 2 epochs")
