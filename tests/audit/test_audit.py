"""The data audit: planted exact and near copies are found, unrelated images are not, evaluate uses the result."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2.functional import gaussian_blur
from typer.testing import CliRunner

from braintumor.auditing.audit_file import AuditError, default_audit_dir, load_clean_test_paths
from braintumor.auditing.constants import AUDIT_FILE
from braintumor.auditing.run import run_audit
from braintumor.auditing.similarity import nearest_candidates, normalise_thumbnails
from braintumor.cli import app
from braintumor.data.dataset import drop_exact_duplicates, load_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing

SIZE = 160
CLASS_FOLDERS = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")


def random_scan(rng: np.random.Generator) -> Image.Image:
    """A head-like grey image with its own random texture, blobs and shape: unrelated to every other one."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx = SIZE / 2 + rng.uniform(-10, 10, 2)
    ry, rx = SIZE * rng.uniform(0.34, 0.46), SIZE * rng.uniform(0.28, 0.42)
    radius = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    noise = torch.from_numpy(rng.normal(size=(2, 1, SIZE, SIZE)).astype(np.float32))
    fine = gaussian_blur(noise[:1], [7, 7], [1.2, 1.2])[0, 0].numpy()
    coarse = gaussian_blur(noise[1:], [31, 31], [5.0, 5.0])[0, 0].numpy()
    texture = 110 + 90 * fine / fine.std() * 0.35 + 60 * coarse / coarse.std() * 0.5
    pixels = np.where(radius <= 1, texture, 0) + np.where((radius > 0.8) & (radius <= 1), 70, 0)
    for _ in range(rng.integers(2, 6)):
        by, bx = rng.uniform(0.3, 0.7, 2) * SIZE
        sigma = rng.uniform(4, 14)
        pixels += rng.uniform(40, 110) * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * sigma**2))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").convert("RGB")


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


