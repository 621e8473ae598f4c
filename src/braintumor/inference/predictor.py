"""Batch inference on files, folders or decoded images with a loaded bundle.

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
    >>> predictor = Predictor(load_bundle(folder))
    >>> probabilities = predictor.predict_images([Image.new("RGB", (50, 40))])
    >>> probabilities.shape
    (1, 4)
    >>> Predictor(load_bundle(folder), tta=True).predict_images([Image.new("RGB", (50, 40))]).sum().round(4)
    np.float32(1.0)
"""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from braintumor.bundle import Bundle
from braintumor.data.dicom import HEADER_FLAG_KEY
from braintumor.data.images import SkippedFile, load_image_rgb
from braintumor.data.preprocessing import eval_transform, resize_to_uint8_tensor
from braintumor.errors import BrainTumorError, ImageDecodeError
from braintumor.guard import GuardInputs, GuardScores
from braintumor.guard.evidence import image_evidence
from braintumor.guard.reasons import UNEXPLAINED, FlagReason
from braintumor.inference.tta import tta_views
from braintumor.models.fusion import fold_batchnorm
from braintumor.runtime import (
    INFERENCE_BATCH_SIZE,
    autocast,
    channels_last_batch,
    one_thread,
    resolve_precision,
    to_channels_last,
    tune_cpu_runtime,
)

if TYPE_CHECKING:
    # Only a type here: the data set module imports scikit-learn, which a served prediction does not need.
    from braintumor.data.dataset import ImageSet

# What a prediction below the bundle's confidence threshold (selective prediction) tells the user.
REFER_MESSAGE = "refer to a radiologist"
# What a prediction the input guard flags tells the user instead of a diagnosis.
OOD_MESSAGE = "unlike the training images: no diagnosis"
# The reason of a flagged image when the caller passes no reason (the guard's own reasons are more specific).
UNEXPLAINED_FLAG = UNEXPLAINED
# The reason code of an image whose DICOM header names another body region than the head.
HEADER_FLAG_CODE = "dicom_header"
NO_GUARD_MESSAGE = (
    "guard: none (this bundle was trained before the input guard; add one with `braintumor guard BUNDLE --data ROOT`)"
)


@dataclass(frozen=True)
class Prediction:
    """One image's predicted class and the probability of every class."""

    source: str
    class_name: str
    confidence: float
    probabilities: dict[str, float]
    # True: confidence below the bundle's refer_threshold; None: the bundle has no threshold.
    referred: bool | None = None
    # True: the input guard flagged it as unlike the Training images; None: the bundle has no guard.
    out_of_distribution: bool | None = None
    ood_score: float | None = None
    # Why the input guard flagged it (braintumor.guard.reasons), in words and as a code; None when not flagged.
    flag_reason: str | None = None
    flag_code: str | None = None


@dataclass(frozen=True)
class GuardVerdicts:
    """The input guard's verdict on a batch: ``ood_score`` ``[N]`` (flagged above 1) and, per image, why it was
    flagged (a :class:`~braintumor.guard.reasons.FlagReason`; None where it was not).

    Example:
        >>> from braintumor.guard.reasons import COLOUR
        >>> verdicts = GuardVerdicts(np.array([0.2, 7.5], dtype=np.float32), (None, COLOUR))
        >>> verdicts.flag_reason(1), verdicts.flag_reason(0)
        ('not an MRI slice: a colour image', None)
    """

    ood_score: np.ndarray
    reasons: tuple[FlagReason | None, ...]

    @classmethod
    def from_scores(cls, parts: Sequence[GuardScores], count: int = 0) -> GuardVerdicts:
        """The verdicts of consecutive batches' :class:`~braintumor.guard.GuardScores` (``count`` 0: no batch)."""
        if not parts:
            return cls(np.zeros(count, dtype=np.float32), (None,) * count)
        scores = torch.cat([part.ood_score for part in parts]).numpy().astype(np.float32, copy=False)
        return cls(scores, tuple(reason for part in parts for reason in part.reasons))

    def flag_reason(self, index: int) -> str | None:
        """The words of image ``index``'s reason (None when it was not flagged)."""
        reason = self.reasons[index]
        return None if reason is None else reason.text

    def texts(self) -> list[str | None]:
        """Every image's reason in words (None where it was not flagged)."""
        return [None if reason is None else reason.text for reason in self.reasons]

    def flagged(self, index: int) -> bool:
        """Whether image ``index`` is flagged: by its score, or by a reason of its own (its DICOM header)."""
        return bool(self.ood_score[index] > 1.0) or self.reasons[index] is not None


