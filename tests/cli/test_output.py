"""What the CLI prints at 80 columns: one line per image, untruncated runs, quiet clean runs, stdout for `-`."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from braintumor import __version__
from braintumor.cli import app, display
from braintumor.cli.common import third_party_output
from braintumor.cli.evaluate import guard_line
from braintumor.config import RecipeError, apply_overrides, load_recipe
from tests.conftest import tiny_recipe

NARROW = {"COLUMNS": "80"}
runner = CliRunner()


@pytest.fixture(autouse=True)
def _consoles_follow_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI's consoles read $COLUMNS when printing unless a width was fixed when they were made.
    for console in (display.console, display.err_console):
        monkeypatch.setattr(console, "_width", None)


@pytest.fixture(scope="module")
def predicted(trained_run, synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The tiny bundle's predictions for every Testing image, with the guard's verdicts."""
    out = tmp_path_factory.mktemp("predict") / "all.json"
    result = runner.invoke(
        app, ["predict", str(trained_run.bundle_dir), str(synthetic_root / "Testing"), "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["predictions"]


def _render(renderable: object, width: int = 80) -> str:
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


def test_predict_prints_one_line_per_image_with_the_class_uncut(trained_run, predicted: list[dict]) -> None:
    clean = [p for p in predicted if not p["out_of_distribution"]][:2]
    assert len(clean) == 2
    result = runner.invoke(app, ["predict", str(trained_run.bundle_dir), *(p["source"] for p in clean)], env=NARROW)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in result.output
    for prediction in clean:
        name = Path(prediction["source"]).name
        rows = [line for line in lines if name in line]
        assert len(rows) == 1, result.stdout
        assert prediction["source"] not in rows[0] and f" {prediction['class_name']} " in rows[0]
    # Nothing was flagged: no guard summary.
    assert "input guard" not in result.output


def test_flagged_images_get_the_guard_summary_and_short_advice(trained_run, tmp_path: Path) -> None:
    noise = tmp_path / "colour-noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(noise)
    result = runner.invoke(app, ["predict", str(trained_run.bundle_dir), str(noise)], env=NARROW)
    assert result.exit_code == 0, result.output
    assert "input guard: 1 of 1 images flagged" in result.output
    row = next(line for line in result.stdout.splitlines() if noise.name in line)
    assert "none" in row and "no diagnosis" in row and len(row) <= 80


def test_predictions_table_drops_columns_before_cutting_class_names() -> None:
    from braintumor.results import Prediction

    names = ["glioma", "meningioma", "no_tumor", "pituitary"]
    probabilities = dict(zip(names, [0.1, 0.7, 0.1, 0.1], strict=True))
    rows = [
        Prediction(
            "/data/Testing/meningioma_tumor/Te-me_0010.jpg", "meningioma", 0.7, probabilities, False, None, 0.3, True
        ),
        Prediction("/data/other/Te-gl_0001.jpg", None, 0.7, probabilities, True, "not a brain MRI", 4.2, False),
    ]
    narrow = _render(display.predictions_table(rows, names))
    assert "meningioma" in narrow and "no diagnosis" in narrow and "…" not in narrow
    assert max(map(len, narrow.splitlines())) <= 80 and "every class's: --json or --csv" in narrow
    wide = _render(display.predictions_table(rows, names), width=200)
    assert "refer to a radiologist" in wide and "none (flagged)" in wide and "--json" not in wide


def test_runs_table_shows_date_recipe_status_and_accuracy_untruncated() -> None:
    row = {
        "run_id": "abc",
        "name": "lite2-probe-shiftaug-lite2-probe-shiftaug",
        "status": "FINISHED",
        "started": 1_767_225_600_000,  # 2026-01-01 00:00 UTC
        "recipe": "lite2-probe-shiftaug",
        "best_val_accuracy": 0.9512,
        "best_val_loss": 0.1234,
        "test_accuracy": 0.8987,
        "test_macro_f1": 0.8812,
        "epochs": 3,
        "model_uri": "models:/m-283a6f9e2afe41b88e9ad51231a26568",
    }
    text = _render(display.runs_table([row]))
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text
    for cell in ("2026-01-01 00:00", "lite2-probe-shiftaug", "FINISHED", "95.12%", "89.87%"):
        assert cell in text, text
    # Too narrow for the URI's column: the URI follows the table, on the line of the run's start.
    assert "not shown at this width" in text and "model URI " not in text
    assert "  2026-01-01 00:00  models:/m-283a6f9e2afe41b88e9ad51231a26568" in text.splitlines()
    wide = _render(display.runs_table([row]), width=220)
    assert "lite2-probe-shiftaug-lite2-probe-shiftaug" in wide and "not shown" not in wide


def test_audit_table_fits_80_columns() -> None:
    by_class = {"exact_copy": 1, "near_copy": 2, "clean": 100, "undecodable": 0}
    audit = {
        "data_root": "/data/brain-tumor-mri",
        "splits": {
            "Training": {"files": 5712, "undecodable": 0, "redundant_exact_copies": 297},
            "Testing": {"files": 1311, "undecodable": 0, "redundant_exact_copies": 12},
        },
        "leakage": {
            "Testing": {
                "near_search": True,
                "exact_copy": 4,
                "near_copy": 8,
                "clean": 1299,
                "by_class": {name: by_class for name in ("glioma", "meningioma", "no_tumor", "pituitary")},
            }
        },
        "exact_duplicates": {"cross_split_groups": 3},
        "near_duplicates": {"pairs": []},
        "label_conflicts": [],
    }
    text = _render(display.audit_table(audit))
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text
    assert "  meningioma" in text and "1299" in text


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"braintumor {__version__}\n"


def test_unknown_recipe_and_override_keys_suggest_the_closest() -> None:
    with pytest.raises(RecipeError, match=r"recipe seed-cn not found \(did you mean seed-cnn\?\)"):
        load_recipe("seed-cn")
    recipe = tiny_recipe()
    with pytest.raises(RecipeError, match=r"unknown field 'train.learning_rat' \(did you mean train.learning_rate\?\)"):
        apply_overrides(recipe, ["train.learning_rat=0.1"])
    with pytest.raises(RecipeError, match=r"'trian' is not a recipe section \(did you mean train\?\)"):
        apply_overrides(recipe, ["trian.max_epochs=2"])
    with pytest.raises(RecipeError, match=r"unknown field 'max_epochs' \(did you mean train.max_epochs\?\)"):
        apply_overrides(recipe, ["max_epochs=2"])


def test_cli_errors_suggest_on_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "demo-cnn", "--data", ".", "--set", "train.learning_rat=0.1"], env=NARROW)
    assert result.exit_code == 2
    line = next(line for line in result.output.splitlines() if line.startswith("error:"))
    assert "unknown field 'train.learning_rat'" in line and "did you mean train.learning_rate?" in line
    # Unknown options: click's message, with its suggestion, on one line.
    result = runner.invoke(app, ["predict", "bundle", "x.jpg", "--jsn", "p.json"], env=NARROW)
    assert result.exit_code == 2
    assert any("No such option: --jsn" in line and "--json" in line for line in result.output.splitlines())


