"""Batch prediction: the plan covers every input once, the shards match the one-process path, runs resume."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import braintumor
from braintumor.batch import plan_batch, read_shards, run_batch
from braintumor.batch.plan import BatchPlan
from braintumor.batch.shards import shard_path
from braintumor.cli import app
from braintumor.data.synthetic_volumes import dicom_series_bytes, nifti_bytes, stack_to_ras, tumour_stack
from braintumor.errors import BrainTumorError
from tests.integration.test_flagged_surfaces import photo_like


@pytest.mark.parametrize(("count", "parts", "size"), [(1, 1, 1), (7, 2, 2), (50, 3, 4), (10, 16, 3), (64, 1, 256)])
def test_every_input_is_in_exactly_one_shard(count: int, parts: int, size: int) -> None:
    plan = BatchPlan(tuple(f"f{i}" for i in range(count)), num_parts=parts, shard_size=size)
    placed = [item for part in range(parts) for shard in plan.shards(part) for item in shard.items]
    assert sorted(placed) == list(range(count))
    assert all(len(shard.items) <= size for shard in plan.all_shards())
    assert len({shard.relative_path for shard in plan.all_shards()}) == len(plan.all_shards())


def test_the_plan_is_the_same_on_every_call(tmp_path: Path) -> None:
    for name in ("b/2.png", "a.png", "b/1.png", "b/.hidden.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    first, second = plan_batch([tmp_path], num_parts=2), plan_batch([tmp_path], num_parts=2)
    assert first == second and first.fingerprint() == second.fingerprint()
    assert [Path(source).name for source in first.sources] == ["a.png", "1.png", "2.png"]
    with pytest.raises(BrainTumorError, match="--part-id must be between 0 and 1"):
        first.shards(2)


@pytest.fixture(scope="module")
def image_tree(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic Testing images, one unreadable file and one photo the input guard flags."""
    tree = tmp_path_factory.mktemp("tree")
    for path in sorted((synthetic_root / "Testing").rglob("*.jpg"))[:20]:
        (tree / path.parent.name).mkdir(exist_ok=True)
        (tree / path.parent.name / path.name).write_bytes(path.read_bytes())
    (tree / "broken.jpg").write_bytes(b"not an image at all")
    photo_like().save(tree / "photo.png")
    return tree


def _rows(out: Path) -> list[dict]:
    return read_shards(out).to_pylist()


def test_shards_match_the_one_process_path(trained_run, image_tree: Path, tmp_path: Path) -> None:
    model = braintumor.load(trained_run.bundle_dir)
    run = model.predict_batch(image_tree, tmp_path / "out", num_parts=2, shard_size=5)
    assert run.complete and run.shards_written == len(plan_batch([image_tree], num_parts=2, shard_size=5).all_shards())
    assert run.summary["rows_repeated"] == 0 and run.summary["inputs_missing"] == []
    rows = {row["source"]: row for row in _rows(tmp_path / "out")}
    single = model.predict(image_tree)
    assert len(rows) == len(single) + len(single.skipped) == 22
    for prediction in single:
        row = rows[prediction.source]
        assert row["class_name"] == prediction.class_name and row["flagged"] == prediction.flagged
        for name, value in prediction.probabilities.items():
            assert abs(row[f"p_{name}"] - value) <= 1e-5
    photo = rows[str(image_tree / "photo.png")]
    assert photo["class_name"] is None and photo["flagged"] is True and photo["flag_reason"]
    broken = rows[str(image_tree / "broken.jpg")]
    assert broken["kind"] == "error" and "not an image" in broken["error"] and broken["confidence"] is None