@pytest.fixture(scope="module")
def leaky_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training with 5 random scans per class; Testing with planted copies of them and unrelated scans."""
    root = tmp_path_factory.mktemp("leaky")
    rng = np.random.default_rng(7)
    train: dict[str, list[Path]] = {}
    for folder in CLASS_FOLDERS:
        train[folder] = [
            _save(random_scan(rng), root / "Training" / folder / f"t{i}.jpg", quality=95) for i in range(5)
        ]
    test = root / "Testing"

    def source(folder: str, index: int) -> Image.Image:
        return Image.open(train[folder][index]).convert("RGB")

    (test / "glioma_tumor").mkdir(parents=True)
    shutil.copy(train["glioma_tumor"][0], test / "glioma_tumor" / "exact.jpg")
    _save(source("glioma_tumor", 1), test / "glioma_tumor" / "reencoded.jpg", quality=55)
    _save(source("glioma_tumor", 2), test / "glioma_tumor" / "as_png.png")
    _save(
        source("meningioma_tumor", 0).resize((100, 100), Image.Resampling.LANCZOS),
        test / "meningioma_tumor" / "resized.jpg",
        quality=90,
    )
    _save(ImageOps.mirror(source("meningioma_tumor", 1)), test / "meningioma_tumor" / "mirrored.jpg", quality=95)
    rescaled = (np.asarray(source("pituitary_tumor", 0), dtype=np.float32) * 0.6 + 40).astype(np.uint8)
    _save(Image.fromarray(rescaled), test / "pituitary_tumor" / "rescaled.jpg", quality=95)
    _save(ImageOps.expand(source("pituitary_tumor", 1), border=22, fill=0), test / "pituitary_tumor" / "padded.png")
    _save(source("no_tumor", 0).crop((14, 10, SIZE - 4, SIZE)), test / "no_tumor" / "cropped.jpg", quality=95)
    # Label conflicts: the same bytes under two classes, across splits and inside Training.
    shutil.copy(train["glioma_tumor"][3], test / "meningioma_tumor" / "conflict.jpg")
    shutil.copy(train["no_tumor"][1], root / "Training" / "pituitary_tumor" / "conflict.jpg")
    shutil.copy(train["meningioma_tumor"][2], root / "Training" / "meningioma_tumor" / "dup_of_t2.jpg")
    for folder in CLASS_FOLDERS:
        for i in range(2):
            _save(random_scan(rng), test / folder / f"unrelated{i}.jpg", quality=95)
    shutil.copy(test / "glioma_tumor" / "unrelated0.jpg", test / "glioma_tumor" / "unrelated0_copy.jpg")
    (test / "no_tumor" / "broken.jpg").write_bytes(b"this is not an image")
    data = train["no_tumor"][2].read_bytes()
    (test / "no_tumor" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return root


PLANTED_NEAR = {
    "Testing/glioma_tumor/reencoded.jpg": "Training/glioma_tumor/t1.jpg",
    "Testing/glioma_tumor/as_png.png": "Training/glioma_tumor/t2.jpg",
    "Testing/meningioma_tumor/resized.jpg": "Training/meningioma_tumor/t0.jpg",
    "Testing/meningioma_tumor/mirrored.jpg": "Training/meningioma_tumor/t1.jpg",
    "Testing/pituitary_tumor/rescaled.jpg": "Training/pituitary_tumor/t0.jpg",
    "Testing/pituitary_tumor/padded.png": "Training/pituitary_tumor/t1.jpg",
    "Testing/no_tumor/cropped.jpg": "Training/no_tumor/t0.jpg",
}
PLANTED_EXACT = {"Testing/glioma_tumor/exact.jpg", "Testing/meningioma_tumor/conflict.jpg"}
UNDECODABLE = {"Testing/no_tumor/broken.jpg", "Testing/no_tumor/truncated.jpg"}


@pytest.fixture(scope="module")
def leaky_audit(leaky_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("audit")
    return run_audit(leaky_root, out, show_progress=False).audit | {"_out": str(out)}


def _statuses(audit: dict, split: str = "Testing") -> dict[str, str]:
    return {f["path"]: f["status"] for f in audit["files"] if f["split"] == split}


def test_every_planted_copy_is_found_and_no_unrelated_image_is_flagged(leaky_audit: dict) -> None:
    statuses = _statuses(leaky_audit)
    unrelated = {p for p in statuses if "unrelated" in p}
    assert {p for p, s in statuses.items() if s == "exact_copy"} == PLANTED_EXACT
    assert {p for p, s in statuses.items() if s == "near_copy"} == set(PLANTED_NEAR)
    assert {p for p, s in statuses.items() if s == "undecodable"} == UNDECODABLE
    assert {p for p, s in statuses.items() if s == "clean"} == unrelated
    pairs = {(p["query"], p["reference"]): p for p in leaky_audit["near_duplicates"]["pairs"]}
    for query, reference in PLANTED_NEAR.items():
        assert (query, reference) in pairs, f"{query} was not paired with its source {reference}"
    assert not [p for p in pairs.values() if "unrelated" in p["query"]]
    assert pairs[("Testing/meningioma_tumor/mirrored.jpg", "Training/meningioma_tumor/t1.jpg")]["mirrored"]
    for cropped in ("Testing/pituitary_tumor/padded.png", "Testing/no_tumor/cropped.jpg"):
        assert pairs[(cropped, PLANTED_NEAR[cropped])]["aligned"], "a crop or pad needs the fitted alignment"
    # The unrelated images were candidates (same head-like layout) and were rejected by the detail check.
    checked = [c for c in leaky_audit["near_duplicates"]["candidates"] if "unrelated" in c["query"]]
    assert checked and max(c["detail_ncc"] for c in checked) < leaky_audit["settings"]["near_threshold"]


def test_exact_groups_label_conflicts_and_undecodable_files(leaky_audit: dict) -> None:
    exact = leaky_audit["exact_duplicates"]
    assert exact["cross_split_groups"] == 2
    exact_conflicts = [c for c in leaky_audit["label_conflicts"] if c["kind"] == "exact"]
    conflicts = {frozenset(f["path"] for f in c["files"]) for c in exact_conflicts}
    assert conflicts == {
        frozenset({"Training/glioma_tumor/t3.jpg", "Testing/meningioma_tumor/conflict.jpg"}),
        frozenset({"Training/no_tumor/t1.jpg", "Training/pituitary_tumor/conflict.jpg"}),
    }
    within_test = [g for g in exact["groups"] if g["splits"] == ["Testing"]]
    assert [sorted(f["path"] for f in g["files"]) for g in within_test] == [
        ["Testing/glioma_tumor/unrelated0.jpg", "Testing/glioma_tumor/unrelated0_copy.jpg"]
    ]
    reasons = {u["path"]: u["reason"] for u in leaky_audit["undecodable"]}
    assert set(reasons) == UNDECODABLE
    assert "not an image" in reasons["Testing/no_tumor/broken.jpg"]
    assert leaky_audit["splits"]["Testing"]["undecodable"] == 2
    assert leaky_audit["splits"]["Testing"]["most_common_sizes"][f"{SIZE}x{SIZE}"] >= 8
    assert "100x100" in leaky_audit["splits"]["Testing"]["most_common_sizes"]


def test_training_drop_matches_what_training_removes(leaky_root: Path, leaky_audit: dict) -> None:
    image_set = load_images(discover_split(leaky_root, "Training"), Preprocessing(image_size=16), show_progress=False)
    _, report = drop_exact_duplicates(image_set)
    assert leaky_audit["training_drop"] == {
        "removed_copies": report.removed_copies,
        "removed_label_conflicts": report.removed_conflicts,
    }
    assert report.removed_copies == 1 and report.removed_conflicts == 2
    # Same digests as the loader, so the audit's groups are training's groups.
    audit_digests = {f["path"]: f["digest"] for f in leaky_audit["files"]}
    for path, digest in zip(image_set.paths, image_set.hashes, strict=True):
        assert audit_digests[path.relative_to(leaky_root).as_posix()] == digest


def test_outputs_manifest_and_report(leaky_root: Path, leaky_audit: dict) -> None:
    out = Path(leaky_audit["_out"])
    saved = json.loads((out / AUDIT_FILE).read_text())
    assert saved["leakage"]["Testing"]["clean"] == 9
    manifest = (out / "clean_test_manifest.txt").read_text().split()
    assert set(manifest) == {p for p, s in _statuses(leaky_audit).items() if s == "clean"}
    assert load_clean_test_paths(leaky_root, out) == {leaky_root / p for p in manifest}
    assert load_clean_test_paths(leaky_root / "elsewhere") is None  # no default audit for that root
    report = (out / "audit.html").read_text()
    assert report.count("data:image/jpeg;base64,") >= 6 and "Label conflicts (2)" in report
    assert (out / "near_duplicate_scores.png").stat().st_size > 10_000


def test_candidate_search_in_blocks_equals_the_full_matrix() -> None:
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 256, (50, 16, 16), dtype=np.uint8)
    query = rng.integers(0, 256, (30, 16, 16), dtype=np.uint8)
    query[:5] = reference[10:15, :, ::-1]  # mirrored copies
    found = nearest_candidates(query, reference, k=3, query_block=7, reference_block=11)
    plain = normalise_thumbnails(query) @ normalise_thumbnails(reference).T
    mirror = normalise_thumbnails(np.ascontiguousarray(query[:, :, ::-1])) @ normalise_thumbnails(reference).T
    full = torch.maximum(plain, mirror)
    expected_scores, expected_index = full.topk(3, dim=1)
    np.testing.assert_allclose(found.scores, expected_scores.numpy(), atol=1e-5)
    np.testing.assert_array_equal(found.indices, expected_index.numpy())
    assert found.indices[:5, 0].tolist() == list(range(10, 15)) and found.mirrored[:5, 0].all()


def test_evaluate_reports_the_deduplicated_split(
    leaky_root: Path, leaky_audit: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from braintumor.bundle import save_bundle
    from braintumor.config import Recipe
    from braintumor.evaluation.evaluate import evaluate_bundle
    from braintumor.evaluation.metrics import classification_metrics
    from braintumor.models import create_model, resolve_preprocessing

    recipe = Recipe.model_validate(
        {"name": "tiny", "data": {"image_size": 32}, "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}}
    )
    torch.manual_seed(0)
    model = create_model(recipe)
    bundle = save_bundle(tmp_path / "bundle", model, recipe, resolve_preprocessing(recipe, model))
    audit_dir = Path(leaky_audit["_out"])
    result = evaluate_bundle(
        bundle, leaky_root, "Testing", tmp_path / "eval", show_progress=False, audit=audit_dir, n_bootstrap=20
    )
    dedup = result.deduplicated
    assert dedup is not None and dedup["n_images"] == 9 and dedup["official_n_images"] == 18
    assert dedup["excluded_exact_copies"] == 2 and dedup["excluded_near_copies"] == 7
    excluded = {Path(p).relative_to(leaky_root).as_posix() for p in dedup["excluded_paths"]}
    assert excluded == set(PLANTED_NEAR) | PLANTED_EXACT
    clean = {leaky_root / p for p in (audit_dir / "clean_test_manifest.txt").read_text().split()}
    keep = np.array([p in clean for p in result.paths])
    expected = classification_metrics(result.labels[keep], result.probabilities[keep], list(dedup["class_names"]))
    assert dedup["accuracy"] == pytest.approx(expected["accuracy"])
    assert dedup["confusion_matrix"] == expected["confusion_matrix"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["deduplicated"]["n_images"] == 9 and saved["n_images"] == 18
    assert (tmp_path / "eval" / "metrics_deduplicated.json").is_file()
    assert (tmp_path / "eval" / "confusion_matrix_deduplicated.png").is_file()

    # The default location is found from the working directory; a changed file makes the audit stale.
    monkeypatch.chdir(tmp_path)
    changed_root = tmp_path / leaky_root.name
    shutil.copytree(leaky_root, changed_root)
    shutil.copytree(audit_dir, default_audit_dir(changed_root))
    found = evaluate_bundle(bundle, changed_root, "Testing", tmp_path / "eval2", show_progress=False, n_bootstrap=0)
    assert found.deduplicated is not None and found.deduplicated["n_images"] == 9
    with (changed_root / "Testing" / "glioma_tumor" / "unrelated1.jpg").open("ab") as handle:
        handle.write(b"\0")
    stale = evaluate_bundle(bundle, changed_root, "Testing", tmp_path / "eval3", show_progress=False, n_bootstrap=0)
    assert stale.deduplicated is None and "changed since" in (stale.audit_note or "")
    with pytest.raises(AuditError, match="changed since"):
        evaluate_bundle(
            bundle,
            changed_root,
            "Testing",
            tmp_path / "eval4",
            show_progress=False,
            n_bootstrap=0,
            audit=default_audit_dir(changed_root),
        )


def test_cli_audit_and_errors(leaky_root: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["audit", str(leaky_root), "--out", str(tmp_path / "a"), "--exact-only", "-q"])
    assert result.exit_code == 0, result.output
    assert "audit took" in result.output
    saved = json.loads((tmp_path / "a" / AUDIT_FILE).read_text())
    assert not saved["leakage"]["Testing"]["near_search"] and saved["leakage"]["Testing"]["exact_copy"] == 2
    assert load_clean_test_paths(leaky_root, tmp_path / "a") is None  # exact-only: no clean split claimed
    assert not (tmp_path / "a" / "clean_test_manifest.txt").exists()
    assert saved["leakage"]["Testing"]["no_exact_copy"] == 16  # 20 files: 2 exact copies, 2 undecodable
    assert "not searched" in (tmp_path / "a" / "audit.html").read_text()
    missing = runner.invoke(app, ["audit", str(tmp_path / "missing"), "-q"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad = runner.invoke(app, ["audit", str(leaky_root), "--threshold", "1.5", "-q"])
    assert bad.exit_code == 2 and "threshold" in bad.output


def test_size_by_class_flags_a_class_that_comes_from_one_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for split, n in (("Training", 3), ("Testing", 2)):
        for index, folder in enumerate(CLASS_FOLDERS):
            for i in range(n):
                # Training's gliomas all come at 160 px, the other classes at other sizes; Testing mixes.
                side = SIZE if (folder == "glioma_tumor") == (split == "Training") else SIZE + 8 * (index + 1)
                _save(random_scan(rng).resize((side, side)), tmp_path / split / folder / f"{i}.png")
    result = run_audit(tmp_path, tmp_path / "audit", show_progress=False)
    sizes = result.audit["size_by_class"]
    assert sizes["splits"]["Training"]["glioma"] == {"files": 3, "common_size": 3, "share": 1.0}
    assert sizes["splits"]["Testing"]["glioma"]["share"] == 0.0
    (warning,) = sizes["warnings"]
    assert "100% of glioma" in warning and "Testing: glioma 0%" in warning
    html = (tmp_path / "audit" / "audit.html").read_text()
    assert f"{SIZE}x{SIZE}" in html and "Warning:" in html
    printed = CliRunner().invoke(app, ["audit", str(tmp_path), "--out", str(tmp_path / "audit2"), "-q"])
    assert printed.exit_code == 0 and "image size predicts the class" in " ".join(printed.output.split())


@pytest.mark.real_data
@pytest.mark.slow
def test_real_data_leakage(tmp_path: Path) -> None:
    root = os.environ.get("BRAINTUMOR_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("BRAINTUMOR_DATA is not set")
    audit = run_audit(root, tmp_path, show_progress=False, write_report=False).audit
    leak = audit["leakage"]["Testing"]
    # The shared README's facts: 88 Testing files are byte-identical to Training files, in 64 groups.
    assert leak["exact_copy"] == 88 and leak["by_class"]["no_tumor"]["exact_copy"] == 88
    assert audit["exact_duplicates"]["cross_split_groups"] == 64
    assert sum(len(g["files"]) - 1 for g in audit["exact_duplicates"]["groups"]) == 237
    pairs = {(p["query"], p["reference"]): p for p in audit["near_duplicates"]["pairs"]}
    # A padded copy (viewed by eye) is found after alignment; an adjacent slice of the same scan is not.
    padded = pairs[("Testing/meningioma_tumor/image(26).jpg", "Training/meningioma_tumor/m1(9).jpg")]
    assert padded["aligned"] and padded["whole_image_ncc"] < 0.96
    candidates = {(c["query"], c["reference"]): c for c in audit["near_duplicates"]["candidates"]}
    assert not candidates[("Testing/glioma_tumor/image(66).jpg", "Training/glioma_tumor/gg (588).jpg")]["near_copy"]
    # A Testing glioma that is a resized copy of a Training meningioma: a label conflict.
    conflict = pairs[("Testing/glioma_tumor/image(48).jpg", "Training/meningioma_tumor/m1(168).jpg")]
    assert conflict["label_conflict"]
    assert leak["clean"] + leak["exact_copy"] + leak["near_copy"] == leak["files"] == 394
    # The source shortcut: every Training glioma is 512x512, nearly no no-tumour slice is; Testing differs.
    sizes = audit["size_by_class"]
    assert sizes["common_size"] == "512x512" and sizes["splits"]["Training"]["glioma"]["share"] == 1.0
    assert sizes["splits"]["Testing"]["glioma"]["common_size"] == 18 and len(sizes["warnings"]) == 1
