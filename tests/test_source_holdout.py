"""The source hold-out benchmark's source-direction removal finds a planted source direction and keeps the class."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from .conftest import load_benchmark


def test_source_directions_remove_the_source_and_keep_the_class() -> None:
    source_holdout = load_benchmark("source_holdout")
    rng = np.random.default_rng(0)
    n, dims = 600, 32
    labels = rng.integers(0, 2, n)
    main_source = rng.random(n) < 0.5
    class_axis, source_axis = np.eye(dims)[0], np.eye(dims)[1] + np.eye(dims)[2]
    features = rng.normal(size=(n, dims)) + 3.0 * labels[:, None] * class_axis
    features += 3.0 * main_source[:, None] * source_axis
    directions = source_holdout.source_directions(features, labels, main_source, count=1)
    assert directions.shape == (1, dims)
    # The one direction found is the planted source axis (up to sign and noise).
    assert abs(float(directions[0] @ source_axis / np.linalg.norm(source_axis))) > 0.95
    cleaned = features - (features @ directions.T) @ directions

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return float(LogisticRegression(max_iter=2000).fit(x[:400], y[:400]).score(x[400:], y[400:]))

    assert accuracy(features, main_source) > 0.9 and accuracy(cleaned, main_source) < 0.75
    assert accuracy(cleaned, labels) > 0.9
