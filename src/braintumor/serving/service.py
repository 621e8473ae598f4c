"""The model behind the service: the loaded bundle, its predictor and input guard, Grad-CAM and the model card.

A bundle without an input guard (made before it existed), or an ONNX graph exported before it, is served
with ``out_of_distribution`` null; ``/v1/model`` then says why in ``guard_note``.

The service only reads the bundle: one with ``model.onnx`` is served with onnxruntime, one without it
(made before ONNX-at-training) with PyTorch, and a one-line warning says how to add the graph.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from braintumor.bundle import ONNX_FILE, WEIGHTS_FILE, Bundle, load_bundle
from braintumor.config import Recipe
from braintumor.errors import BrainTumorError
from braintumor.inference.onnx_export import OnnxPredictor, make_predictor
from braintumor.serving.schemas import DISCLAIMER, GuardInfo, InputCheck, ModelRef
from braintumor.serving.settings import ServeSettings
from braintumor.serving.uploads import UploadError

GradcamFunction = Callable[..., tuple[Image.Image, str]]
_log = logging.getLogger(__name__)
# What `braintumor export` needs beyond the core install (the ``serve`` extra).
_EXPORT_MODULES = ("onnx", "onnxruntime", "onnxscript")


class FlaggedInput(Exception):
    """An image the input guard flagged, sent to be explained without ``explain_flagged``: no heat map is drawn."""

    def __init__(self, check: InputCheck) -> None:
        super().__init__(check.flag_reason)
        self.check = check

    def detail(self) -> str:
        return (
            f"no heat map: the input guard flagged this image ({self.check.flag_reason}), so it has no diagnosis "
            "to explain; ask with explain_flagged=true to draw one anyway (not a diagnosis)"
        )


class Outcome(NamedTuple):
    """One image's class probabilities, the input guard's verdict and the milliseconds the model took."""

    probabilities: np.ndarray
    check: InputCheck
    inference_ms: float


def weights_version(bundle_path: Path) -> str:
    """A short content hash of the weights: two bundles with the same version hold the same model."""
    digest = hashlib.blake2b(digest_size=16)
    with (bundle_path / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _gradcam_function() -> tuple[GradcamFunction | None, str]:
    """``braintumor.explain.gradcam_overlay`` when it can be imported, else None and the reason."""
    try:
        module = importlib.import_module("braintumor.explain")
        function = getattr(module, "gradcam_overlay", None)
    except ImportError as error:
        return None, f"the explain stage cannot be imported ({error}); install braintumor[explain]"
    if function is None:
        return None, "this braintumor version has no Grad-CAM (braintumor.explain.gradcam_overlay)"
    return function, ""


def _public_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe without the server's file paths (a local weights file is named, not located)."""
    public = recipe.model_dump(mode="json")
    if recipe.model.weights is not None:
        public["model"]["weights"] = recipe.model.weights.name
    return public


