"""The public Python API end to end on demo data: every verb, typed results, and what each writes (or not)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import braintumor
from braintumor.results import AUDIT_SCHEMA, METRICS_SCHEMA, AuditRecord, MetricsRecord, Predictions, TrainRun

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return braintumor.demo_data(tmp_path_factory.mktemp("demo") / "demo", per_class=12, size=48)


@pytest.fixture(scope="module")
def demo_run(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    out = tmp_path_factory.mktemp("runs") / "demo"
    return braintumor.train("demo-cnn", data=demo_root, out=out, epochs=3, show_progress=False)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_import_is_cheap_and_names_the_api() -> None:
    code = "import sys, braintumor; print('torch' in sys.modules, callable(braintumor.load))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False",
        "True",
    ]


def test_train_returns_a_typed_run_with_a_bundle(demo_run: TrainRun) -> None:
    assert isinstance(demo_run.bundle, braintumor.Bundle)
    assert demo_run.bundle.class_names == list(braintumor.CLASS_NAMES)
    assert 0.0 <= demo_run.val_metrics.accuracy <= 1.0 and demo_run.best_epoch >= 1
    assert set(demo_run.val_metrics.per_class) == set(braintumor.CLASS_NAMES)
    assert json.dumps(demo_run.to_dict())  # JSON-ready, the bundle included
    assert (demo_run.bundle_path / "model.onnx").is_file()


def test_predict_takes_paths_folders_images_and_arrays(demo_run: TrainRun, demo_root: Path) -> None:
    model = braintumor.load(demo_run.bundle_path)
    folder = demo_root / "Testing" / "glioma_tumor"
    by_folder = model.predict(folder)
    assert isinstance(by_folder, Predictions) and len(by_folder) == len(list(folder.iterdir()))
    one = sorted(folder.iterdir())[0]
    from_path, from_image = model.predict(one)[0], model.predict(Image.open(one))[0]
    assert from_path.probabilities == pytest.approx(from_image.probabilities, abs=1e-6)
    from_array = model.predict(np.asarray(Image.open(one).convert("L")))[0]
    assert from_array.class_name == from_path.class_name
    frame = by_folder.to_pandas()
    assert list(frame.columns[:2]) == ["source", "class_name"] and len(frame) == len(by_folder)


def test_a_flagged_input_has_no_class(demo_run: TrainRun, tmp_path: Path) -> None:
    photo = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    photo[..., 0] = 255  # a saturated red photo is nothing like a grey MRI slice
    prediction = braintumor.load(demo_run.bundle_path).predict(photo)[0]
    assert prediction.flagged is True and prediction.class_name is None
    assert prediction.diagnosis.startswith("no diagnosis")


def test_unreadable_files_are_skipped_with_the_reason(demo_run: TrainRun, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    predictions = braintumor.load(demo_run.bundle_path).predict([bad])
    assert len(predictions) == 0 and predictions.skipped[0].path == str(bad)


def test_evaluate_writes_schema_valid_metrics_and_a_report(demo_run: TrainRun, demo_root: Path, tmp_path: Path) -> None:
    evaluation = demo_run.bundle.evaluate(demo_root, "Testing", tmp_path / "eval", report=True)
    assert evaluation.accuracy == evaluation.metrics.accuracy
    assert evaluation.report_path is not None and evaluation.report_path.is_file()
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    MetricsRecord.model_validate(written)
    assert list(evaluation.per_class().index) == list(braintumor.CLASS_NAMES)


def test_explain_draws_one_figure_per_image(demo_run: TrainRun, demo_root: Path, tmp_path: Path) -> None:
    images = sorted((demo_root / "Testing" / "pituitary_tumor").iterdir())[:2]
    explanation = demo_run.bundle.explain(images, tmp_path / "explain")
    assert [item.source for item in explanation.images] == [str(path) for path in images]
    assert all(item.figure.is_file() and item.figure.suffix == ".png" for item in explanation.images)


def test_reading_verbs_leave_the_bundle_unchanged(demo_run: TrainRun, demo_root: Path, tmp_path: Path) -> None:
    before = _hashes(demo_run.bundle_path)
    model = braintumor.load(demo_run.bundle_path)
    model.predict(demo_root / "Testing")
    model.evaluate(demo_root, "Testing", tmp_path / "eval")
    exported = model.export(out=tmp_path / "copy.onnx")
    assert exported.is_file() and _hashes(demo_run.bundle_path) == before


def test_calibrate_and_fit_guard_update_a_copy(demo_run: TrainRun, demo_root: Path, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(demo_run.bundle_path, tmp_path / "bundle"))
    model = braintumor.load(folder)
    calibration = model.calibrate(demo_root, tmp_path / "calibration")
    assert calibration.temperature > 0 and model.config.extras.temperature == pytest.approx(calibration.temperature)
    guard = model.fit_guard(demo_root)
    assert guard.n_val > 0 and 0.0 <= guard.validation_flag_rate <= 1.0


def test_ensemble_and_audit(demo_run: TrainRun, demo_root: Path, tmp_path: Path) -> None:
    combined = braintumor.ensemble([demo_run.bundle_path, demo_run.bundle_path], tmp_path / "ens", data=demo_root)
    assert combined.config.ensemble is not None and len(combined.predict(demo_root / "Testing" / "no_tumor")) > 0
    audit = braintumor.audit(demo_root, tmp_path / "audit", near=False, show_progress=False)
    AuditRecord.model_validate(json.loads((tmp_path / "audit" / "audit.json").read_text()))
    assert audit.summary()["splits"] and audit.outputs["audit.json"].is_file()


def test_unknown_recipe_and_missing_data_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BRAINTUMOR_DATA", raising=False)
    with pytest.raises(braintumor.BrainTumorError, match="demo-cnn"):
        braintumor.train("demo-cn", data=tmp_path)
    with pytest.raises(braintumor.BrainTumorError, match="no data folder"):
        braintumor.train("demo-cnn")
    with pytest.raises(braintumor.BrainTumorError):
        braintumor.load(tmp_path / "missing")


@pytest.mark.parametrize(("name", "schema"), [("metrics", METRICS_SCHEMA), ("audit", AUDIT_SCHEMA)])
def test_published_json_schemas_match_the_code(name: str, schema: dict) -> None:
    assert json.loads((SCHEMAS / f"{name}.schema.json").read_text()) == schema
