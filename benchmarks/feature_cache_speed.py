"""Frozen-backbone fast path: time per epoch with cached features against recomputing the backbone every epoch.

Both paths train the same head with the same batches of real Training images; the uncached epoch runs
the frozen backbone on every batch, the cached one reads features computed once. The uncached path
would also augment every image every epoch; that cost is left out, so the speed-up is a lower bound.
The whole-run speed-up is reported for ``--epochs`` epochs and ``--views`` cached views (the recipe's
``cache_views``), counting the one-off feature extraction.

    python benchmarks/feature_cache_speed.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from braintumor.config import Recipe, load_recipe
from braintumor.data.dataset import load_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import eval_transform
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.network import BrainTumorNet


def _train_head_epoch(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], cached: bool) -> float:
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    model.head.train()
    started = time.perf_counter()
    for inputs, labels in batches:
        with torch.no_grad():
            features = inputs if cached else model.forward_features(inputs)
        loss = F.cross_entropy(model.head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def timing_parser(description: str, recipe: str, images: int) -> argparse.ArgumentParser:
    """The options every cache-speed benchmark shares (data, weights, recipe, how many images to time)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BRAINTUMOR_DATA", "../shared/data/brain-tumor-mri"))
    )
    parser.add_argument("--weights-dir", type=Path, default=None, help="Sets BRAINTUMOR_WEIGHTS_DIR.")
    parser.add_argument("--recipe", default=recipe)
    parser.add_argument("--images", type=int, default=images, help="Training images timed (the epoch is extrapolated).")
    parser.add_argument("--train-images", type=int, default=2360, help="Images per real epoch (2360 on Sartaj).")
    return parser


def timed_batches(args: argparse.Namespace) -> tuple[Recipe, BrainTumorNet, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The recipe, its model and ``--images`` real Training images (spread over the classes) in batches."""
    if args.weights_dir:
        os.environ["BRAINTUMOR_WEIGHTS_DIR"] = str(args.weights_dir.resolve())
    recipe = load_recipe(args.recipe)
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    every = discover_split(args.data, "Training")
    samples = every[:: max(1, len(every) // args.images)]  # folders are in class order
    images = load_images(samples[: args.images], prep, show_progress=False)
    transform = eval_transform(prep)
    batch = recipe.data.batch_size
    return (
        recipe,
        model,
        [(transform(images.images[i : i + batch]), images.labels[i : i + batch]) for i in range(0, len(images), batch)],
    )


def main() -> None:
    parser = timing_parser(__doc__.splitlines()[0], "lite0-frozen", 512)
    parser.add_argument("--epochs", type=int, default=15, help="Epochs of the run the speed-up is reported for.")
    parser.add_argument("--views", type=int, default=4, help="Cached views (the recipe's cache_views).")
    args = parser.parse_args()
    _, model, image_batches = timed_batches(args)
    timed = sum(len(labels) for _, labels in image_batches)
    model.eval()
    started = time.perf_counter()
    with torch.no_grad():
        feature_batches = [(model.forward_features(x), y) for x, y in image_batches]
    extraction = time.perf_counter() - started
    uncached = _train_head_epoch(model, image_batches, cached=False)
    cached = _train_head_epoch(model, feature_batches, cached=True)
    scale = args.train_images / timed
    uncached_run = args.epochs * uncached * scale
    cached_run = (args.views * extraction + args.epochs * cached) * scale
    print(f"recipe {args.recipe}, {timed} images timed, torch threads {torch.get_num_threads()}")
    print(f"one epoch, recomputing the backbone: {uncached * scale:.1f} s; on cached features: {cached * scale:.3f} s")
    print(f"feature extraction, one view: {extraction * scale:.1f} s")
    print(
        f"a {args.epochs}-epoch run with {args.views} cached views: {uncached_run / 60:.1f} min recomputing against "
        f"{cached_run / 60:.1f} min cached (x{uncached_run / cached_run:.1f}); the head alone trains "
        f"x{uncached / cached:.0f} faster per epoch"
    )


if __name__ == "__main__":
    main()
