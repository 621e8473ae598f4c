"""Timing of training epochs on real images against epochs on cached features or activations.

The benchmarks time one epoch each way on a sample of Training and scale it to a whole epoch; the batches
are the recipe's normalised eval images (augmentation, which only the image path would pay for, is left out).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from braintumor.config import Recipe, load_recipe
from braintumor.data.dataset import load_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import eval_transform
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.network import BrainTumorNet

Batch = tuple[torch.Tensor, torch.Tensor]


def timing_batches(recipe_ref: str, data: Path, images: int) -> tuple[Recipe, BrainTumorNet, list[Batch]]:
    """The recipe, its model and ``images`` real Training images (spread over the classes) in its batches.

    Args:
        recipe_ref: A recipe name under ``configs/`` or a YAML path.
        data: The data set's root.
        images: How many Training images to take.
    """
    recipe = load_recipe(recipe_ref)
    model = create_model(recipe)
    prep = resolve_preprocessing(recipe, model)
    every = discover_split(data, "Training")
    samples = every[:: max(1, len(every) // images)]  # folders are in class order
    image_set = load_images(samples[:images], prep, show_progress=False)
    transform = eval_transform(prep)
    size = recipe.data.batch_size
    batches = [
        (transform(image_set.images[start : start + size]), image_set.labels[start : start + size])
        for start in range(0, len(image_set), size)
    ]
    return recipe, model, batches


def batch_images(batches: list[Batch]) -> int:
    """How many images ``batches`` hold."""
    return sum(len(labels) for _, labels in batches)


@torch.no_grad()
def encode_batches(encoder: Callable[[torch.Tensor], torch.Tensor], batches: list[Batch]) -> list[Batch]:
    """``batches`` with their inputs replaced by ``encoder``'s outputs: what a cache would hold."""
    return [(encoder(inputs), labels) for inputs, labels in batches]


def epoch_seconds(
    network: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer, batches: list[Batch]
) -> float:
    """Wall seconds of one epoch of ``optimizer`` steps on the cross-entropy of ``network(inputs)``.

    Example:
        >>> layer = torch.nn.Linear(3, 2)
        >>> batches = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
        >>> epoch_seconds(layer, torch.optim.SGD(layer.parameters(), lr=0.1), batches) >= 0.0
        True
    """
    started = time.perf_counter()
    for inputs, labels in batches:
        loss = F.cross_entropy(network(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def head_on(model: BrainTumorNet, *, cached: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The head of a frozen-backbone model, on cached features or on images through the backbone (no gradients)."""

    def network(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = inputs if cached else model.forward_features(inputs)
        return model.head(features)

    return network
