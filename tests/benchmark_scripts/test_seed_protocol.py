"""The seed-protocol benchmark: Testing is its validation data (the leak it demonstrates), and only there."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_benchmark

SMALL = ["data.image_size=32", "model.conv_channels=[8, 16]", "model.head_hidden=16", "train.max_epochs=2"]


def test_the_leaky_run_trains_on_all_of_training_and_chooses_its_epoch_on_testing(
    synthetic_root: Path, tmp_path: Path
) -> None:
    protocol = load_benchmark("seed_protocol")
    row = protocol.leaky_run(synthetic_root, tmp_path, SMALL)
    assert row["n_train"] == 64  # every Training image: no validation split is taken from it
    assert row["epochs_run"] == 2 and row["best_epoch"] in (1, 2)
    assert row["protocol"].startswith("leaky") and 0.0 <= row["test_accuracy"] <= 1.0
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 3  # the validation loss it chose on was Testing's, one row per epoch
    # The checkpoint-on-accuracy variant reads the same per-epoch Testing figures.
    per_epoch = row["testing_per_epoch"]
    assert [entry["epoch"] for entry in per_epoch] == [1, 2]
    assert row["best_epoch_accuracy"] == max(entry["accuracy"] for entry in per_epoch)
    assert per_epoch[row["best_accuracy_epoch"] - 1]["accuracy"] == row["best_epoch_accuracy"]