def test_a_restart_writes_only_the_missing_shards(trained_run, image_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run_batch(trained_run.bundle_dir, [image_tree], out, shard_size=4, show_progress=False)
    plan = plan_batch([image_tree], shard_size=4)
    lost = plan.all_shards()[2]
    shard_path(out, lost).unlink()  # as if the run had been killed before this shard was renamed into place
    leftover = shard_path(out, lost).with_name(".shard-00002.parquet.999999999.tmp")
    leftover.write_bytes(b"half a file")
    again = run_batch(trained_run.bundle_dir, [image_tree], out, shard_size=4, show_progress=False)
    assert (again.shards_written, again.shards_reused) == (1, first.shards_written - 1)
    assert again.images + again.errors == len(lost.items) and not leftover.exists()
    items = [(row["item"], row["slice_index"]) for row in _rows(out)]
    assert sorted(items) == sorted(set(items)) and {item for item, _ in items} == set(range(len(plan.sources)))
    done = run_batch(trained_run.bundle_dir, [image_tree], out, shard_size=4, show_progress=False)
    assert (done.shards_written, done.images, done.complete) == (0, 0, True)


def test_another_batch_in_the_same_folder_is_refused(trained_run, image_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_batch(trained_run.bundle_dir, [image_tree / "glioma_tumor"], out, show_progress=False)
    with pytest.raises(BrainTumorError, match="holds another batch"):
        run_batch(trained_run.bundle_dir, [image_tree], out, show_progress=False)
    with pytest.raises(BrainTumorError, match="holds another batch"):
        run_batch(trained_run.bundle_dir, [image_tree / "glioma_tumor"], out, num_parts=2, show_progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(BrainTumorError, match="not empty"):
        run_batch(trained_run.bundle_dir, [image_tree], tmp_path / "busy", show_progress=False)


def test_dicom_slices_and_volumes_get_study_findings(trained_run, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    stack = tumour_stack(6, 48, tumour_slices=(2, 3, 4))
    for index, (name, data) in enumerate(dicom_series_bytes(stack)):
        folder = tree / "dicom" / ("a" if index % 2 else "b")  # one series spread over two folders
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(name).name).write_bytes(data)
    voxels, affine = stack_to_ras(stack)
    (tree / "head.nii.gz").write_bytes(nifti_bytes(voxels.astype(np.int16), affine))
    run = run_batch(trained_run.bundle_dir, [tree], tmp_path / "out", num_parts=2, shard_size=2, show_progress=False)
    rows = _rows(tmp_path / "out")
    assert sorted({row["kind"] for row in rows}) == ["dicom", "volume"] and not any(row["error"] for row in rows)
    assert sum(row["kind"] == "volume" for row in rows) == 6
    studies = {row["study_key"]: row for row in read_csv_rows(tmp_path / "out" / "studies.csv")}
    assert len(studies) == 2 and {int(row["slices"]) for row in studies.values()} == {6}
    assert run.summary["studies"] == 2 and all(row["finding"] and row["reason"] for row in studies.values())


def read_csv_rows(path: Path) -> list[dict]:
    import csv

    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cli_job_array_parts_and_option_checks(trained_run, image_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["predict", str(trained_run.bundle_dir), str(image_tree), "--out-dir", str(out), "--num-parts", "2"]
    first = CliRunner().invoke(app, [*base, "--part-id", "1"])
    assert first.exit_code == 0, first.output
    assert "part 1 of 2" in first.output and "other parts are not finished" in first.output
    second = CliRunner().invoke(app, [*base, "--part-id", "0"])
    assert second.exit_code == 0, second.output
    assert "batch complete: 21 images scored, 1 unreadable" in second.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["rows"] == 22 and summary["rows_repeated"] == 0
    lonely = CliRunner().invoke(app, ["predict", str(trained_run.bundle_dir), str(image_tree), "--num-parts", "2"])
    assert lonely.exit_code == 2 and "--num-parts need --out-dir" in lonely.output
    mixed = CliRunner().invoke(app, [*base, "--csv", str(tmp_path / "p.csv")])
    assert mixed.exit_code == 2 and "leave out --json, --csv" in mixed.output


def test_a_missing_ray_names_the_extra(trained_run, image_tree: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BrainTumorError, match=r"pip install 'braintumor\[ray\]'"):
        run_batch(trained_run.bundle_dir, [image_tree], tmp_path / "out", engine="ray", show_progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(BrainTumorError, match="--address names a Ray cluster"):
        run_batch(trained_run.bundle_dir, [image_tree], tmp_path / "out", address="auto", show_progress=False)


def _agree(model: braintumor.Bundle, tree: Path, out: Path, **options) -> None:
    """The batch's rows give the classes and probabilities (within 1e-5) of ``model.predict`` with ``options``."""
    model.predict_batch(tree, out, **options)
    rows = {row["source"]: row for row in _rows(out)}
    single = model.predict(tree, **options)
    assert len(single) == sum(row["error"] is None for row in rows.values())
    for prediction in single:
        row = rows[prediction.source]
        assert row["class_name"] == prediction.class_name
        assert max(abs(row[f"p_{k}"] - v) for k, v in prediction.probabilities.items()) <= 1e-5


@pytest.mark.slow
def test_tta_and_ensembles_work_as_in_the_one_process_path(trained_run, image_tree: Path, tmp_path: Path) -> None:
    model = braintumor.load(trained_run.bundle_dir)
    _agree(model, image_tree, tmp_path / "tta", tta=True)
    pair = braintumor.ensemble([trained_run.bundle_dir, trained_run.bundle_dir], tmp_path / "ensemble", weights=[3, 1])
    _agree(pair, image_tree, tmp_path / "ensemble-out")
    manifest = json.loads((tmp_path / "tta" / "manifest.json").read_text())
    assert manifest["tta"] is True and manifest["inputs"] == 22


def test_an_output_folder_inside_the_source_is_not_read_as_input(tmp_path: Path) -> None:
    from PIL import Image

    from braintumor.bundle.examples import tiny_bundle

    tree = tmp_path / "scans"
    tree.mkdir()
    for index in range(3):
        Image.new("L", (40, 40), 60 * index).save(tree / f"{index}.png")
    model = braintumor.load(tiny_bundle(tmp_path / "bundle"))
    first = model.predict_batch(tree, tree / "preds", shard_size=2)
    again = model.predict_batch(tree, tree / "preds", shard_size=2)  # the shards are not new inputs
    assert (first.images, first.shards_written, again.shards_reused, again.images) == (3, 2, 2, 0)
    assert [Path(row["source"]).name for row in _rows(tree / "preds")] == ["0.png", "1.png", "2.png"]


def test_the_device_predictor_gives_the_predictor_s_answers(trained_run, image_tree: Path) -> None:
    """The wrapper that runs the network on a GPU, run on the CPU: same probabilities and guard verdicts."""
    import torch

    from braintumor.batch.model import DevicePredictor
    from braintumor.bundle import load_bundle
    from braintumor.inference.predictor import Predictor

    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    plain = Predictor(load_bundle(trained_run.bundle_dir)).predict_uint8_checked(images)
    moved = DevicePredictor(load_bundle(trained_run.bundle_dir), device="cpu").predict_uint8_checked(images)
    np.testing.assert_allclose(moved[0], plain[0], atol=1e-6)
    np.testing.assert_allclose(moved[1].ood_score, plain[1].ood_score, rtol=1e-5)
