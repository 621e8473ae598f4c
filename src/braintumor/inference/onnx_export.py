"""ONNX export of a bundle's network, a parity check against PyTorch, and an onnxruntime predictor.

The exported graph takes what :class:`~braintumor.inference.predictor.Predictor` feeds its
transform, uint8 images ``[N, 3, S, S]`` (``N`` is a dynamic axis), and returns logits: the cast to
float and the bundle's mean/std normalisation are part of the graph, so a client of the ONNX file
needs no Python preprocessing beyond the resize. The bundle's temperature is applied outside the
graph, in both backends alike, so recalibrating a bundle never needs a new export.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model, resolve_preprocessing
    >>> from braintumor.bundle import load_bundle, save_bundle
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe)
    >>> folder = save_bundle(tempfile.mkdtemp() + "/b", model, recipe, resolve_preprocessing(recipe, model))
    >>> result = export_onnx(load_bundle(folder))
    >>> result.max_abs_diff <= PARITY_TOLERANCE
    True
    >>> OnnxPredictor(load_bundle(folder)).predict_images([Image.new("RGB", (50, 40))]).shape
    (1, 4)
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from braintumor.bundle import ONNX_FILE, Bundle
from braintumor.data.preprocessing import Preprocessing, resize_to_uint8_tensor
from braintumor.errors import BrainTumorError, BundleError
from braintumor.inference.defaults import DEFAULT_OPSET
from braintumor.inference.predictor import Predictor
from braintumor.inference.tta import tta_views

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Largest allowed max |p_onnx - p_torch| over the parity samples (probabilities, after temperature).
PARITY_TOLERANCE = 1e-4


class OnnxExportError(BrainTumorError):
    """The export failed, or the exported graph does not reproduce the PyTorch probabilities."""


class _Uint8Network(nn.Module):
    """uint8 pixels in, logits out: the bundle's normalisation followed by its network."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network = network
        # Folding /255 into mean and std keeps the graph at one Sub and one Div per pixel.
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images.to(torch.float32) - self.mean) / self.std)


@dataclass(frozen=True)
class OnnxExportResult:
    """Where the graph went and how closely it reproduces PyTorch."""

    path: Path
    max_abs_diff: float
    samples: int
    opset: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE


