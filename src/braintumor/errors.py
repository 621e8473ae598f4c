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


# Which install extra brings each optional package (pyproject.toml's optional-dependencies).
EXTRA_OF_MODULE = {
    "fastapi": "serve",
    "fastapi_offline": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "onnx": "serve",
    "onnxruntime": "serve",
    "onnxscript": "serve",
    "httpx": "serve",
    "pydicom": "volumes",
    "nibabel": "volumes",
    "highdicom": "volumes",
    "pylibjpeg": "volumes",
    "mlflow": "track",
    "clearml": "track",
    "pandas": "pandas",
    "ray": "ray",
    "pyarrow": "ray",
}


class MissingExtraError(BrainTumorError):
    """An optional package is not installed; the message names the extra that brings it."""


def missing_extra(error: ModuleNotFoundError) -> MissingExtraError:
    """A one-line error for an import that failed: which package, and how to install it.

    Example:
        >>> str(missing_extra(ModuleNotFoundError("No module named 'nibabel'", name="nibabel")))
        "this needs the Python package nibabel: pip install 'braintumor[volumes]'"
    """
    package = (error.name or "").split(".")[0] or str(error)
    extra = EXTRA_OF_MODULE.get(package, "all")
    return MissingExtraError(f"this needs the Python package {package}: pip install 'braintumor[{extra}]'")
