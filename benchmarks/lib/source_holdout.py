"""Source hold-out: a validation proxy for Testing's shift, built from Training only, and probes judged on it.

Every Training glioma is a 512x512 slice from one source (dim, low-contrast post-contrast T1), while most
Training meningiomas, nearly all no-tumour slices and most Testing images come from other sources (other sizes,
brighter, other sequences). A model can therefore learn "this source's look means glioma", and Testing's gliomas,
which mostly come from the other sources, get called meningioma. The proxy re-creates that situation inside
Training: for a class that Training has from both kinds of source (:data:`HELD_OUT_CLASSES`), its images from the
other sources are held out, the probe is trained on the rest, and the held-out images' recall says whether the
model recognises a class in a source it only saw for other classes. The image's source is read from its file
header (512x512 or not), never from Testing.

A variant is ``BACKBONE:SIZE:INTENSITY[:styleB|POOLpool|multilevel][:swapV][:augV][:debiasK]`` (head-cropped
slices, see :class:`SourceVariant`). For each, frozen backbone features are computed once (and kept in a cache
folder when one is given), a logistic regression's C is chosen by the usual stratified validation split's log
loss, and :func:`evaluate_variant` reports validation, the hold-out recalls and Testing (after the fact only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from braintumor.classes import CLASS_NAMES
from braintumor.config import AugmentConfig
from braintumor.data.dataset import ImageSet, stratified_split
from braintumor.data.preprocessing import Preprocessing
from braintumor.models.pretrained import create_backbone

from .features import (
    augmented_views,
    load_split,
    multilevel_features,
    pooled_features,
    probe_preprocessing,
    style_free_features,
    style_swapped_views,
)
from .probes import (
    SPLIT_SEED,
    VAL_FRACTION,
    Probe,
    choose_c,
    fit_probe,
    scores_on_testing,
)

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
HELD_OUT_CLASSES = ("meningioma", "pituitary")
# Every Training glioma is a 512x512 slice of the main source; the other sources' slices have other sizes.
MAIN_SOURCE_SIDE = 512
# The block after which a style swap replaces the style: early, where style is mostly brightness and contrast.
SWAP_BLOCK = 1
# A fixed style is the average over this many Training images (enough for channel averages).
STYLE_FIT_IMAGES = 512
FEATURE_KEYS = ("features", "test_features", "labels", "test_labels", "main_source")

# Strong intensity and framing augmentation: what the sources' looks differ by (gamma, contrast, equalisation,
# CLAHE, blur, framing), on top of the seed's geometry.
SOURCE_AUGMENT = AugmentConfig(
    rotation_degrees=10,
    zoom=0.1,
    translate=0.05,
    crop_scale=0.7,
    gamma=(0.5, 2.0),
    brightness=0.3,
    contrast=0.4,
    equalize_p=0.25,
    clahe_p=0.25,
    blur_p=0.25,
)


@dataclass(frozen=True)
class SourceVariant:
    """One row of the source hold-out: which features, which extra training views, how many source directions.

    ``styleB`` removes each image's style after ``blocks[B]`` (:func:`~lib.features.
    style_free_features`); ``POOLpool`` pools the last feature map by ``avg``, ``max`` or ``avgmax``;
    ``multilevel`` adds the last three blocks' pooled outputs; ``swapV`` adds V style-swapped views and ``augV``
    V views under :data:`SOURCE_AUGMENT` to the probe's training set; ``debiasK`` removes K source directions.

    Example:
        >>> variant = SourceVariant.parse("tf_efficientnet_lite0:224:window:maxpool:debias2")
        >>> variant.features_name, variant.pool, variant.debias, variant.style_block
        ('tf_efficientnet_lite0:224:window:maxpool', 'max', 2, None)
    """

    name: str
    features_name: str  # the variant without its training views and debiasing: names the features' cache
    backbone: str
    image_size: int
    intensity: str
    style_block: int | None = None
    pool: str = "avg"
    multilevel: bool = False
    swaps: int = 0
    views: int = 0
    debias: int = 0

    @classmethod
    def parse(cls, name: str) -> SourceVariant:
        """Read ``BACKBONE:SIZE:INTENSITY[:styleB|POOLpool|multilevel][:swapV][:augV][:debiasK]``."""
        parts = name.split(":")
        counts = {}
        for prefix in ("debias", "aug", "swap"):  # from the end, in this order
            counts[prefix] = int(parts.pop().removeprefix(prefix)) if parts[-1].startswith(prefix) else 0
        backbone, size, intensity, *extra = parts
        if extra and (counts["aug"] or counts["swap"]):
            # The extra views are plain average-pooled features: they would not match restyled or other pooling.
            raise ValueError(f"variant {name!r}: augV and swapV go only with BACKBONE:SIZE:INTENSITY features")
        style = next((int(part.removeprefix("style")) for part in extra if part.startswith("style")), None)
        return cls(
            name=name,
            features_name=":".join(parts),
            backbone=backbone,
            image_size=int(size),
            intensity=intensity,
            style_block=style,
            pool=next((part.removesuffix("pool") for part in extra if part.endswith("pool")), "avg"),
            multilevel="multilevel" in extra,
            swaps=counts["swap"],
            views=counts["aug"],
            debias=counts["debias"],
        )


def is_main_source(path: Path, side: int = MAIN_SOURCE_SIDE) -> bool:
    """Whether the image file is ``side`` x ``side`` pixels (reads the header only)."""
    with Image.open(path) as image:
        return image.size == (side, side)


def holdout_split(
    labels: np.ndarray, main_source: np.ndarray, train_idx: np.ndarray, label: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training rows without class ``label``'s other-source images, and those held-out images (a mask).

    Args:
        labels: ``[N]`` class indices.
        main_source: ``[N]`` bool, whether each image comes from the main source.
        train_idx: The rows a probe is usually trained on.
        label: The class whose other-source images are held out.

    Example:
        >>> labels, main = np.array([0, 1, 1, 1]), np.array([True, True, False, False])
        >>> keep, held = holdout_split(labels, main, np.array([0, 1, 2]), 1)
        >>> keep.tolist(), held.tolist()
        ([0, 1], [False, False, True, True])
    """
    held = (labels == label) & ~main_source
    return np.setdiff1d(train_idx, np.flatnonzero(held)), held


def source_holdout_recalls(
    features: np.ndarray,
    labels: np.ndarray,
    main_source: np.ndarray,
    train_idx: np.ndarray,
    fit: Callable[[np.ndarray], Probe],
) -> dict[str, Any]:
    """Per held-out class: the recall of its other-source images, what they were called, and how many there are.

    Args:
        features: ``[N, D]``.
        labels: ``[N]`` class indices.
        main_source: ``[N]`` bool.
        train_idx: The rows a probe is usually trained on.
        fit: Training rows to a fitted probe.
    """
    recalls: dict[str, Any] = {}
    for name in HELD_OUT_CLASSES:
        label = CLASS_NAMES.index(name)
        keep, held = holdout_split(labels, main_source, train_idx, label)
        predicted = fit(keep).predict_proba(features[held]).argmax(1)
        recalls[name] = float(np.mean(predicted == label))
        counts = np.bincount(predicted, minlength=len(CLASS_NAMES))
        recalls[f"{name}_predicted_as"] = dict(zip(CLASS_NAMES, counts.tolist(), strict=True))
        recalls[f"{name}_n"] = int(held.sum())
    return recalls


def _cached(path: Path | None, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()``, read from (or written to) the ``.npz`` file ``path`` when one is given."""
    if path is not None and path.is_file():
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    arrays = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
    return arrays


class _TrainingSource:
    """A variant's preprocessing, Training's head-cropped images and its frozen backbone, made on first use."""

    def __init__(self, variant: SourceVariant, data: Path) -> None:
        self.variant, self.data = variant, data

    @cached_property
    def prep(self) -> Preprocessing:
        return probe_preprocessing(self.variant.image_size, "head", self.variant.intensity)

    @cached_property
    def training(self) -> ImageSet:
        return load_split(self.data, "Training", self.prep)

    @cached_property
    def backbone(self) -> torch.nn.Module:
        return create_backbone(self.variant.backbone, pretrained=True, weights=None).eval()

    @cached_property
    def main_source(self) -> np.ndarray:
        return np.array([is_main_source(path) for path in self.training.paths])

    def features(self) -> dict[str, np.ndarray]:
        """The variant's features of Training and Testing, both splits' labels and Training's sources."""
        variant, training = self.variant, self.training
        testing = load_split(self.data, "Testing", self.prep)
        if variant.style_block is not None:
            subset = torch.randperm(len(training), generator=torch.Generator().manual_seed(0))[:STYLE_FIT_IMAGES]
            features, test_features = style_free_features(
                self.backbone,
                variant.style_block,
                training.images[subset],
                [training.images, testing.images],
                self.prep,
                variant.pool,
            )
        elif variant.multilevel:
            features, test_features = (
                multilevel_features(self.backbone, images, self.prep) for images in (training.images, testing.images)
            )
        else:
            features, test_features = (
                pooled_features(self.backbone, images, self.prep, variant.pool)
                for images in (training.images, testing.images)
            )
        values = (features, test_features, training.labels.numpy(), testing.labels.numpy(), self.main_source)
        return dict(zip(FEATURE_KEYS, values, strict=True))

    def swapped_views(self) -> dict[str, np.ndarray]:
        """Training in the other source's style, with donors only from classes the hold-out never holds out.

        So no held-out image lends its style to the probe's training set.
        """
        donor = torch.tensor([CLASS_NAMES[label] not in HELD_OUT_CLASSES for label in self.training.labels.tolist()])
        views = style_swapped_views(
            self.backbone,
            self.training.images,
            self.prep,
            torch.from_numpy(self.main_source),
            donor,
            count=self.variant.swaps,
            block=SWAP_BLOCK,
        )
        return {"views": views}

    def augmented_views(self) -> dict[str, np.ndarray]:
        """Training under :data:`SOURCE_AUGMENT`."""
        views = augmented_views(
            self.backbone, self.training.images, self.prep, SOURCE_AUGMENT, count=self.variant.views
        )
        return {"views": views}


def load_variant(
    variant: SourceVariant, data: Path, cache_dir: Path | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The variant's :data:`FEATURE_KEYS` arrays and its extra training views ``[V, N, D]`` (swapped first).

    Args:
        variant: What to compute.
        data: The data set's root.
        cache_dir: Keeps every array in ``.npz`` files named after the variant; ``None``: compute every time.
    """
    source = _TrainingSource(variant, data)
    stem = variant.features_name.replace(":", "_")

    def cache(suffix: str) -> Path | None:
        return cache_dir / f"{stem}{suffix}.npz" if cache_dir else None

    loaded = _cached(cache(""), source.features)
    extra = []
    if variant.swaps:
        extra.append(_cached(cache(f"_swap{variant.swaps}"), source.swapped_views)["views"])
    if variant.views:
        extra.append(_cached(cache(f"_aug{variant.views}"), source.augmented_views)["views"])
    return loaded, np.concatenate(extra) if extra else None


def evaluate_variant(variant: SourceVariant, data: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """The variant's result row: C chosen on validation, validation scores, hold-out recalls, Testing scores.

    Args:
        variant: What to compute and how to train the probe.
        data: The data set's root.
        cache_dir: Where the features are kept between runs (``None``: nowhere).
    """
    started = time.perf_counter()
    arrays, augmented = load_variant(variant, data, cache_dir)
    features, labels, main_source = arrays["features"], arrays["labels"], arrays["main_source"]
    train_idx, val_idx = stratified_split(torch.from_numpy(labels), VAL_FRACTION, SPLIT_SEED)

    def fit(c: float, index: np.ndarray = train_idx) -> Probe:
        return fit_probe(
            features, labels, c, index, augmented=augmented, debias=variant.debias, main_source=main_source
        )

    choice = choose_c(fit, features, labels, val_idx, C_GRID)
    row: dict[str, Any] = {
        "variant": variant.name,
        "C": choice.c,
        "val_loss": choice.val_loss,
        "val_accuracy": choice.val_accuracy,
    }
    recalls = source_holdout_recalls(features, labels, main_source, train_idx, lambda index: fit(choice.c, index))
    row["source_holdout"] = recalls
    row["source_holdout_mean_recall"] = float(np.mean([recalls[name] for name in HELD_OUT_CLASSES]))
    test_probabilities = choice.probe.predict_proba(arrays["test_features"])
    row.update(scores_on_testing(test_probabilities, arrays["test_labels"], confusion=True))
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row
