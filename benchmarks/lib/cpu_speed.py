"""Throughput of the product's CPU paths on real images: training steps, frozen features, evaluation.

Each function runs one path as the product runs it and returns images per second (and what it measured),
so that ``benchmarks/cpu_speed.py`` can run the same functions in a process with the eager fp32 baseline
(``BRAINTUMOR_CPU_TUNING=0`` and precision 32: the code before the fast path) and in one with the
product's defaults, side by side.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from braintumor.bundle import load_bundle
from braintumor.bundle.validation import validation_samples
from braintumor.config import Recipe, load_recipe
from braintumor.data.dataset import ImageSet, ImageTensorDataset, load_images, scan_images
from braintumor.data.layout import Sample, discover_split
from braintumor.data.preprocessing import eval_transform, train_transform
from braintumor.evaluation.evaluate import evaluate_bundle
from braintumor.evaluation.metrics import bootstrap_confidence_intervals
from braintumor.inference.predictor import Predictor
from braintumor.models import create_model, resolve_preprocessing
from braintumor.runtime import (
    INFERENCE_BATCH_SIZE,
    autocast,
    channels_last_batch,
    resolve_precision,
    to_channels_last,
)
from braintumor.training.feature_cache import augmented_view_transform
from braintumor.training.features import extract_features


def spread_samples(data: Path, count: int, split: str = "Training") -> list[Sample]:
    """``count`` files of ``split`` spread evenly over its (class-ordered) list."""
    every = discover_split(data, split)
    return every[:: max(1, len(every) // count)][:count]


def training_throughput(recipe_ref: str, data: Path, images: int, precision: str | None) -> dict[str, Any]:
    """Training images/s of the recipe's whole network: augmented batches, forward, loss, backward, Adam step.

    ``precision`` None is the recipe's own (:meth:`Recipe.precision`). The first batch warms up and is not timed.
    """
    recipe: Recipe = load_recipe(recipe_ref)
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    image_set = load_images(spread_samples(data, images), prep, show_progress=False)
    chosen = resolve_precision(precision) if precision else recipe.precision()
    loader = DataLoader(
        ImageTensorDataset(image_set, train_transform(recipe.augment, prep)),
        batch_size=recipe.data.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    to_channels_last(model.train())
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=recipe.train.learning_rate)
    timed_images, started = 0, 0.0
    for index, (inputs, labels) in enumerate(loader):
        if index == 1:
            started = time.perf_counter()
        with autocast(chosen):
            loss = F.cross_entropy(model(channels_last_batch(inputs)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        timed_images += len(labels) if index >= 1 else 0
    seconds = time.perf_counter() - started
    return {"recipe": recipe.name, "precision": chosen, "images": timed_images, "images_per_s": timed_images / seconds}


def feature_throughput(
    recipe_ref: str, data: Path, images: int, precision: str | None, *, eager: bool = False
) -> dict[str, Any]:
    """Frozen-backbone feature extraction images/s, as the feature cache runs it.

    ``eager`` is the code before the fast path: the transform per image, NCHW order. The images are decoded
    first and not timed (both paths decode alike).
    """
    recipe = load_recipe(recipe_ref)
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    image_set = load_images(spread_samples(data, images), prep, show_progress=False)
    chosen = resolve_precision(precision) if precision else recipe.precision()
    transform = eval_transform(prep)
    run = {
        "show_progress": False,
        "precision": chosen,
        "per_image": eager,
        "channels_last": not eager,
    }
    # One whole batch (extract_features' 64) warms up: a smaller one leaves the first timed batch to fault in
    # the memory of full-size activations, which made Lite0 measure slower than the larger Lite2.
    warm_count = 64
    warm = ImageSet(
        image_set.images[:warm_count],
        image_set.labels[:warm_count],
        image_set.paths[:warm_count],
        image_set.hashes[:warm_count],
        [],
    )
    extract_features(model.backbone, warm, transform, **run)
    started = time.perf_counter()
    extract_features(model.backbone, image_set, transform, **run)
    seconds = time.perf_counter() - started
    return {
        "recipe": recipe.name,
        "precision": chosen,
        "images": len(image_set),
        "images_per_s": len(image_set) / seconds,
    }


def evaluate_throughput(bundle: Path, data_root: Path, split: str, out: Path, precision: str | None) -> dict[str, Any]:
    """``evaluate_bundle`` wall time on a split (decoding, the model, metrics and plots), in images/s."""
    started = time.perf_counter()
    result = evaluate_bundle(bundle, data_root, split, out, show_progress=False, n_bootstrap=1000, precision=precision)
    seconds = time.perf_counter() - started
    images = len(result.labels)
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "precision": result.metrics["inference_precision"],
        "accuracy": result.metrics["accuracy"],
    }


def validation_accuracy(bundle_dir: Path, data_root: Path | None, precision: str | None) -> dict[str, Any]:
    """The bundle's accuracy on its own validation split at ``precision``, with a 95% bootstrap interval."""
    bundle = load_bundle(bundle_dir)
    image_set = load_images(validation_samples(bundle, data_root), bundle.preprocessing, show_progress=False)
    predictor = Predictor(bundle, precision=precision)
    probabilities = predictor.predict_uint8(image_set.images)
    labels = image_set.labels.numpy()
    predicted = probabilities.argmax(axis=1)
    interval = bootstrap_confidence_intervals(labels, predicted, len(bundle.class_names))["accuracy"]
    return {
        "bundle": bundle.name,
        "precision": predictor.precision,
        "n_images": len(labels),
        "accuracy": float(np.mean(predicted == labels)),
        "ci95": [interval["low"], interval["high"]],
    }