def parity_samples(image_size: int, count: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 images for the parity check: random noise, black, white and smooth gradients."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
    ramp = torch.linspace(0, 255, image_size).round().to(torch.uint8)
    fixed = [
        torch.zeros(3, image_size, image_size, dtype=torch.uint8),
        torch.full((3, image_size, image_size), 255, dtype=torch.uint8),
        ramp.view(1, 1, -1).expand(3, image_size, image_size),
        ramp.view(1, -1, 1).expand(3, image_size, image_size),
    ]
    for index, image in enumerate(fixed[: max(0, count - 1)]):
        images[index + 1] = image
    return images


def _run_exporter(wrapper: nn.Module, example: torch.Tensor, destination: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter reports each step on stdout and warns about internals; none of it is for the user.
    quiet_logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch._export", "torch.export")]
    levels = [logger.level for logger in quiet_logs]
    try:
        for logger in quiet_logs:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(destination),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        for logger, level in zip(quiet_logs, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    bundle: Bundle,
    *,
    out: Path | str | None = None,
    opset: int = DEFAULT_OPSET,
    samples: int = 8,
    check: bool = True,
) -> OnnxExportResult:
    """Export ``bundle``'s network to ``out`` (default ``<bundle>/model.onnx``) and check parity.

    The file is written next to its destination and renamed into place only when the parity
    check passes, so a bundle never holds a graph that disagrees with its weights.
    """
    destination = Path(out) if out is not None else bundle.path / ONNX_FILE
    destination.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Uint8Network(bundle.model, bundle.preprocessing).eval()
    size = bundle.preprocessing.image_size
    inputs = parity_samples(size, samples)
    handle, staging_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    staging = Path(staging_name)
    try:
        try:
            _run_exporter(wrapper, inputs[:2], staging, opset)
        except Exception as error:  # the exporter raises many types; the user needs one line
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise OnnxExportError(f"ONNX export of {bundle.path} failed: {first_line[:300]}") from None
        max_abs_diff = float("nan")
        if check:
            reference = Predictor(bundle).predict_uint8(inputs)
            exported = OnnxPredictor(bundle, onnx_path=staging).predict_uint8(inputs)
            max_abs_diff = float(np.abs(reference - exported).max())
            if not max_abs_diff <= PARITY_TOLERANCE:
                raise OnnxExportError(
                    f"ONNX graph for {bundle.path} disagrees with PyTorch: max probability difference "
                    f"{max_abs_diff:.2e} > {PARITY_TOLERANCE:.0e}; the graph was not written"
                )
        staging.replace(destination)
    finally:
        staging.unlink(missing_ok=True)
    return OnnxExportResult(destination, max_abs_diff, len(inputs), opset)


def session_options(threads: int | None = None, *, spin: bool = False) -> object:
    """onnxruntime options for a small CPU machine: one intra-op pool sized to the cores, no inter-op pool.

    ``spin=False`` lets idle pool threads sleep instead of busy-waiting for the next operator: on a
    2-core machine shared with other work, spinning threads steal the cores the model needs
    (``benchmarks/inference_speed.py --spin`` compares; numbers in ``docs/serving.md``).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # A CNN is one chain of operators: parallelism inside each op pays, between ops it only competes.
    options.intra_op_num_threads = threads or max(1, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3
    return options


class OnnxPredictor(Predictor):
    """:class:`Predictor` whose network runs in onnxruntime; everything else (resize, labels) is shared.

    Args:
        bundle: a loaded bundle; its ``model.onnx`` is used unless ``onnx_path`` names another file.
        onnx_path: an exported graph (see :func:`export_onnx`).
        threads: onnxruntime intra-op threads (default: the number of CPU cores).
        spin: let idle onnxruntime threads busy-wait (lower latency on an otherwise idle machine).
        batch_size, tta: as for :class:`Predictor` (test-time views are run through the graph too).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        *,
        onnx_path: Path | str | None = None,
        threads: int | None = None,
        spin: bool = False,
        batch_size: int = 32,
        tta: bool = False,
    ) -> None:
        super().__init__(bundle, batch_size=batch_size, tta=tta)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("ONNX inference needs onnxruntime: pip install 'braintumor[serve]'") from None
        self.onnx_path = Path(onnx_path) if onnx_path is not None else bundle.path / ONNX_FILE
        if not self.onnx_path.is_file():
            raise BundleError(f"{self.onnx_path} does not exist: run `braintumor export {bundle.path} --onnx`")
        try:
            self.session = ort.InferenceSession(
                str(self.onnx_path),
                sess_options=session_options(threads, spin=spin),
                providers=["CPUExecutionProvider"],
            )
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{self.onnx_path} is not a usable ONNX model: {error}") from None
        shape = self.session.get_inputs()[0].shape
        expected = bundle.preprocessing.image_size
        if len(shape) != 4 or shape[2:] != [expected, expected]:
            raise BundleError(
                f"{self.onnx_path} expects input shape {shape}, but the bundle's images are {expected}x{expected}; "
                "export it again"
            )

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Probabilities for decoded PIL images of any size (resized as :class:`Predictor` does)."""
        if not images:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        # numpy, not torch.stack: torch copies even one small image with its thread pool, which costs
        # ~15 ms on a busy 2-core machine; onnxruntime needs a numpy array anyway.
        prep = self.bundle.preprocessing
        return self.predict_uint8(np.stack([resize_to_uint8_tensor(image, prep).numpy() for image in images]))

    def predict_logits_uint8(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw logits ``[N, C]`` (no temperature) for uint8 images ``[N, 3, S, S]`` at the model's size.

        The temperature and the softmax are applied by :meth:`Predictor.predict_uint8`, as for PyTorch.
        """
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        array = np.ascontiguousarray(array, dtype=np.uint8)
        outputs = []
        for start in range(0, len(array), self.batch_size):
            batch = array[start : start + self.batch_size]
            views = [view.numpy() for view in tta_views(torch.from_numpy(batch))] if self.tta else [batch]
            runs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(view)})[0] for view in views]
            outputs.append(np.mean(runs, axis=0, dtype=np.float32) if len(runs) > 1 else runs[0])
        if not outputs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)


def make_predictor(bundle: Bundle, backend: str = "auto", *, threads: int | None = None) -> Predictor:
    """``onnx`` when asked, or for ``auto`` when the bundle has ``model.onnx``; PyTorch otherwise."""
    if backend not in {"auto", "onnx", "torch"}:
        raise BrainTumorError(f"unknown inference backend {backend!r}: use auto, onnx or torch")
    if backend == "onnx" or (backend == "auto" and (bundle.path / ONNX_FILE).is_file()):
        return OnnxPredictor(bundle, threads=threads)
    return Predictor(bundle)
