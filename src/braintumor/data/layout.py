"""Discover ``<root>/<split>/<class>/<image>`` data sets and normalise their class names.

Both common releases of the public brain MRI data are accepted: the Sartaj Bhuvaji layout
(``glioma_tumor``, ``no_tumor``, ...) and the Masoud Nickparvar layout (``glioma``, ``notumor``, ...).

Example:
    >>> normalise_class_name("Glioma_Tumor")
    'glioma'
    >>> normalise_class_name("notumor")
    'no_tumor'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from braintumor.classes import CLASS_NAMES
from braintumor.errors import DatasetLayoutError

_CLASS_ALIASES: dict[str, str] = {
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "glioma_tumour": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "meningioma_tumour": "meningioma",
    "no_tumor": "no_tumor",
    "notumor": "no_tumor",
    "no_tumour": "no_tumor",
    "notumour": "no_tumor",
    "normal": "no_tumor",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
    "pituitary_tumour": "pituitary",
}

_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "training": ("training", "train"),
    "testing": ("testing", "test"),
    "validation": ("validation", "val", "valid"),
}


@dataclass(frozen=True)
class Sample:
    """One image file and its class index in :data:`CLASS_NAMES`."""

    path: Path
    label: int

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


def normalise_class_name(folder_name: str) -> str | None:
    """Map a class folder name to its canonical class name, or ``None`` if it is not a known class."""
    key = folder_name.strip().lower().replace("-", "_").replace(" ", "_")
    return _CLASS_ALIASES.get(key)


def find_split_dir(root: Path, split: str) -> Path:
    """Return the folder of ``split`` under ``root``, matching names like Training/train case-insensitively."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"data folder {root} does not exist or is not a folder")
    wanted = _SPLIT_ALIASES.get(split.lower(), (split.lower(),))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        if folder.name.lower() in wanted:
            return folder
    present = ", ".join(p.name for p in folders) or "no sub-folders"
    if folders and all(normalise_class_name(p.name) for p in folders):
        hint = f" ({root} looks like a single split: pass its parent folder and name the split)"
    else:
        hint = ""
    raise DatasetLayoutError(
        f"split {split!r} not found in {root} (found: {present}); expected <root>/{split}/<class>/<image>{hint}"
    )


def _is_candidate_file(path: Path) -> bool:
    # Hidden files and OS droppings are not data; anything else is decoded and judged by content.
    return path.is_file() and not path.name.startswith(".") and path.name not in {"Thumbs.db", "desktop.ini"}


def discover_split(root: Path | str, split: str) -> list[Sample]:
    """List every candidate file of one split with its class, checking the layout first.

    Raises :class:`DatasetLayoutError` before any training starts when the split folder is missing,
    holds no class folders, holds an unknown class folder, names one class twice, or has no files.
    Files are not decoded here; undecodable ones are reported and skipped when loaded.
    """
    split_dir = find_split_dir(Path(root), split)
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetLayoutError(
            f"{split_dir} has no class folders; expected one folder per class "
            f"({', '.join(CLASS_NAMES)}) holding the images"
        )
    unknown = [p.name for p in class_dirs if normalise_class_name(p.name) is None]
    if unknown:
        raise DatasetLayoutError(
            f"{split_dir} has unknown class folder(s): {', '.join(unknown)}; accepted names: "
            f"{', '.join(sorted(_CLASS_ALIASES))}"
        )
    seen: dict[str, str] = {}
    samples: list[Sample] = []
    for class_dir in class_dirs:
        canonical = normalise_class_name(class_dir.name)
        assert canonical is not None
        if canonical in seen:
            raise DatasetLayoutError(
                f"{split_dir}: folders {seen[canonical]!r} and {class_dir.name!r} both mean class {canonical!r}"
            )
        seen[canonical] = class_dir.name
        label = CLASS_NAMES.index(canonical)
        files = sorted(p for p in class_dir.rglob("*") if _is_candidate_file(p))
        samples.extend(Sample(path=p, label=label) for p in files)
    if not samples:
        raise DatasetLayoutError(f"split {split_dir} is empty: its class folders hold no files")
    return samples