def test_json_dash_writes_parseable_json_to_stdout(trained_run, predicted: list[dict], tmp_path: Path) -> None:
    sources = [p["source"] for p in predicted[:2]]
    result = runner.invoke(app, ["predict", str(trained_run.bundle_dir), *sources, "--json", "-"], env=NARROW)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [p["source"] for p in payload["predictions"]] == sources
    assert "Predictions" in result.stderr and not (tmp_path / "-").exists() and not Path("-").exists()
    result = runner.invoke(app, ["predict", str(trained_run.bundle_dir), sources[0], "--csv", "-"], env=NARROW)
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.startswith("path,class") and row.startswith(sources[0])
    both = runner.invoke(app, ["predict", str(trained_run.bundle_dir), sources[0], "--json", "-", "--csv", "-"])
    assert both.exit_code == 2 and "standard output" in both.output


def test_an_empty_folder_gives_only_the_error(trained_run, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["predict", str(trained_run.bundle_dir), str(empty)], env=NARROW)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: no files to predict in {empty}"]


def test_guard_line_only_when_something_was_flagged() -> None:
    clean = {"guard": {"n_flagged": 0, "n_images": 32, "flagged_share": 0.0, "accepted": {"accuracy": 0.9}}}
    assert guard_line(clean, "bundle", "data") is None
    flagged = {"guard": {"n_flagged": 2, "n_images": 32, "flagged_share": 0.0625, "accepted": {"accuracy": 0.9}}}
    assert guard_line(flagged, "bundle", "data") == (
        "input guard: 2 of 32 images (6.2%) flagged; accuracy on the accepted images 90.00%"
    )
    assert "braintumor guard bundle --data data" in (guard_line({"guard": "none"}, "bundle", "data") or "")


def test_demo_data_writes_the_layout_and_says_what_next(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = runner.invoke(app, ["demo-data", str(folder), "--per-class", "2", "--size", "32"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in (folder / "Training").iterdir()) == [
        "glioma_tumor",
        "meningioma_tumor",
        "no_tumor",
        "pituitary_tumor",
    ]
    assert "wrote 8 Training and 8 Testing images" in result.output
    assert f"braintumor train demo-cnn --data {folder}" in result.output


def test_third_party_output_is_hidden_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    before = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    with third_party_output(verbose=False):
        assert os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") == (before or "false")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        logging.getLogger("mlflow.store").warning("a library's log line")
    assert capsys.readouterr().err == ""
    assert os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") == before
    with third_party_output(verbose=True):
        warnings.warn("shown when verbose", UserWarning, stacklevel=1)
        logging.getLogger("some.library").info("an info line")
    err = capsys.readouterr().err
    assert "shown when verbose" in err and "an info line" in err


def test_mlflow_warnings_become_log_records_without_colour_codes() -> None:
    from braintumor.training.tracking import mlflow_warnings_to_log

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("mlflow.warnings")
    logger.addHandler(handler)
    try:
        with mlflow_warnings_to_log():
            warnings.warn("\x1b[33mAdd type hints\x1b[0m", UserWarning, stacklevel=1)
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == ["UserWarning: Add type hints"]