def with_header_flags(verdicts: GuardVerdicts | None, images: Sequence[Image.Image]) -> GuardVerdicts | None:
    """``verdicts`` with the images whose DICOM header names another body region flagged for that reason.

    The header gate (:mod:`braintumor.data.dicom_header`) leaves its reason in ``image.info["header_flag"]``;
    such an image gets no diagnosis even when its pixels look like the training slices (and even without a guard).
    """
    return with_header_flag_texts(verdicts, [image.info.get(HEADER_FLAG_KEY) for image in images])


def with_header_flag_texts(verdicts: GuardVerdicts | None, flags: Sequence[str | None]) -> GuardVerdicts | None:
    """:func:`with_header_flags` for images already turned into pixels: ``flags`` holds each one's header reason
    (None where its header flagged nothing), as the decoded image carried it in ``info["header_flag"]``."""
    if not any(flags):
        return verdicts
    base = verdicts or GuardVerdicts(np.zeros(len(flags), dtype=np.float32), (None,) * len(flags))
    reasons = tuple(
        FlagReason(HEADER_FLAG_CODE, f"its DICOM header: {flag}") if flag else reason
        for flag, reason in zip(flags, base.reasons, strict=True)
    )
    return GuardVerdicts(base.ood_score, reasons)


def expand_inputs(inputs: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders expanded recursively to their non-hidden files (sorted)."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.exists():
            paths.append(path)
        else:
            raise BrainTumorError(f"input {path} does not exist")
    return paths


def softmax_with_temperature(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / temperature)`` over the classes of ``[N, C]`` logits, staying a tensor.

    The formula behind :func:`probabilities_from_logits`, for callers that keep working in torch
    (the explanations and their sanity checks).

    Example:
        >>> logits = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
        >>> softmax_with_temperature(logits, temperature=2.0).round(decimals=4).tolist()
        [[0.2689, 0.7311]]
    """
    return torch.softmax(logits / temperature, dim=1)


def probabilities_from_logits(logits: np.ndarray | torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` in float32, the one place every predictor turns logits into probabilities.

    Example:
        >>> probabilities_from_logits(np.array([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    tensor = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    return softmax_with_temperature(tensor, temperature).numpy()


def _penultimate_and_logits(network: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Everything a prediction reads from the network (the guard's features too), as one tensor."""
    both = getattr(network, "penultimate_and_logits", None)
    return torch.cat([part.flatten(1) for part in both(inputs)], dim=1) if callable(both) else network(inputs)


class Predictor:
    """Runs a bundle's model on images, in batches, with the bundle's own preprocessing.

    Args:
        bundle: a loaded bundle; its ``extras`` may hold a ``temperature`` (probabilities are
            ``softmax(logits / T)``) and a ``refer_threshold`` (see ``braintumor calibrate``).
        batch_size: images per forward pass (:data:`braintumor.runtime.INFERENCE_BATCH_SIZE`: larger batches
            cost memory and run no faster on a CPU).
        tta: test-time augmentation: average the logits of the views of :func:`~braintumor.inference.tta.tta_views`
            (6 forward passes per image). Logits rather than probabilities are averaged so that the
            temperature fitted on logits keeps its meaning.
        precision: ``auto`` (bf16 autocast where the CPU runs bf16 natively), ``bf16-mixed`` or ``32``
            (:func:`braintumor.runtime.resolve_precision`); default: the precision the bundle was trained at.
            Convolutional networks also run in NHWC order.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        batch_size: int = INFERENCE_BATCH_SIZE,
        tta: bool = False,
        precision: str | None = None,
    ) -> None:
        tune_cpu_runtime()
        self.bundle = bundle
        self.batch_size = batch_size
        self.tta = tta
        self.precision = resolve_precision(precision) if precision else bundle.recipe.precision()
        self.transform = eval_transform(bundle.preprocessing)
        self.temperature = bundle.config.extras.temperature or 1.0
        self.refer_threshold = bundle.config.extras.refer_threshold
        self.guard = bundle.guard

    @property
    def class_names(self) -> list[str]:
        return self.bundle.class_names

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        """The network this predictor runs, in NHWC order, built on first use: the bundle's, with BatchNorm
        folded into its convolutions (:func:`~braintumor.models.fusion.fold_batchnorm`; checked against the
        bundle's network on a random batch, float rounding apart). The bundle's own network is left as it is
        (explanations and export use it). Only in fp32: under bf16 autocast the folded weights round differently
        from the weights the network was validated with, so a bf16 bundle runs unfolded."""
        network = self.bundle.model
        with one_thread():
            to_channels_last(network)
        if self.precision != "32-true":
            return network
        size = self.bundle.preprocessing.image_size
        generator = torch.Generator().manual_seed(0)
        example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=generator)
        return fold_batchnorm(network, self._network_input(example), forward=_penultimate_and_logits).model

    def _network_input(self, uint8_batch: torch.Tensor) -> torch.Tensor:
        return channels_last_batch(self.transform(uint8_batch))

    @torch.inference_mode()
    def _batch_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, GuardScores | None]:
        """Logits (TTA views averaged) and, with a guard, each image's guard scores (from its clean view)."""
        views = tta_views(batch) if self.tta else [batch]
        model, network_input = self.model, self._network_input
        with autocast(self.precision):
            if self.guard is None:
                return torch.stack([model(network_input(view)).float() for view in views]).mean(dim=0), None
            # views[0] is the unchanged image: the guard judges what was sent, not an augmented copy.
            penultimate, clean_logits = model.penultimate_and_logits(network_input(views[0]))
            others = [model(network_input(view)).float() for view in views[1:]]
        logits = torch.stack([clean_logits.float(), *others]).mean(dim=0)
        inputs = GuardInputs(penultimate.float(), clean_logits.float(), image_evidence(batch))
        return logits.float(), self.guard.score(inputs)

    def run_uint8_checked(self, images: torch.Tensor | ImageSet) -> tuple[np.ndarray, GuardVerdicts | None]:
        """Raw logits ``[N, C]`` (no temperature) and the guard's :class:`GuardVerdicts` (None without a guard)
        of uint8 images ``[N, 3, S, S]`` at the model's size, or of an image set (a streaming one is decoded
        batch by batch while the network runs, never held whole)."""
        if isinstance(images, torch.Tensor):
            batches: Iterable[torch.Tensor] = (
                images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size)
            )
        else:
            batches = images.batches(self.batch_size)
        outputs = [self._batch_outputs(batch) for batch in batches]
        if not outputs:
            empty = np.zeros((0, len(self.class_names)), dtype=np.float32)
            return empty, (None if self.guard is None else GuardVerdicts.from_scores([]))
        logits = torch.cat([z for z, _ in outputs]).numpy()
        parts = [part for _, part in outputs if part is not None]
        return logits, (None if self.guard is None else GuardVerdicts.from_scores(parts))

    def run_uint8(self, images: torch.Tensor | ImageSet) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits ``[N, C]`` (no temperature) and ``ood_score`` ``[N]`` (None without a guard) of uint8
        images ``[N, 3, S, S]`` at the model's size."""
        logits, verdicts = self.run_uint8_checked(images)
        return logits, None if verdicts is None else verdicts.ood_score

    def predict_logits_uint8(self, images: torch.Tensor | ImageSet) -> np.ndarray:
        """Raw logits ``[N, C]`` (no temperature) for uint8 images ``[N, 3, S, S]`` at the model's size."""
        return self.run_uint8(images)[0]

    def predict_uint8(self, images: torch.Tensor | ImageSet) -> np.ndarray:
        """Probabilities ``[N, C]`` for uint8 images ``[N, 3, S, S]`` already at the model's size."""
        return probabilities_from_logits(self.predict_logits_uint8(images), self.temperature)

    def predict_uint8_guarded(self, images: torch.Tensor | ImageSet) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and ``ood_score`` (None without a guard) in one pass."""
        logits, scores = self.run_uint8(images)
        return probabilities_from_logits(logits, self.temperature), scores

    def predict_uint8_checked(self, images: torch.Tensor | ImageSet) -> tuple[np.ndarray, GuardVerdicts | None]:
        """Probabilities and the guard's :class:`GuardVerdicts` (scores and reasons; None without a guard)."""
        logits, verdicts = self.run_uint8_checked(images)
        return probabilities_from_logits(logits, self.temperature), verdicts

    def referred(self, probabilities: np.ndarray) -> np.ndarray | None:
        """Per image, whether its top probability is below the bundle's ``refer_threshold`` (None without one)."""
        if self.refer_threshold is None:
            return None
        return np.asarray(probabilities).max(axis=1) < self.refer_threshold

    def _uint8_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        size = self.bundle.preprocessing.image_size
        if not images:
            return torch.zeros((0, 3, size, size), dtype=torch.uint8)
        return torch.stack([resize_to_uint8_tensor(image, self.bundle.preprocessing) for image in images])

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Probabilities for decoded PIL images of any size."""
        return self.predict_uint8(self._uint8_batch(images))

    def predict_images_guarded(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and ``ood_score`` (None without a guard) for decoded PIL images of any size."""
        return self.predict_uint8_guarded(self._uint8_batch(images))

    def predict_images_checked(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, GuardVerdicts | None]:
        """Probabilities and the guard's :class:`GuardVerdicts` (None without a guard) for decoded PIL images."""
        probabilities, verdicts = self.predict_uint8_checked(self._uint8_batch(images))
        return probabilities, with_header_flags(verdicts, images)

    def to_prediction(
        self,
        source: str,
        probabilities: np.ndarray,
        ood_score: float | None = None,
        flag_reason: FlagReason | None = None,
    ) -> Prediction:
        """One image's :class:`Prediction`. A flagged image (``ood_score`` above 1, or a ``flag_reason`` given, such
        as its DICOM header's) gets ``flag_reason``'s words and code, or :data:`UNEXPLAINED_FLAG` without one."""
        index = int(np.argmax(probabilities))
        confidence = float(probabilities[index])
        flagged = None if ood_score is None else bool(ood_score > 1.0 or flag_reason is not None)
        reason = (flag_reason or UNEXPLAINED_FLAG) if flagged else None
        return Prediction(
            source=source,
            class_name=self.class_names[index],
            confidence=confidence,
            probabilities={name: float(p) for name, p in zip(self.class_names, probabilities, strict=True)},
            referred=None if self.refer_threshold is None else confidence < self.refer_threshold,
            out_of_distribution=flagged,
            ood_score=None if ood_score is None else float(ood_score),
            flag_reason=None if reason is None else reason.text,
            flag_code=None if reason is None else reason.code,
        )

    def to_predictions(
        self, sources: Sequence[str], probabilities: np.ndarray, verdicts: GuardVerdicts | None
    ) -> list[Prediction]:
        """A :class:`Prediction` per source, with each image's guard score and reason (:meth:`predict_images_checked`).

        Example:
            >>> from braintumor.bundle.examples import tiny_bundle
            >>> from braintumor.bundle import load_bundle
            >>> predictor = Predictor(load_bundle(tiny_bundle()))
            >>> images = [Image.new("RGB", (40, 40))]
            >>> [p.source for p in predictor.to_predictions(["a"], *predictor.predict_images_checked(images))]
            ['a']
        """
        return [
            self.to_prediction(
                source,
                row,
                None if verdicts is None else float(verdicts.ood_score[index]),
                None if verdicts is None else verdicts.reasons[index],
            )
            for index, (source, row) in enumerate(zip(sources, probabilities, strict=True))
        ]

    def predict_paths(self, paths: Sequence[Path | str]) -> tuple[list[Prediction], list[SkippedFile]]:
        """Predict every decodable file; undecodable ones are returned as skipped with the reason."""
        predictions: list[Prediction] = []
        skipped: list[SkippedFile] = []
        for start in range(0, len(paths), self.batch_size):
            images, sources = [], []
            for path in paths[start : start + self.batch_size]:
                try:
                    images.append(load_image_rgb(path))
                    sources.append(str(path))
                except ImageDecodeError as error:
                    skipped.append(SkippedFile(str(path), error.reason))
            predictions += self.to_predictions(sources, *self.predict_images_checked(images))
        return predictions, skipped


def write_predictions_json(
    path: Path, bundle: Path, predictor: Predictor, predictions: Sequence[Prediction], skipped: Sequence[SkippedFile]
) -> None:
    """``predict --json``: the bundle, its referral threshold, every prediction and every skipped file."""
    guard = predictor.guard
    payload = {
        "bundle": str(bundle),
        "refer_threshold": predictor.refer_threshold,
        "guard": "none" if guard is None else guard.spec.model_dump(mode="json"),
        "predictions": [asdict(p) for p in predictions],
        "skipped": [asdict(s) for s in skipped],
    }
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")


def write_predictions_csv(path: Path, predictor: Predictor, predictions: Sequence[Prediction]) -> None:
    """``predict --csv``: one row per image, a probability column per class, ``referred`` when calibrated and
    ``out_of_distribution``/``ood_score`` when the bundle has an input guard."""
    with_referral, with_guard = predictor.refer_threshold is not None, predictor.guard is not None
    names = predictor.class_names
    header = ["path", "class", "confidence", *[f"p_{n}" for n in names]]
    header += ["referred"] * with_referral + ["out_of_distribution", "ood_score"] * with_guard
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for p in predictions:
            row = [p.source, p.class_name, f"{p.confidence:.6f}", *[f"{p.probabilities[n]:.6f}" for n in names]]
            row += [int(bool(p.referred))] if with_referral else []
            row += [int(bool(p.out_of_distribution)), f"{p.ood_score:.4f}"] if with_guard else []
            writer.writerow(row)
