"""Issue 18: a run killed at any point (SIGKILL, in a subprocess) resumes to the model the uninterrupted run gives.

Each case trains the same tiny recipe twice: once uninterrupted (in this process) and once in a subprocess that
SIGKILLs itself at a named point (``BRAINTUMOR_KILL_AT``, :func:`braintumor.training.determinism.kill_point`),
then resumed here. History rows (without their timings) and the bundle's weights must be bitwise equal (CPU fp32).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from braintumor.cli import app
from braintumor.config import Recipe
from braintumor.data.synthetic import make_synthetic_dataset
from braintumor.training.determinism import KILL_ENV
from braintumor.training.resume import ResumeMismatchError
from braintumor.workflows.train import RunOptions, TrainResult, resume_run, train_recipe
from tests.conftest import tiny_recipe

OPTIONS = {"show_progress": False, "tracker": "none", "export_onnx": False}
# Every test here trains and kills runs in subprocesses.
pytestmark = pytest.mark.slow

TINY_LITE = {"architecture": "transfer", "backbone": "tf_efficientnet_lite0", "pretrained": False}


def _recipe(kind: str) -> Recipe:
    """Tiny recipes for each kind of fit, with augmentation and dropout on (randomness to replay)."""
    augment = {"enabled": True, "rotation_degrees": 10}
    if kind == "plain":
        return tiny_recipe(data={"batch_size": 8}, augment=augment, train={"max_epochs": 4})
    stages: list[dict] = []
    if kind == "lpft":  # a cached-activation stage, an image stage, then WiSE-FT
        stages = [
            {"epochs": 2, "unfreeze": 1, "learning_rate": 1e-3, "cache_frozen_layers": True},
            {"epochs": 2, "unfreeze": 1, "learning_rate": 5e-4},
        ]
    return tiny_recipe(
        data={"batch_size": 8},
        model={**TINY_LITE, "head": "linear", "freeze_backbone": True},
        augment=augment,
        train={
            "max_epochs": 3,
            "cache_views": 2,
            "finetune_stages": stages,
            "wise_alphas": [0.5, 1.0] if stages else [],
        },
    )


def _options(**extra: object) -> RunOptions:
    return RunOptions(**{**OPTIONS, **extra})  # type: ignore[arg-type]


def _kill_command(recipe: Recipe, root: Path, run_dir: Path, *extra: str) -> list[str]:
    recipe_file = run_dir.with_suffix(".yaml")
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    command = [sys.executable, "-m", "braintumor.cli", "train", str(recipe_file), "--data", str(root)]
    return [*command, "--out", str(run_dir), "--tracker", "none", "-q", "--no-onnx", *extra]


def _start_killed_run(recipe: Recipe, root: Path, run_dir: Path, point: str) -> subprocess.Popen:
    """Train in a subprocess that SIGKILLs itself at ``point``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", KILL_ENV: point}
    return subprocess.Popen(
        _kill_command(recipe, root, run_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_killed(process: subprocess.Popen, point: str) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == -9, f"not killed at {point}: {process.returncode}\n{output}"


def _rows(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "epoch_seconds"} for row in history]


def _assert_same_run(resumed: TrainResult, reference: TrainResult) -> None:
    assert _rows(resumed.history) == _rows(reference.history)
    assert resumed.best_epoch == reference.best_epoch
    mine, theirs = (load_file(str(r.bundle_dir / "model.safetensors")) for r in (resumed, reference))
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key  # bitwise: fp32 on the CPU
    with (resumed.run_dir / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(reference.history)


CASES = [
    ("plain", "epoch:train:2"),  # between epochs: history.csv and last.ckpt hold 2 epochs
    ("plain", "batch:train:3:2"),  # in the middle of epoch 3
    ("plain", "bundle"),  # the bundle written, the run's other files not yet
    ("probe", "features:1"),  # while caching the augmented feature view
    ("lpft", "batch:finetune-1:2:1"),  # mid-epoch in the cached-activation stage
    ("lpft", "epoch:finetune-2:1"),  # between epochs of the image stage, before WiSE-FT
]


@pytest.fixture(scope="module")
def runs(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Every killed run (started together: the subprocesses' start-up dominates) and the uninterrupted runs."""
    killed_folder, reference_folder = tmp_path_factory.mktemp("killed"), tmp_path_factory.mktemp("uninterrupted")
    started = {
        point: _start_killed_run(_recipe(kind), synthetic_root, killed_folder / point.replace(":", "-"), point)
        for kind, point in CASES
    }
    references = {
        kind: train_recipe(_recipe(kind), synthetic_root, reference_folder / kind, options=_options())
        for kind in ("plain", "probe", "lpft")
    }
    for point, process in started.items():
        _wait_killed(process, point)
    return {"references": references, "killed": {point: killed_folder / point.replace(":", "-") for point in started}}


def _killed_copy(runs: dict, point: str, tmp_path: Path) -> Path:
    """A fresh copy of the run killed at ``point`` (each test resumes its own)."""
    return Path(shutil.copytree(runs["killed"][point], tmp_path / "run"))


@pytest.mark.parametrize(("kind", "point"), CASES)
def test_a_killed_run_resumes_to_the_uninterrupted_model(kind: str, point: str, runs: dict, tmp_path: Path) -> None:
    run_dir = _killed_copy(runs, point, tmp_path)
    resumed = resume_run(run_dir, options=_options())
    assert resumed is not None
    reference = runs["references"][kind]
    _assert_same_run(resumed, reference)
    if kind == "lpft":
        config = json.loads((resumed.bundle_dir / "config.json").read_text())["training"]
        expected = json.loads((reference.bundle_dir / "config.json").read_text())["training"]
        assert config["finetuning"]["wise_ft"] == expected["finetuning"]["wise_ft"]


def test_history_never_runs_ahead_of_the_checkpoint(runs: dict, tmp_path: Path) -> None:
    run_dir = _killed_copy(runs, "epoch:train:2", tmp_path)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    history_state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("EpochHistory"))
    with (run_dir / "history.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in written] == [row["epoch"] for row in history_state["rows"]] == [1, 2]
    # A CSV that ran ahead (an older version, a crash between writes) is cut back to the checkpoint's rows.
    (run_dir / "history.csv").write_text((run_dir / "history.csv").read_text() + "train,3,9,9,9,9,9,9\n")
    resumed = resume_run(run_dir, options=_options())
    assert resumed is not None and [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]


def test_a_half_written_checkpoint_is_never_used(runs: dict, tmp_path: Path) -> None:
    run_dir = _killed_copy(runs, "epoch:train:2", tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as a save in place killed halfway leaves it
    messages: list[str] = []
    resumed = resume_run(run_dir, options=_options(), console_log=messages.append)
    assert any("unreadable" in message for message in messages)
    assert resumed is not None
    _assert_same_run(resumed, runs["references"]["plain"])  # started over, to the same model


def test_a_folder_from_another_recipe_data_set_or_code_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path / "data", per_class=6, test_per_class=1, size=32)
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(train={"max_epochs": 1})
    train_recipe(recipe, root, run_dir, options=_options())
    other = tiny_recipe(train={"max_epochs": 1, "learning_rate": 0.01})
    with pytest.raises(ResumeMismatchError, match="another recipe"):
        train_recipe(other, root, run_dir, options=_options(), resume=True)
    record = json.loads((run_dir / "run.json").read_text())
    record["resume_key"]["code_sha256"] = "0" * 64
    (run_dir / "run.json").write_text(json.dumps(record))
    with pytest.raises(ResumeMismatchError, match="another code version"):
        resume_run(run_dir, options=_options())
    extra = root / "Training" / "glioma_tumor" / "extra.jpg"
    extra.write_bytes(next((root / "Testing" / "glioma_tumor").iterdir()).read_bytes())
    with pytest.raises(ResumeMismatchError, match=r"another data set.*--force"):
        resume_run(run_dir, options=_options())
    forced = resume_run(run_dir, options=_options(), force=True)
    assert forced is not None
    warnings = json.loads((run_dir / "run_manifest.json").read_text())["resume_warnings"]
    assert any("another data set" in w for w in warnings) and any("another code version" in w for w in warnings)


def test_cli_refuses_a_changed_folder_and_resumes_it_with_force(synthetic_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    train_recipe(tiny_recipe(train={"max_epochs": 1}), synthetic_root, run_dir, options=_options())
    record = json.loads((run_dir / "run.json").read_text())
    record["resume_key"]["code_sha256"] = "0" * 64
    (run_dir / "run.json").write_text(json.dumps(record))
    command = ["train", "--resume", str(run_dir), "-q", "--tracker", "none", "--no-onnx"]
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2 and "refusing to resume" in refused.output and "--force" in refused.output
    assert refused.exception is None or isinstance(refused.exception, SystemExit)  # one line, no traceback
    forced = CliRunner().invoke(app, [*command, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "another code version" in json.loads((run_dir / "run_manifest.json").read_text())["resume_warnings"][0]


@pytest.mark.slow
@pytest.mark.xdist_group("two-process-ddp")  # one at a time: each runs two processes on the two cores
def test_ddp_with_two_cpu_processes_resumes_exactly(synthetic_root: Path, tmp_path: Path) -> None:
    """Strategy ddp (gloo), 2 processes: killed after epoch 2 (rank 0 kills itself, rank 1 dies with it)."""
    recipe = _recipe("plain")
    ddp = ("--accelerator", "cpu", "--devices", "2", "--strategy", "ddp")
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    recipe_file = reference_dir.with_suffix(".yaml")
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "braintumor.cli", "train", str(recipe_file), "--data", str(synthetic_root)]
    command += ["--tracker", "none", "-q", "--no-onnx", *ddp]
    done = subprocess.run([*command, "--out", str(reference_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    killed = subprocess.run(
        [*command, "--out", str(run_dir)], env={**env, KILL_ENV: "epoch:train:2"}, capture_output=True, timeout=600
    )
    assert killed.returncode != 0
    resumed = subprocess.run(
        [sys.executable, "-m", "braintumor.cli", "train", "--resume", str(run_dir), "-q", *ddp],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    mine, theirs = (
        json.loads((d / "bundle" / "config.json").read_text())["training"] for d in (run_dir, reference_dir)
    )
    assert mine["resumed"] is True and mine["devices"]["world_size"] == 2
    assert _rows(mine["history"]) == _rows(theirs["history"])
    weights = [load_file(str(d / "bundle" / "model.safetensors")) for d in (run_dir, reference_dir)]
    assert all(torch.equal(weights[0][key], value) for key, value in weights[1].items())
