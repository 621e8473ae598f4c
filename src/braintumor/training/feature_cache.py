"""A run's encoded views: backbone features (the probe) or frozen-bottom activations (a cached stage).

The probe's features are kept in ``<run>/feature_cache.safetensors`` under a fingerprint of everything
they depend on, so a resumed run reads them back instead of running the backbone again.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_only
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from braintumor.config import Recipe
from braintumor.data.preprocessing import eval_transform, train_transform
from braintumor.models.network import BrainTumorNet
from braintumor.training.features import build_view_features
from braintumor.training.fitting import FitContext

FEATURE_CACHE_FILE = "feature_cache.safetensors"


def cache_views(recipe: Recipe) -> int:
    """Views per training image in a cache: the recipe's ``cache_views``, or the clean one without augmentation."""
    return recipe.train.cache_views if recipe.augment.enabled else 1


def encode_views(encoder: nn.Module, context: FitContext) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder``'s outputs ``[views, N, ...]`` for the training views and ``[1, N, ...]`` for the clean validation.

    Through the unfolded network (no :func:`~braintumor.models.fusion.fold_batchnorm`): cached features must be
    bitwise what the image path computes, or a cached run would train another head than an uncached one.
    """
    recipe, prep, show_progress = context.recipe, context.prep, context.options.show_progress
    clean = eval_transform(prep)
    run = {
        "seed": recipe.train.seed,
        "show_progress": show_progress,
        "precision": recipe.precision(),
        "channels_last": recipe.train.channels_last,
    }
    augmented = train_transform(recipe.augment, prep)
    train = build_view_features(encoder, context.train_set, clean, augmented, views=cache_views(recipe), **run)
    val = build_view_features(encoder, context.val_set, clean, clean, views=1, **run)
    return train, val


def teacher_view_logits(context: FitContext) -> torch.Tensor | None:
    """The distillation teacher's outputs ``[views, N, classes]`` on the training views :func:`encode_views` makes.

    The same transforms and seeds draw the same views, so the teacher sees exactly what the student's features
    were computed from; ``None`` without a teacher. Computed once per run (a resumed run computes them again).
    """
    if context.teacher is None:
        return None
    recipe, prep = context.recipe, context.prep
    return build_view_features(
        context.teacher.network,
        context.train_set,
        eval_transform(prep),
        train_transform(recipe.augment, prep),
        views=cache_views(recipe),
        seed=recipe.train.seed,
        show_progress=context.options.show_progress,
        precision=context.teacher.precision,
        channels_last=recipe.train.channels_last,
    )


def _fingerprint(context: FitContext) -> str:
    recipe = context.recipe
    return hashlib.sha256(
        json.dumps(
            [
                recipe.model.model_dump(mode="json"),
                recipe.augment.model_dump(mode="json"),
                context.prep.model_dump(mode="json"),
                cache_views(recipe),
                recipe.train.seed,
                # bf16 features differ from fp32 ones in the last bits: a cache from the other precision is stale.
                recipe.precision(),
                context.train_set.hashes,
                context.val_set.hashes,
            ]
        ).encode()
    ).hexdigest()


def cached_features(model: BrainTumorNet, context: FitContext) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Backbone features for every view and whether they were read back from this run's matching cache file."""
    fingerprint = _fingerprint(context)
    cache_file = context.run_dir / FEATURE_CACHE_FILE
    if cache_file.is_file():
        try:
            with safe_open(str(cache_file), framework="pt") as handle:
                if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                    return handle.get_tensor("train"), handle.get_tensor("val"), True
        except (SafetensorError, OSError):
            pass  # an unreadable cache is recomputed
    train_features, val_views = encode_views(model.backbone, context)
    val_features = val_views[0]
    if rank_zero_only.rank == 0:
        temporary = cache_file.with_suffix(".tmp")
        save_file(
            {"train": train_features.contiguous(), "val": val_features.contiguous()},
            str(temporary),
            metadata={"fingerprint": fingerprint},
        )
        temporary.replace(cache_file)
    return train_features, val_features, False
