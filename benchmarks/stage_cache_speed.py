"""Partial fine-tuning on cached activations: time per epoch against running the whole network every step.

Both paths train the same top layer groups and head (the recipe's first fine-tuning stage, frozen
BatchNorm) on the same batches of real Training images with AdamW. The image path runs the frozen lower
layers on every batch; the cached path reads their output, computed once per view. Augmentation cost is
left out of the image path, so the speed-up is a lower bound. The whole-stage figure counts the one-off
extraction of the recipe's ``cache_views`` views and uses the stage's epochs.

    python benchmarks/stage_cache_speed.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights
"""

from __future__ import annotations

import torch
from common import cache_timing_parser, timed, use_weights_dir
from lib.cache_speed import Batch, batch_images, encode_batches, epoch_seconds, timing_batches

from braintumor.training.finetune import FineTuneNet, prepare_stage, split_backbone


def _stage_epoch(network: torch.nn.Module, groups: list[dict], batches: list[Batch]) -> float:
    network.train()
    return epoch_seconds(network, torch.optim.AdamW(groups), batches)


def main() -> None:
    args = cache_timing_parser(__doc__, "lite0-lpft-cached", 256).parse_args()
    use_weights_dir(args)
    recipe, model, image_batches = timing_batches(args.recipe, args.data, args.images)
    timed_images = batch_images(image_batches)
    stage = recipe.train.finetune_stages[0]
    groups = prepare_stage(model, stage, recipe.train.weight_decay)
    split = split_backbone(model.backbone)
    if split is None:
        raise SystemExit(f"{recipe.model.backbone} cannot be split at the top {stage.unfreeze} layer groups")
    bottom, top = split
    bottom.eval()
    activation_batches, extraction, _ = timed(lambda: encode_batches(bottom, image_batches))
    image_epoch = _stage_epoch(FineTuneNet(model, model.backbone), groups, image_batches)
    cached_epoch = _stage_epoch(FineTuneNet(torch.nn.Sequential(top, model.head), top), groups, activation_batches)
    scale = args.train_images / timed_images
    views = recipe.train.cache_views if recipe.augment.enabled else 1
    image_stage = stage.epochs * image_epoch * scale
    cached_stage = (views * extraction + stage.epochs * cached_epoch) * scale
    print(f"recipe {args.recipe}, stage 1 (top {stage.unfreeze} layer groups), {timed_images} images timed, "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"one epoch on images: {image_epoch * scale:.1f} s; on cached activations: {cached_epoch * scale:.1f} s "
          f"(x{image_epoch / cached_epoch:.1f})")  # fmt: skip
    print(f"activation extraction, one view: {extraction * scale:.1f} s")
    print(
        f"the {stage.epochs}-epoch stage with {views} cached views: {image_stage / 60:.1f} min on images against "
        f"{cached_stage / 60:.1f} min cached (x{image_stage / cached_stage:.1f})"
    )


if __name__ == "__main__":
    main()
