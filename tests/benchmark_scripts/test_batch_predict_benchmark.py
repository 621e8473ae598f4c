"""The batch benchmark's tree and its comparison of predictions."""

from __future__ import annotations

from pathlib import Path

from braintumor.data.images import load_image_rgb
from tests.conftest import load_benchmark

benchmark = load_benchmark("batch_predict")


def test_the_tree_is_seeded_augmented_copies_and_two_unreadable_files(synthetic_root: Path, tmp_path: Path) -> None:
    assert benchmark.build_tree(synthetic_root, tmp_path / "a", 6) == 6
    benchmark.build_tree(synthetic_root, tmp_path / "b", 6)
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*") if path.is_file())
    assert len(files) == 8 and {path.name for path in files} >= {"truncated.jpg", "notes.txt"}
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert load_image_rgb(tmp_path / "a" / "batch000" / "000005.jpg").mode == "RGB"


def test_compare_needs_the_same_classes_and_close_probabilities() -> None:
    reference = {"a": {"class_name": "glioma", "p_glioma": 0.9}, "b": {"class_name": None, "p_glioma": 0.2}}
    close = {"a": {"class_name": "glioma", "p_glioma": 0.9 + 4e-6, "error": None}, "b": dict(reference["b"])}
    assert benchmark.compare(reference, close)["identical"]
    other = {**close, "a": {"class_name": "no_tumor", "p_glioma": 0.9, "error": None}}
    assert not benchmark.compare(reference, other)["identical"]
    far = {**close, "b": {"class_name": None, "p_glioma": 0.3, "error": None}}
    assert benchmark.compare(reference, far)["max_probability_diff"] > 1e-5
