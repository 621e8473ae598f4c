"""ONNX export of a bundle's network, a parity check against PyTorch, and an onnxruntime predictor.

The exported graph takes what :class:`~braintumor.inference.predictor.Predictor` feeds its
transform, uint8 images ``[N, 3, S, S]`` (``N`` is a dynamic axis), and returns the logits and the
penultimate features (``penultimate_and_logits`` of the network, what the input guard reads): the
cast to float and the bundle's mean/std normalisation are part of the graph, so a client of the ONNX
file needs no Python preprocessing beyond the resize. The bundle's temperature and its input guard
are applied outside the graph, in both backends alike, so recalibrating a bundle or refitting its
guard never needs a new export. Graphs exported before the guard have only the logits: they still
load, without the guard (:attr:`OnnxPredictor.guard_note` says why and how to re-export).

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
    >>> predictor = OnnxPredictor(load_bundle(folder))
    >>> predictor.predict_images([Image.new("RGB", (50, 40))]).shape
    (1, 4)
    >>> predictor.guard is None  # this bundle has no input guard
    True
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
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from braintumor.bundle import ONNX_FILE, Bundle
from braintumor.data.preprocessing import Preprocessing, resize_to_uint8_tensor
from braintumor.errors import BrainTumorError, BundleError
from braintumor.guard import GuardInputs, GuardScores
from braintumor.guard.evidence import image_evidence
from braintumor.inference.defaults import DEFAULT_OPSET
from braintumor.inference.predictor import GuardVerdicts, Predictor, with_header_flags
from braintumor.inference.tta import tta_views
from braintumor.runtime import INFERENCE_BATCH_SIZE

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# The second output: the network's penultimate features, which the input guard scores.
FEATURES_NAME = "features"
# Largest allowed max |p_onnx - p_torch| over the parity samples (probabilities, after temperature).
PARITY_TOLERANCE = 1e-4
# Largest allowed |ood_onnx - ood_torch| / max(1, |ood_torch|): relative for the far-out samples (noise scores
# in the thousands), absolute near the threshold of 1 where the flag is decided.
OOD_PARITY_TOLERANCE = 1e-3

_log = logging.getLogger(__name__)


class OnnxExportError(BrainTumorError):
    """The export failed, or the exported graph does not reproduce the PyTorch probabilities."""


class _Uint8Network(nn.Module):
    """uint8 pixels in; logits and penultimate features out: the bundle's normalisation, then its network.

    A network without ``penultimate_and_logits`` gives the logits only (no input guard can read it).
    """

    def __init__(self, network: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.network = network
        self.with_features = callable(getattr(network, "penultimate_and_logits", None))
        # Folding /255 into mean and std keeps the graph at one Sub and one Div per pixel.
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME, FEATURES_NAME] if self.with_features else [OUTPUT_NAME]

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        normalised = (images.to(torch.float32) - self.mean) / self.std
        if not self.with_features:
            return self.network(normalised)
        features, logits = self.network.penultimate_and_logits(normalised)
        return logits, features


@dataclass(frozen=True)
class OnnxExportResult:
    """Where the graph went and how closely it reproduces PyTorch.

    ``max_ood_diff`` is the largest relative ``ood_score`` difference (see :data:`OOD_PARITY_TOLERANCE`);
    None when the bundle has no input guard or the check was skipped.
    """

    path: Path
    max_abs_diff: float
    samples: int
    opset: int
    max_ood_diff: float | None = None

    @property
    def passed(self) -> bool:
        guard_ok = self.max_ood_diff is None or self.max_ood_diff <= OOD_PARITY_TOLERANCE
        return self.max_abs_diff <= PARITY_TOLERANCE and guard_ok


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


def _run_exporter(
    wrapper: nn.Module, example: torch.Tensor, destination: Path, opset: int, output_names: Sequence[str]
) -> None:
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
                output_names=list(output_names),
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        for logger, level in zip(quiet_logs, levels, strict=True):
            logger.setLevel(level)


def ood_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """Largest ``|other - reference| / max(1, |reference|)``: absolute near the flag threshold, relative far out.

    Example:
        >>> ood_difference(np.array([0.5, 2000.0]), np.array([0.5001, 2001.0]))
        0.0005
    """
    if len(reference) == 0:
        return 0.0
    scale = np.maximum(1.0, np.abs(reference.astype(np.float64)))
    return round(float((np.abs(other.astype(np.float64) - reference) / scale).max()), 12)


def _check_parity(bundle: Bundle, graph: Path, inputs: torch.Tensor) -> tuple[float, float | None]:
    """Probability (and, with a guard, ``ood_score``) differences of ``graph`` from PyTorch on ``inputs``.

    Raises:
        OnnxExportError: a difference over its tolerance, or a guard the graph cannot feed.
    """
    # The reference is the fp32 network: the graph is fp32, and bf16 would differ by more than the tolerance.
    reference, reference_ood = Predictor(bundle, precision="32").predict_uint8_guarded(inputs)
    onnx_predictor = OnnxPredictor(bundle, onnx_path=graph)
    exported, exported_ood = onnx_predictor.predict_uint8_guarded(inputs)
    max_abs_diff = float(np.abs(reference - exported).max())
    if not max_abs_diff <= PARITY_TOLERANCE:
        raise OnnxExportError(
            f"ONNX graph for {bundle.path} disagrees with PyTorch: max probability difference "
            f"{max_abs_diff:.2e} > {PARITY_TOLERANCE:.0e}; the graph was not written"
        )
    if reference_ood is None:
        return max_abs_diff, None
    if exported_ood is None:
        raise OnnxExportError(f"ONNX graph for {bundle.path} cannot feed its input guard: {onnx_predictor.guard_note}")
    max_ood_diff = ood_difference(reference_ood, exported_ood)
    if not max_ood_diff <= OOD_PARITY_TOLERANCE:
        raise OnnxExportError(
            f"ONNX graph for {bundle.path} disagrees with PyTorch on the input guard: max ood_score difference "
            f"{max_ood_diff:.2e} > {OOD_PARITY_TOLERANCE:.0e}; the graph was not written"
        )
    return max_abs_diff, max_ood_diff


def export_onnx(
    bundle: Bundle,
    *,
    out: Path | str | None = None,
    opset: int = DEFAULT_OPSET,
    samples: int = 8,
    check: bool = True,
) -> OnnxExportResult:
    """Export ``bundle``'s network to ``out`` (default ``<bundle>/model.onnx``) and check parity.

    The graph outputs the logits and the penultimate features. The file is written next to its destination
    and renamed into place only when the parity check passes (probabilities and, when the bundle has an input
    guard, ``ood_score``), so a bundle never holds a graph that disagrees with its weights.
    """
    destination = Path(out) if out is not None else bundle.path / ONNX_FILE
    destination.parent.mkdir(parents=True, exist_ok=True)
    # Exported in NCHW order (what onnxruntime's graph optimiser expects); inference converts back when it runs.
    wrapper = _Uint8Network(bundle.model.to(memory_format=torch.contiguous_format), bundle.preprocessing).eval()
    size = bundle.preprocessing.image_size
    inputs = parity_samples(size, samples)
    handle, staging_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    staging = Path(staging_name)
    try:
        try:
            _run_exporter(wrapper, inputs[:2], staging, opset, wrapper.output_names)
        except Exception as error:  # the exporter raises many types; the user needs one line
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise OnnxExportError(f"ONNX export of {bundle.path} failed: {first_line[:300]}") from None
        max_abs_diff, max_ood_diff = float("nan"), None
        if check:
            max_abs_diff, max_ood_diff = _check_parity(bundle, staging, inputs)
        staging.replace(destination)
    finally:
        staging.unlink(missing_ok=True)
    return OnnxExportResult(destination, max_abs_diff, len(inputs), opset, max_ood_diff)


def session_options(threads: int | None = None, *, spin: bool = False) -> object:
    """onnxruntime options for a small CPU machine: one intra-op pool sized to the cores, no inter-op pool.

    ``spin=False`` lets idle pool threads sleep instead of busy-waiting for the next operator: on a
    2-core machine shared with other work, spinning threads steal the cores the model needs
    (``benchmarks/inference_speed.py --spin`` compares; numbers in ``docs/serve.md``).
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


