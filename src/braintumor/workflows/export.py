"""Every bundle carries its ONNX graph: written after training, ensembling, calibration and adaptation.

onnxruntime answers single-image requests 3-4x faster than eager PyTorch on a small CPU
(``docs/serve.md``), so a bundle should not need a manual ``braintumor export`` before it is served.
:func:`ensure_onnx` exports ``model.onnx`` into the bundle when it is missing (atomically, only after
the parity check passed: :func:`~braintumor.inference.onnx_export.export_onnx`) and, when that is not
possible (onnx not installed, a read-only bundle, an exporter failure), says in one line why and how
to do it by hand, so the caller can go on with PyTorch.

Example:
    >>> from braintumor.bundle.examples import tiny_bundle
    >>> folder = tiny_bundle()
    >>> status = ensure_onnx(folder)
    >>> status.available, status.exported, (folder / "model.onnx").is_file()
    (True, True, True)
    >>> ensure_onnx(folder).exported  # already there: nothing to do
    False
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from braintumor.bundle import ONNX_FILE, Bundle, load_bundle
from braintumor.errors import BrainTumorError

if TYPE_CHECKING:
    from braintumor.inference.onnx_export import OnnxExportResult

# What ONNX export needs beyond the core install (the ``serve`` extra).
_EXPORT_MODULES = ("onnx", "onnxruntime", "onnxscript")


@dataclass(frozen=True)
class OnnxStatus:
    """Whether the bundle has a usable ``model.onnx``, whether it was written just now, and why not."""

    available: bool
    exported: bool
    note: str
    max_abs_diff: float | None = None


def _missing_modules() -> list[str]:
    return [name for name in _EXPORT_MODULES if importlib.util.find_spec(name) is None]


def ensure_onnx(bundle: Bundle | Path | str) -> OnnxStatus:
    """``<bundle>/model.onnx``, exported (with its parity check) when it is missing; never raises for export trouble.

    Returns an :class:`OnnxStatus` whose ``note`` is one line for the person running the job.
    """
    path = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
    if (path / ONNX_FILE).is_file():
        return OnnxStatus(True, False, f"{path / ONNX_FILE} present")
    manual = f"export it with `braintumor export {path} --onnx`"
    missing = _missing_modules()
    if missing:
        return OnnxStatus(
            False,
            False,
            f"no model.onnx: ONNX export needs {', '.join(missing)} ({manual} after `pip install 'braintumor[serve]'`)",
        )
    from braintumor.inference.onnx_export import export_onnx

    try:
        loaded = bundle if isinstance(bundle, Bundle) else load_bundle(path)
        result = export_onnx(loaded)
    except PermissionError:
        return OnnxStatus(
            False,
            False,
            f"no model.onnx: the bundle folder {path} is read-only ({manual} elsewhere with --out, or copy the bundle)",
        )
    except (BrainTumorError, OSError) as error:
        return OnnxStatus(False, False, f"no model.onnx: {error}")
    return OnnxStatus(
        True,
        True,
        f"wrote {result.path} (parity with PyTorch: max |p_onnx - p_torch| = {result.max_abs_diff:.1e})",
        result.max_abs_diff,
    )


def export_bundle_onnx(
    bundle: Bundle | Path | str, out: Path | str | None = None, **settings: object
) -> OnnxExportResult:
    """Export the bundle's network to ONNX (default ``<bundle>/model.onnx``) after the parity check passed.

    ``settings`` are those of :func:`~braintumor.inference.onnx_export.export_onnx` (``opset``, ``samples``).
    Raises :class:`~braintumor.errors.BrainTumorError` when onnx is missing or parity fails.
    """
    from braintumor.inference.onnx_export import export_onnx

    missing = _missing_modules()
    if missing:
        raise BrainTumorError(f"ONNX export needs {', '.join(missing)}: pip install 'braintumor[serve]'")
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    return export_onnx(loaded, out=out, **settings)  # type: ignore[arg-type]
