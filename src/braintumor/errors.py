"""Errors that the CLI turns into a one-line message instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class BrainTumorError(Exception):
    """Base class of every error caused by user input (files, folders, recipes, bundles)."""


class DatasetLayoutError(BrainTumorError):
    """The data folder does not have the ``<root>/<split>/<class>/<image>`` layout."""


class ImageDecodeError(BrainTumorError):
    """An input file that cannot be used as an image; names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class WeightsUnavailableError(BrainTumorError):
    """Pretrained weights could neither be downloaded nor read from a local file."""


class BundleError(BrainTumorError):
    """A model bundle folder that is missing, incomplete or inconsistent."""
