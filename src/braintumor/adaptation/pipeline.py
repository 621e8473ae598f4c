"""A method string (``em``, ``coral+em``, ``adabn+em``) to the adapted last layer, over target features.

The parts run in a fixed order whatever order they are named in: the backbone (AdaBN, done by the caller
before the features are taken), then a feature alignment, then a prototype or entropy adjustment of the
layer, then the class priors, which are estimated on what the adapted layer predicts.

Example:
    >>> parse_methods("em+coral"), min_images(("coral", "em"))
    (('coral', 'em'), 64)
"""

from __future__ import annotations

from typing import Any

import torch

import braintumor.adaptation.defaults as defaults
from braintumor.adaptation.defaults import CORAL_SHRINKAGE, MIN_IMAGES, T3A_FILTER
from braintumor.adaptation.errors import AdaptationError
from braintumor.adaptation.methods import (
    HeadState,
    SourceStats,
    coral,
    em_priors,
    fold_affine,
    prior_shift,
    shot,
    standardize,
    t3a,
)
from braintumor.config import parse_adaptation_methods

# Methods that move every target image's features or weights; only EM leaves a near-source target alone.
MOVING_METHODS = ("adabn", "standardize", "coral", "t3a", "shot")
# Why gate() skips a method, from the Training-only proxy (benchmarks/results/site_adaptation.json).
NEAR_SOURCE_REASON = "moves every image's features, and cost in-distribution images accuracy on the proxy"
SHIFTED_REASON = (
    "assumes only the class priors changed; where the features moved too, it shrank the shifted class further "
    "on the proxy's shifted site"
)


def parse_methods(text: str) -> tuple[str, ...]:
    """The methods of ``a+b+...`` in ``METHODS`` order; unknown or conflicting names are an :class:`AdaptationError`."""
    try:
        return parse_adaptation_methods(text)
    except ValueError as error:
        raise AdaptationError(f"--method {text!r}: {error}") from None


def min_images(methods: tuple[str, ...]) -> int:
    """The fewest target images the combination needs."""
    return max(MIN_IMAGES[name] for name in methods)


def gate(methods: tuple[str, ...], near_source: bool) -> tuple[tuple[str, ...], dict[str, str]]:
    """The methods the evidence allows and why each other one is skipped: near the source, nothing needs
    moving (only EM runs); away from it, EM's pure prior-shift assumption fails (EM is skipped).

    Example:
        >>> gate(("standardize", "em"), near_source=True)[0], gate(("standardize", "em"), near_source=False)[0]
        (('em',), ('standardize',))
    """
    skipped = {
        name: NEAR_SOURCE_REASON if near_source else SHIFTED_REASON
        for name in methods
        if (name in MOVING_METHODS) == near_source
    }
    return tuple(name for name in methods if name not in skipped), skipped


def method_settings(methods: tuple[str, ...]) -> dict[str, Any]:
    """The settings each method runs with (recorded in the adapted bundle)."""
    table: dict[str, dict[str, Any]] = {
        "adabn": {"batch_size": defaults.ADABN_BATCH_SIZE, "seed": defaults.SEED},
        "standardize": {"min_std": defaults.MIN_STD},
        "coral": {"shrinkage": CORAL_SHRINKAGE},
        "em": {"tolerance": defaults.EM_TOLERANCE, "max_iterations": defaults.EM_MAX_ITERATIONS},
        "t3a": {"filter_size": T3A_FILTER},
        "shot": {
            "steps": defaults.SHOT_STEPS,
            "learning_rate": defaults.SHOT_LEARNING_RATE,
            "diversity": defaults.SHOT_DIVERSITY,
            "seed": defaults.SEED,
        },
    }
    return {name: table[name] for name in methods}


def adapt_head(
    methods: tuple[str, ...], features: torch.Tensor, head: HeadState, source: SourceStats, temperature: float = 1.0
) -> tuple[HeadState, dict[str, Any]]:
    """The adapted last layer for target penultimate ``features`` and what was fitted (JSON-ready).

    Example:
        >>> z = torch.randn(64, 3, dtype=torch.float64) * 2 + 1
        >>> source = SourceStats(torch.zeros(3), torch.ones(3), torch.full((2,), 0.5))
        >>> head = HeadState(torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
        >>> adapted, fitted = adapt_head(("standardize",), z, head, source)
        >>> aligned = (z - z.mean(0)) / z.std(0)
        >>> bool(torch.allclose(adapted.logits(z), head.logits(aligned)))
        True
    """
    fitted: dict[str, Any] = {}
    features = features.double()
    if "standardize" in methods or "coral" in methods:
        scale, shift = standardize(features, source) if "standardize" in methods else coral(features, source)
        head = fold_affine(head, scale, shift)
        fitted["alignment_shift_norm"] = float(shift.norm())
    if "t3a" in methods:
        head = t3a(features, head)
    if "shot" in methods:
        head = shot(features, head)
    if "em" in methods:
        probabilities = torch.softmax(head.logits(features) / temperature, dim=1)
        priors, rounds = em_priors(probabilities, source.priors.double())
        head = prior_shift(head, priors, source.priors.double(), temperature)
        fitted["em_priors"] = [round(float(p), 4) for p in priors]
        fitted["em_iterations"] = rounds
    return head, fitted