def _open_session(onnx_path: Path, bundle: Bundle, threads: int | None, spin: bool) -> Any:
    """An onnxruntime session on ``onnx_path``, checked against the bundle's image size."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BundleError("ONNX inference needs onnxruntime: pip install 'braintumor[serve]'") from None
    if not onnx_path.is_file():
        raise BundleError(f"{onnx_path} does not exist: run `braintumor export {bundle.path} --onnx`")
    try:
        session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options(threads, spin=spin), providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BundleError(f"{onnx_path} is not a usable ONNX model: {error}") from None
    shape = session.get_inputs()[0].shape
    expected = bundle.preprocessing.image_size
    if len(shape) != 4 or shape[2:] != [expected, expected]:
        raise BundleError(
            f"{onnx_path} expects input shape {shape}, but the bundle's images are {expected}x{expected}; "
            "export it again"
        )
    return session


class OnnxPredictor(Predictor):
    """:class:`Predictor` whose network runs in onnxruntime; everything else (resize, labels, guard) is shared.

    The input guard scores the graph's ``features`` output, its logits and the :func:`image_evidence` of the
    uint8 batch, exactly as :class:`Predictor` does with PyTorch. A graph exported before the guard (logits
    only) still loads: :attr:`guard` is then None and :attr:`guard_note` says to export it again.

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
        batch_size: int = INFERENCE_BATCH_SIZE,
        tta: bool = False,
    ) -> None:
        super().__init__(bundle, batch_size=batch_size, tta=tta)
        self.onnx_path = Path(onnx_path) if onnx_path is not None else bundle.path / ONNX_FILE
        self.session = _open_session(self.onnx_path, bundle, threads, spin)
        self.has_features = FEATURES_NAME in {output.name for output in self.session.get_outputs()}
        # Why a bundle with an input guard is served without it here (None: nothing is missing).
        self.guard_note: str | None = None
        if self.guard is not None and not self.has_features:
            self.guard = None
            self.guard_note = (
                f"{self.onnx_path} was exported before the input guard (it has no '{FEATURES_NAME}' output), so "
                f"inputs are not checked: export it again with `braintumor export {bundle.path} --onnx`"
            )
            _log.warning("%s", self.guard_note)

    def _uint8_array(self, images: Sequence[Image.Image]) -> np.ndarray:
        # numpy, not torch.stack: torch copies even one small image with its thread pool, which costs
        # ~15 ms on a busy 2-core machine; onnxruntime needs a numpy array anyway.
        prep = self.bundle.preprocessing
        if not images:
            return np.zeros((0, 3, prep.image_size, prep.image_size), dtype=np.uint8)
        return np.stack([resize_to_uint8_tensor(image, prep).numpy() for image in images])

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Probabilities for decoded PIL images of any size (resized as :class:`Predictor` does)."""
        return self.predict_uint8(self._uint8_array(images))

    def predict_images_guarded(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and ``ood_score`` (None without a guard) for decoded PIL images of any size."""
        return self.predict_uint8_guarded(self._uint8_array(images))

    def predict_images_checked(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, GuardVerdicts | None]:
        """Probabilities and the guard's :class:`GuardVerdicts` (None without a guard) for decoded PIL images."""
        probabilities, verdicts = self.predict_uint8_checked(self._uint8_array(images))
        return probabilities, with_header_flags(verdicts, images)

    def _run_batch(self, batch: np.ndarray) -> tuple[np.ndarray, GuardScores | None]:
        """Logits (test-time views averaged) and, with a guard, the guard scores of the unchanged images."""
        names = [OUTPUT_NAME, FEATURES_NAME] if self.guard is not None else [OUTPUT_NAME]
        clean = self.session.run(names, {INPUT_NAME: batch})
        logits = clean[0]
        if self.tta:
            # tta_views(...)[0] is the unchanged batch, already run above.
            views = tta_views(torch.from_numpy(batch))[1:]
            runs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(v.numpy())})[0] for v in views]
            logits = np.mean([logits, *runs], axis=0, dtype=np.float32)
        if self.guard is None:
            return logits, None
        features, clean_logits = torch.from_numpy(clean[1]).float(), torch.from_numpy(clean[0]).float()
        inputs = GuardInputs(features, clean_logits, image_evidence(torch.from_numpy(batch)))
        return logits, self.guard.score(inputs)

    def run_uint8_checked(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, GuardVerdicts | None]:
        """Raw logits ``[N, C]`` (no temperature) and the guard's :class:`GuardVerdicts` (None without a guard)
        of uint8 images ``[N, 3, S, S]`` at the model's size.

        The temperature and the softmax are applied by :meth:`Predictor.predict_uint8`, as for PyTorch.
        """
        array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        array = np.ascontiguousarray(array, dtype=np.uint8)
        outputs = [self._run_batch(array[i : i + self.batch_size]) for i in range(0, len(array), self.batch_size)]
        if not outputs:
            empty = np.zeros((0, len(self.class_names)), dtype=np.float32)
            return empty, (None if self.guard is None else GuardVerdicts.from_scores([]))
        logits = np.concatenate([z for z, _ in outputs]).astype(np.float32, copy=False)
        if self.guard is None:
            return logits, None
        return logits, GuardVerdicts.from_scores([part for _, part in outputs if part is not None])


def make_predictor(bundle: Bundle, backend: str = "auto", *, threads: int | None = None) -> Predictor:
    """``onnx`` when asked, or for ``auto`` when the bundle has ``model.onnx``; PyTorch otherwise."""
    if backend not in {"auto", "onnx", "torch"}:
        raise BrainTumorError(f"unknown inference backend {backend!r}: use auto, onnx or torch")
    if backend == "onnx" or (backend == "auto" and (bundle.path / ONNX_FILE).is_file()):
        return OnnxPredictor(bundle, threads=threads)
    return Predictor(bundle)
