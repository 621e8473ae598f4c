"""The CLI end to end on synthetic data: train, evaluate, predict, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from braintumor.cli import app
from tests.conftest import TINY_RECIPE

runner = CliRunner()


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RECIPE))
    return path


@pytest.fixture(scope="module")
def cli_run(recipe_file: Path, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(recipe_file),
            "--data",
            str(synthetic_root),
            "--out",
            str(run_dir),
            "--epochs",
            "4",
            "--evaluate",
            "--report",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "validation split" in result.output and "official Testing split" in result.output
    return run_dir


@pytest.mark.slow
def test_train_with_evaluate_writes_bundle_and_evaluation(cli_run: Path) -> None:
    assert (cli_run / "bundle" / "config.json").is_file()
    config = json.loads((cli_run / "bundle" / "config.json").read_text())
    assert config["recipe"]["train"]["max_epochs"] == 4  # --epochs overrides the recipe
    evaluation = cli_run / "eval-Testing"
    for name in (
        "metrics.json",
        "confusion_matrix.json",
        "confusion_matrix.png",
        "per_class.csv",
        "predictions.csv",
        "report.html",
    ):
        assert (evaluation / name).is_file(), name


def test_evaluate_command_writes_all_metrics(cli_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", str(cli_run / "bundle"), "--data", str(synthetic_root), "--out", str(tmp_path), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 32 and metrics["split"] == "Testing"
    assert {"accuracy", "loss", "macro_f1", "per_class", "confusion_matrix"} <= set(metrics)
    assert set(metrics["per_class"]["glioma"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 32
    with (tmp_path / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32
    assert {"path", "true_class", "predicted_class", "p_glioma", "p_pituitary"} <= set(rows[0])
    accuracy = sum(int(r["correct"]) for r in rows) / len(rows)
    assert accuracy == pytest.approx(metrics["accuracy"])


def test_predict_files_and_folders_to_json_and_csv(cli_run: Path, synthetic_root: Path, tmp_path: Path) -> None:
    folder = synthetic_root / "Testing" / "pituitary_tumor"
    single = synthetic_root / "Testing" / "glioma_tumor" / "glioma_000.jpg"
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    json_out, csv_out = tmp_path / "p.json", tmp_path / "p.csv"
    result = runner.invoke(
        app,
        [
            "predict",
            str(cli_run / "bundle"),
            str(single),
            str(folder),
            str(bad),
            "--json",
            str(json_out),
            "--csv",
            str(csv_out),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(json_out.read_text())
    assert len(payload["predictions"]) == 9
    assert payload["skipped"] == [{"path": str(bad), "reason": "not an image (unrecognised content)"}]
    first = payload["predictions"][0]
    assert first["source"] == str(single) and set(first["probabilities"]) == {
        "glioma",
        "meningioma",
        "no_tumor",
        "pituitary",
    }
    assert len(csv_out.read_text().strip().splitlines()) == 10
    # The terminal folds long paths at its width: read the output unfolded.
    assert "skipped" in result.output and "notes.jpg" in result.output.replace("\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "no-such-recipe", "--data", "."], "recipe no-such-recipe not found"),
        (["train", "seed-cnn", "--data", "/nonexistent/data"], "does not exist"),
        (["train", "seed-cnn", "--data", ".", "--set", "train.epochs=3"], "unknown field"),
        (["evaluate", "/nonexistent/bundle", "--data", "."], "does not exist or is not a folder"),
        (["predict", "/nonexistent/bundle", "x.jpg"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_not_tracebacks(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_data_option_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRAINTUMOR_DATA", raising=False)
    result = runner.invoke(app, ["train", "seed-cnn"])
    assert result.exit_code == 2 and "--data ROOT" in result.output


def test_recipes_lists_the_shipped_recipes() -> None:
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0
    assert all(name in result.output for name in ("seed-cnn", "seed-resnet50", "lite0-frozen"))
