"""Frozen-backbone fast path: time per epoch with cached features against recomputing the backbone every epoch.

Both paths train the same head with the same batches of real Training images; the uncached epoch runs
the frozen backbone on every batch, the cached one reads features computed once. The uncached path
would also augment every image every epoch; that cost is left out, so the speed-up is a lower bound.
The whole-run speed-up is reported for ``--epochs`` epochs and ``--views`` cached views (the recipe's
``cache_views``), counting the one-off feature extraction.

    python benchmarks/feature_cache_speed.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights
"""

from __future__ import annotations

import torch
from common import cache_timing_parser, timed, use_weights_dir
from lib.cache_speed import Batch, batch_images, encode_batches, epoch_seconds, head_on, timing_batches

from braintumor.models.network import BrainTumorNet


def _head_epoch(model: BrainTumorNet, batches: list[Batch], *, cached: bool) -> float:
    optimizer = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    model.head.train()
    return epoch_seconds(head_on(model, cached=cached), optimizer, batches)


def main() -> None:
    parser = cache_timing_parser(__doc__, "lite0-frozen", 512)
    parser.add_argument("--epochs", type=int, default=15, help="Epochs of the run the speed-up is reported for.")
    parser.add_argument("--views", type=int, default=4, help="Cached views (the recipe's cache_views).")
    args = parser.parse_args()
    use_weights_dir(args)
    _, model, image_batches = timing_batches(args.recipe, args.data, args.images)
    model.eval()
    feature_batches, extraction, _ = timed(lambda: encode_batches(model.forward_features, image_batches))
    uncached = _head_epoch(model, image_batches, cached=False)
    cached = _head_epoch(model, feature_batches, cached=True)
    timed_images = batch_images(image_batches)
    scale = args.train_images / timed_images
    uncached_run = args.epochs * uncached * scale
    cached_run = (args.views * extraction + args.epochs * cached) * scale
    print(f"recipe {args.recipe}, {timed_images} images timed, torch threads {torch.get_num_threads()}")
    print(f"one epoch, recomputing the backbone: {uncached * scale:.1f} s; on cached features: {cached * scale:.3f} s")
    print(f"feature extraction, one view: {extraction * scale:.1f} s")
    print(
        f"a {args.epochs}-epoch run with {args.views} cached views: {uncached_run / 60:.1f} min recomputing against "
        f"{cached_run / 60:.1f} min cached (x{uncached_run / cached_run:.1f}); the head alone trains "
        f"x{uncached / cached:.0f} faster per epoch"
    )


if __name__ == "__main__":
    main()