def view_throughput(recipe_ref: str, data: Path, images: int) -> dict[str, Any]:
    """Images/s of the bare network beside the product's clean and augmented feature views, as training runs them.

    The views stream from disk as training reads them (decoding in worker processes, the augmentation drawn as
    training draws it); the bare network runs on inputs prepared beforehand, so it is what the views could reach
    at best. Each runs twice and the second run is timed.
    """
    recipe = load_recipe(recipe_ref)
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    samples = spread_samples(data, images)
    image_set = scan_images(samples, prep, show_progress=False)
    precision, channels_last = recipe.precision(), recipe.train.channels_last
    run = {"show_progress": False, "precision": precision, "channels_last": channels_last}
    # The augmented views as training encodes them: whole batches for a geometric augmentation, else per image.
    clean, (augmented, per_image) = eval_transform(prep), augmented_view_transform(recipe, prep)
    inputs = clean(load_images(samples, prep, show_progress=False).images)
    backbone = model.backbone.eval()
    if channels_last:
        to_channels_last(backbone)  # as extract_features runs it

    def bare() -> None:
        with torch.inference_mode(), autocast(precision):
            for start in range(0, len(inputs), INFERENCE_BATCH_SIZE):
                batch = inputs[start : start + INFERENCE_BATCH_SIZE]
                backbone(channels_last_batch(batch) if channels_last else batch)

    def view(transform: Any, per_image: bool) -> None:
        torch.manual_seed(recipe.train.seed)
        extract_features(backbone, image_set, transform, per_image=per_image, **run)

    works = {
        "bare network": bare,
        "clean view": lambda: view(clean, False),
        "augmented view": lambda: view(augmented, per_image),
    }
    rates = {name: _images_per_s(work, len(samples)) for name, work in works.items()}
    return {
        "recipe": recipe.name,
        "precision": resolve_precision(precision),
        "images": len(samples),
        "images_per_s": rates,
        "augmented_over_clean_time": round(rates["clean view"] / rates["augmented view"], 3),
    }


def _images_per_s(work: Any, count: int) -> float:
    """``count`` over the seconds of the second of two runs of ``work`` (the first warms up)."""
    work()
    started = time.perf_counter()
    work()
    return round(count / (time.perf_counter() - started), 2)
