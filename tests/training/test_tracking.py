"""Issue 7: MLflow and ClearML tracking, run manifests, resume after kill -9, atomic bundles, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from braintumor.bundle import load_bundle, save_bundle
from braintumor.errors import BundleError
from braintumor.workflows.train import RunOptions, train_recipe
from tests.conftest import TINY_RECIPE, tiny_recipe

CLI = [sys.executable, "-m", "braintumor.cli"]


def _cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_mlflow_run_has_params_metrics_and_artifacts(synthetic_root: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = RunOptions(show_progress=False, tracker="mlflow", tracking_uri=uri)
    result = train_recipe(tiny_recipe(train={"max_epochs": 3}), synthetic_root, tmp_path / "run", options=options)
    run = MlflowClient(tracking_uri=uri).get_run(result.tracking["run_id"])
    assert run.data.params["model.architecture"] == "custom_cnn" and run.data.params["train.max_epochs"] == "3"
    assert {"train_loss", "val_loss", "val_acc", "best_val_accuracy"} <= set(run.data.metrics)
    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == len(result.history)
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert {"bundle", "training_curves.png", "history.csv", "run_manifest.json"} <= artifacts

    from braintumor.training.tracking import list_runs

    rows = list_runs(uri)
    assert rows[0]["run_id"] == run.info.run_id and rows[0]["best_val_accuracy"] == pytest.approx(
        result.val_metrics["accuracy"]
    )


def test_clearml_runs_offline_without_a_server(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("clearml")
    monkeypatch.setenv("HOME", str(tmp_path))  # no clearml.conf: offline mode
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "clearml-cache"))
    for key in ("CLEARML_API_HOST", "CLEARML_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    options = RunOptions(show_progress=False, tracker="clearml")
    result = train_recipe(tiny_recipe(train={"max_epochs": 2}), synthetic_root, tmp_path / "run", options=options)
    folder = result.tracking["offline_folder"]
    assert folder and Path(folder).exists()
    result.logger.task.close()


def test_every_bundle_carries_a_run_manifest(trained_run, synthetic_root: Path) -> None:
    manifest = json.loads((trained_run.bundle_dir / "config.json").read_text())["manifest"]
    assert manifest["seed"] == 42 and manifest["recipe"]["name"] == "tiny-cnn"
    assert manifest["data"]["files"] == 64 and len(manifest["data"]["manifest_sha256"]) == 64
    assert {"torch", "lightning", "python"} <= set(manifest["versions"])
    assert {"cpu_count", "platform"} <= set(manifest["machine"])
    assert "commit" in manifest["git"]


def test_a_crash_while_saving_never_leaves_a_bundle_that_loads(
    trained_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    target = tmp_path / "bundle"
    save_bundle(target, bundle.model, bundle.recipe, bundle.preprocessing)
    before = (target / "model.safetensors").read_bytes()

    import braintumor.bundle.store as bundle_module

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing the JSON

    monkeypatch.setattr(bundle_module, "write_json_atomic", explode)
    with pytest.raises(KeyboardInterrupt):
        save_bundle(target, bundle.model, bundle.recipe, bundle.preprocessing)
    assert (target / "model.safetensors").read_bytes() == before  # the old bundle is intact
    load_bundle(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no staging left behind
    with pytest.raises(KeyboardInterrupt):
        save_bundle(tmp_path / "new", bundle.model, bundle.recipe, bundle.preprocessing)
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "new")


@pytest.mark.slow
def test_resume_after_kill_9_in_the_middle_of_training(synthetic_root: Path, tmp_path: Path) -> None:
    recipe = {
        **TINY_RECIPE,
        "name": "tiny-resume",
        "data": {**TINY_RECIPE["data"], "batch_size": 4},
        "augment": {"enabled": True},
        "train": {**TINY_RECIPE["train"], "max_epochs": 10, "early_stopping_patience": 10},
    }
    recipe_file = tmp_path / "resume.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [
            *CLI,
            "train",
            str(recipe_file),
            "--data",
            str(synthetic_root),
            "--out",
            str(run_dir),
            "--tracker",
            "none",
            "-q",
        ],
        env=_cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    history = run_dir / "history.csv"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be killed"
    time.sleep(0.3)  # into the next epoch
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "bundle").exists()
    epochs_before = len(history.read_text().splitlines()) - 1

    resumed = subprocess.run(
        [*CLI, "train", "--resume", str(run_dir), "-q"], env=_cli_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    config = json.loads((run_dir / "bundle" / "config.json").read_text())
    training = config["training"]
    assert training["resumed"] is True
    epochs = [row["epoch"] for row in training["history"]]
    assert epochs == list(range(1, 11)) and epochs_before >= 2
    losses = [row["val_loss"] for row in training["history"]]
    assert training["best_epoch"] == losses.index(min(losses)) + 1  # selection spans the epochs before the kill
    load_bundle(run_dir / "bundle")


@pytest.mark.slow
@pytest.mark.xdist_group("two-process-ddp")  # one at a time: each runs two processes on the two cores
def test_ddp_with_two_cpu_processes_matches_a_single_process(synthetic_root: Path, tmp_path: Path) -> None:
    recipe_file = tmp_path / "ddp.yaml"
    recipe_file.write_text(yaml.safe_dump({**TINY_RECIPE, "name": "tiny-ddp"}))
    # 2 processes x batch 8 = the single process's batch of 16: the same number of optimiser steps.
    ddp = subprocess.run(
        [
            *CLI,
            "train",
            str(recipe_file),
            "--data",
            str(synthetic_root),
            "--out",
            str(tmp_path / "ddp"),
            "--tracker",
            "none",
            "-q",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--set",
            "data.batch_size=8",
        ],
        env=_cli_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    config = json.loads((tmp_path / "ddp" / "bundle" / "config.json").read_text())
    assert config["training"]["devices"]["world_size"] == 2
    bundle = load_bundle(tmp_path / "ddp" / "bundle")
    single = train_recipe(tiny_recipe(), synthetic_root, tmp_path / "single", show_progress=False)
    ddp_accuracy = config["training"]["val_metrics"]["accuracy"]
    assert bundle.class_names == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert ddp_accuracy >= 0.75 and single.val_metrics["accuracy"] >= 0.75
    assert abs(ddp_accuracy - single.val_metrics["accuracy"]) <= 0.25
