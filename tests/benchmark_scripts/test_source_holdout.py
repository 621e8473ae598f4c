"""The source hold-out's functions (``benchmarks/lib``): source-direction removal, features read through timm."""

from __future__ import annotations

import numpy as np
import timm
import torch
from lib.features import multilevel_maps
from lib.probes import source_directions
from sklearn.linear_model import LogisticRegression


def test_source_directions_remove_the_source_and_keep_the_class() -> None:
    rng = np.random.default_rng(0)
    n, dims = 600, 32
    labels = rng.integers(0, 2, n)
    main_source = rng.random(n) < 0.5
    class_axis, source_axis = np.eye(dims)[0], np.eye(dims)[1] + np.eye(dims)[2]
    features = rng.normal(size=(n, dims)) + 3.0 * labels[:, None] * class_axis
    features += 3.0 * main_source[:, None] * source_axis
    directions = source_directions(features, labels, main_source, count=1)
    assert directions.shape == (1, dims)
    # The one direction found is the planted source axis (up to sign and noise).
    assert abs(float(directions[0] @ source_axis / np.linalg.norm(source_axis))) > 0.95
    cleaned = features - (features @ directions.T) @ directions

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return float(LogisticRegression(max_iter=2000).fit(x[:400], y[:400]).score(x[400:], y[400:]))

    assert accuracy(features, main_source) > 0.9 and accuracy(cleaned, main_source) < 0.75
    assert accuracy(cleaned, labels) > 0.9


@torch.inference_mode()
def test_multilevel_features_are_the_last_blocks_and_the_head() -> None:
    # forward_intermediates' indexing (stem 0, blocks[i] i + 1) against an explicit walk over the blocks.
    torch.manual_seed(0)
    backbone = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    pooled, maps = [], backbone.bn1(backbone.conv_stem(x))
    for index, block in enumerate(backbone.blocks):
        maps = block(maps)
        if index >= len(backbone.blocks) - 3:
            pooled.append(maps.mean(dim=(2, 3)))
    pooled.append(backbone.bn2(backbone.conv_head(maps)).mean(dim=(2, 3)))
    assert torch.equal(multilevel_maps(backbone, x), torch.cat(pooled, dim=1))
