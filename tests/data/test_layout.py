from __future__ import annotations

from pathlib import Path

import pytest

from braintumor.classes import CLASS_NAMES
from braintumor.data.layout import discover_split, find_split_dir, normalise_class_name
from braintumor.data.synthetic import make_synthetic_dataset
from braintumor.errors import DatasetLayoutError

MASOUD_FOLDERS = {"glioma": "glioma", "meningioma": "meningioma", "no_tumor": "notumor", "pituitary": "pituitary"}


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("glioma_tumor", "glioma"),
        ("glioma", "glioma"),
        ("Glioma-Tumor", "glioma"),
        ("meningioma_tumor", "meningioma"),
        ("meningioma", "meningioma"),
        ("no_tumor", "no_tumor"),
        ("notumor", "no_tumor"),
        ("pituitary_tumor", "pituitary"),
        ("pituitary", "pituitary"),
        ("cats", None),
    ],
)
def test_class_names_are_normalised(folder: str, expected: str | None) -> None:
    assert normalise_class_name(folder) == expected


@pytest.mark.parametrize("folders", [None, MASOUD_FOLDERS], ids=["sartaj", "masoud"])
def test_both_layouts_give_the_same_fixed_class_order(tmp_path: Path, folders: dict | None) -> None:
    root = make_synthetic_dataset(tmp_path, per_class=2, size=16, folder_names=folders)
    samples = discover_split(root, "Training")
    assert len(samples) == 8
    assert sorted({s.class_name for s in samples}) == sorted(CLASS_NAMES)
    for sample in samples:
        assert sample.path.name.startswith(CLASS_NAMES[sample.label])


def test_split_names_match_case_insensitively(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, per_class=2, size=16)
    (root / "Training").rename(root / "train")
    assert find_split_dir(root, "Training") == root / "train"


def _write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        discover_split(tmp_path / "nope", "Training")


def test_missing_split_names_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "Validation").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"split 'Training' not found .*Validation"):
        discover_split(tmp_path, "Training")


def test_root_that_is_a_split_gets_a_hint(tmp_path: Path) -> None:
    _write(tmp_path / "glioma_tumor" / "a.jpg")
    with pytest.raises(DatasetLayoutError, match="looks like a single split"):
        discover_split(tmp_path, "Training")


def test_split_without_class_folders(tmp_path: Path) -> None:
    _write(tmp_path / "Training" / "loose.jpg")
    with pytest.raises(DatasetLayoutError, match="has no class folders"):
        discover_split(tmp_path, "Training")


def test_unknown_class_folder_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "Training" / "glioma_tumor" / "a.jpg")
    _write(tmp_path / "Training" / "astrocytoma" / "b.jpg")
    with pytest.raises(DatasetLayoutError, match=r"unknown class folder.*astrocytoma"):
        discover_split(tmp_path, "Training")


def test_two_folders_for_one_class(tmp_path: Path) -> None:
    _write(tmp_path / "Training" / "glioma_tumor" / "a.jpg")
    _write(tmp_path / "Training" / "glioma" / "b.jpg")
    with pytest.raises(DatasetLayoutError, match="both mean class 'glioma'"):
        discover_split(tmp_path, "Training")


def test_empty_split(tmp_path: Path) -> None:
    (tmp_path / "Training" / "glioma_tumor").mkdir(parents=True)
    _write(tmp_path / "Training" / "no_tumor" / ".DS_Store")
    with pytest.raises(DatasetLayoutError, match="is empty"):
        discover_split(tmp_path, "Training")
