"""How far a set of target images sits from the source, from unlabelled evidence only.

Three measures: the share the input guard flags (against the validation split's rate, which the guard was
thresholded on), how far the target's mean penultimate feature sits from the source's (root mean square over
dimensions, in source standard deviations), and how far EM's class priors move from the training priors
(total variation). Where the source's class means are known (the input guard's) and the target's predicted class
mix is given, the mean feature is compared with the source mean *for that class mix*: a site that reads like the
source but sees the classes in other proportions is near the source, not shifted. On a target near the source on
the first two, moving every image's features can only hurt.

Example:
    >>> from braintumor.adaptation.methods import SourceStats
    >>> source = SourceStats(torch.zeros(2), torch.ones(2), torch.tensor([0.5, 0.5]))
    >>> e = shift_evidence(torch.zeros(10, 2), source, flagged_share=0.0, validation_flag_rate=0.01)
    >>> e.near_source, e.mean_shift
    (True, 0.0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from braintumor.adaptation.defaults import NEAR_FLAG_RATIO, NEAR_MEAN_SHIFT
from braintumor.adaptation.methods import SourceStats

# A guard thresholded at its validation 0.99 quantile flags ~1% of source-like images; a small target
# flags a few more by chance, so the comparison never goes below this share.
MIN_FLAG_SHARE = 0.02
# A target of n images is near the source on the flags while its flagged count stays within this quantile of
# Binomial(n, limit): 3 flags in 124 images is chance at a 2.4% limit, 40 in 124 is not.
FLAG_COUNT_QUANTILE = 0.95


def flag_count_limit(n_images: int, share_limit: float) -> int:
    """The most flagged images a source-like target of ``n_images`` shows by chance at ``share_limit``.

    Example:
        >>> flag_count_limit(124, 0.024), flag_count_limit(1520, 0.024)
        (6, 47)
    """
    from scipy.stats import binom

    return int(binom.ppf(FLAG_COUNT_QUANTILE, n_images, share_limit))


@dataclass(frozen=True)
class ShiftEvidence:
    """The measures and the verdict they give."""

    flagged_share: float
    validation_flag_rate: float | None
    mean_shift: float
    prior_shift: float | None
    near_source: bool
    explanation: str
    # The mean feature's distance from the source's overall mean, before the class-mix correction.
    raw_mean_shift: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shift_evidence(
    features: torch.Tensor,
    source: SourceStats,
    *,
    flagged_share: float,
    validation_flag_rate: float | None,
    target_priors: torch.Tensor | None = None,
    target_mix: torch.Tensor | None = None,
    n_images: int | None = None,
) -> ShiftEvidence:
    """The :class:`ShiftEvidence` of target penultimate ``features`` (the images the guard accepted).

    ``target_mix``: the unadapted model's mean predicted probability per class over these images. ``n_images``:
    how many images the guard judged (flagged ones included); with it, the flagged count is compared with what
    chance gives a source-like target of that size (:func:`flag_count_limit`).
    """
    target_mean, std = features.double().mean(dim=0), source.std.double()
    raw_shift = float(((target_mean - source.mean.double()) / std).pow(2).mean().sqrt())
    expected = source.mean.double()
    if target_mix is not None and source.class_means is not None:
        expected = target_mix.double() @ source.class_means.double()
    mean_shift = float(((target_mean - expected) / std).pow(2).mean().sqrt())
    prior = None if target_priors is None else float(0.5 * (target_priors - source.priors).abs().sum())
    flag_limit = max(MIN_FLAG_SHARE, NEAR_FLAG_RATIO * (validation_flag_rate or 0.0))
    count_limit = flag_count_limit(n_images, flag_limit) if n_images else None
    flags_near = flagged_share <= flag_limit or (
        count_limit is not None and round(flagged_share * n_images) <= count_limit
    )
    near = flags_near and mean_shift <= NEAR_MEAN_SHIFT
    explanation = (
        f"{flagged_share:.1%} of the images flagged by the input guard (near-source limit {flag_limit:.1%}"
        + ("" if count_limit is None else f", or {count_limit} of {n_images} images by chance")
        + "); mean "
        f"feature {mean_shift:.3f} source deviations from the source's for its class mix (limit {NEAR_MEAN_SHIFT}; "
        f"{raw_shift:.3f} from the overall source mean)"
        + ("" if prior is None else f"; class priors {prior:.3f} (total variation) from the training priors")
    )
    return ShiftEvidence(
        round(flagged_share, 4),
        validation_flag_rate,
        round(mean_shift, 4),
        prior,
        near,
        explanation,
        round(raw_shift, 4),
    )