def missing_onnx_note(bundle_path: Path) -> str | None:
    """One line saying that ``bundle_path`` has no ONNX graph and how to add one; None when it has one."""
    if (bundle_path / ONNX_FILE).is_file():
        return None
    how = f"add it with `braintumor export {bundle_path} --onnx`"
    missing = [name for name in _EXPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        how += f" after `pip install 'braintumor[serve]'` (missing: {', '.join(missing)})"
    return (
        f"{bundle_path} has no {ONNX_FILE}, so it is served with PyTorch (slower than onnxruntime); "
        f"the service never writes into the bundle: {how}"
    )


class ModelService:
    """The loaded bundle, its predictor and what the endpoints report about it."""

    def __init__(self, bundle_path: Path | str, settings: ServeSettings) -> None:
        self.settings = settings
        self.bundle: Bundle = load_bundle(bundle_path)
        # One thread per model run and as many runs as cores: requests proceed side by side on their own
        # core, which gave more requests/s than two threads per run (docs/serve.md).
        self.predictor = make_predictor(self.bundle, settings.backend, threads=settings.threads or 1)
        backend = "onnxruntime" if isinstance(self.predictor, OnnxPredictor) else "pytorch"
        # The bundle is only read: one from before ONNX-at-training is served with PyTorch, and the note says so.
        self.onnx_note = missing_onnx_note(self.bundle.path) if settings.backend == "auto" else None
        if self.onnx_note is not None:
            _log.warning("%s", self.onnx_note)
        self.ref = ModelRef(name=self.bundle.name, version=weights_version(self.bundle.path), backend=backend)
        # The predictor reads and checks the bundle's calibration (temperature, refer threshold).
        self.temperature = self.predictor.temperature if self.bundle.config.extras.temperature is not None else None
        self.refer_threshold = self.predictor.refer_threshold
        # One PyTorch model serves Grad-CAM (hooks, gradients) and, without ONNX, predictions:
        # concurrent use would mix one request's activations into another's explanation.
        self.torch_lock = threading.Lock()
        # More simultaneous model runs than cores only adds context switches and memory.
        self.inference_slots = threading.BoundedSemaphore(settings.concurrency or max(1, os.cpu_count() or 1))
        self.gradcam, self.gradcam_missing_reason = _gradcam_function()

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    @property
    def guard_available(self) -> bool:
        """Whether uploads are checked by the input guard (with the backend in use)."""
        return self.predictor.guard is not None

    def guard_note(self) -> str | None:
        """Why uploads are not checked by an input guard, in plain words; None when they are."""
        if self.guard_available:
            return None
        if self.bundle.guard is not None:  # the bundle has one, the ONNX graph cannot feed it
            return (
                "model.onnx was exported before the input guard, so inputs are not checked: export it again with "
                "`braintumor export BUNDLE --onnx`"
            )
        return (
            "this bundle has no input guard (it was made before the guard existed), so inputs are not checked: "
            "fit one with `braintumor guard BUNDLE`"
        )

    def predict(self, image: Image.Image) -> Outcome:
        """Class probabilities for one image, the input guard's verdict and the milliseconds the model took."""
        started = time.perf_counter()
        if isinstance(self.predictor, OnnxPredictor):
            with self.inference_slots:
                probabilities, verdicts = self.predictor.predict_images_checked([image])
        else:
            with self.torch_lock:
                probabilities, verdicts = self.predictor.predict_images_checked([image])
        if verdicts is None:
            check = InputCheck()
        else:
            check = InputCheck.from_score(float(verdicts.ood_score[0]), verdicts.flag_reason(0))
        return Outcome(probabilities[0], check, (time.perf_counter() - started) * 1000.0)

    def require_gradcam(self) -> GradcamFunction:
        """The Grad-CAM function, or the 501 that says why this server has none."""
        if self.gradcam is None:
            raise UploadError(
                501, "explain_unavailable", f"explanations are not available: {self.gradcam_missing_reason}"
            )
        return self.gradcam

    def explain(
        self, image: Image.Image, target: str | None, method: str, *, explain_flagged: bool = False
    ) -> tuple[bytes, str, InputCheck]:
        """A Grad-CAM overlay as PNG bytes, the class it explains and the input guard's verdict on the image.

        A flagged image raises :class:`FlaggedInput` unless ``explain_flagged`` (its overlay is then not a diagnosis).
        """
        gradcam = self.require_gradcam()
        check = self.predict(image).check if self.guard_available else InputCheck()
        if check.flagged and not explain_flagged:
            raise FlaggedInput(check)
        try:
            with self.torch_lock:
                overlay, explained = gradcam(self.bundle, image, target=target, method=method)
        except (BrainTumorError, ValueError) as error:
            raise UploadError(422, "cannot_explain", f"cannot explain this image: {error}") from None
        buffer = io.BytesIO()
        overlay.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), explained, check

    def guard_info(self) -> GuardInfo | None:
        """The input guard in use (None: uploads are not checked, see :meth:`guard_note`)."""
        guard = self.predictor.guard
        if guard is None:
            return None
        spec = guard.spec
        return GuardInfo(
            detector=spec.detector,
            quantile=spec.quantile,
            validation_flag_rate=spec.validation_flag_rate,
            n_train=spec.n_train,
            n_val=spec.n_val,
            definition=spec.definition,
        )

    def model_card(self) -> dict[str, Any]:
        """What ``/v1/model`` reports: classes, recipe, preprocessing, validation metrics, calibration, guard."""
        config = self.bundle.config
        training = config.training
        guard = self.guard_info()
        return {
            "model": self.ref.model_dump(),
            "class_names": self.bundle.class_names,
            "recipe": _public_recipe(config.recipe),
            "preprocessing": config.preprocessing.model_dump(mode="json"),
            # Validation-split numbers only: the official Testing split is for reports, never for the model.
            "metrics": {"validation": training.val_metrics or None},
            "training": training.model_dump(include={"n_train", "n_val", "epochs_run", "best_epoch"}),
            "temperature": self.temperature,
            "refer_threshold": self.refer_threshold,
            "created_utc": config.created_utc,
            "versions": config.versions,
            "explain_available": self.gradcam is not None,
            "guard": None if guard is None else guard.model_dump(),
            "guard_note": self.guard_note(),
            "disclaimer": DISCLAIMER,
        }

    # Volumes (/v1/predict/volume): the same predictor and locks as single images, one batch per volume.

    def predict_volume(self, volume: Any, rule: Any = None) -> Any:
        """Every slice of a decoded volume and the study finding, as a ``VolumeResult``."""
        from braintumor.inference.volume import predict_volume

        if isinstance(self.predictor, OnnxPredictor):
            with self.inference_slots:
                return predict_volume(self.predictor, volume, rule)
        with self.torch_lock:
            return predict_volume(self.predictor, volume, rule)

    def peak_image(self, result: Any) -> tuple[bytes | None, str | None]:
        """PNG bytes of the peak slice, with the Grad-CAM of the finding's class when explanations are available."""
        peak = result.study.peak_slice
        if peak is None:
            return None, None
        image = result.volume.slices[peak]
        kind = "plain"
        if self.gradcam is not None:
            target = result.study.finding if result.study.finding in self.class_names else None
            try:
                with self.torch_lock:
                    image, _ = self.gradcam(self.bundle, image, target=target, method="gradcam")
                kind = "gradcam"
            except (BrainTumorError, ValueError):
                kind = "plain"  # the slice itself still shows where the peak is
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue(), kind
