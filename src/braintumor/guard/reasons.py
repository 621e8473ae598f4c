"""Why the input guard flagged an image, in a short code and a sentence, from the evidence it already scored.

A flagged image gets one reason. When its image evidence alone crosses the evidence threshold, the image is not a
grey MR slice and the reason names what the statistics show (a colour image, an almost blank one, a light page
of text or a drawing, ...). When only the feature detector flags it, the image evidence looks like a grey MR
slice: the model's features are unlike those of the training slices, which also happens to brain MRIs of
another sequence, skull-stripped slices or slices from another scanner, so that reason never says "not an MRI".

Example:
    >>> import torch
    >>> names = ["colourfulness", "mean_grey", "grey_std", "dark_fraction", "border_grey"]
    >>> above = torch.tensor([[3.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]])
    >>> codes = reason_indices(torch.tensor([3.0, 2.0]), torch.tensor([3.0, 0.0]), above, torch.zeros(2, 5),
    ...                        torch.zeros(2, 5), names)
    >>> [FLAG_REASONS[int(i)].code for i in codes]
    ['not_mri_colour', 'unlike_training']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

NOT_AN_MRI = "not an MRI slice"


@dataclass(frozen=True)
class FlagReason:
    """Why an image was flagged: a stable ``code`` for programs and a ``text`` for people."""

    code: str
    text: str


COLOUR = FlagReason("not_mri_colour", f"{NOT_AN_MRI}: a colour image")
BLANK = FlagReason("not_mri_blank", f"{NOT_AN_MRI}: almost blank (nearly one flat grey level)")
LIGHT = FlagReason("not_mri_light", f"{NOT_AN_MRI}: a light background, like text or a drawing")
DARK = FlagReason("not_mri_dark", f"{NOT_AN_MRI}: almost all black")
CONTRAST = FlagReason("not_mri_contrast", f"{NOT_AN_MRI}: far more contrast than an MR slice (noise or a pattern)")
GREY_LEVELS = FlagReason("not_mri_grey_levels", f"{NOT_AN_MRI}: grey levels unlike an MR slice")
UNLIKE_TRAINING = FlagReason(
    "unlike_training",
    "an MR-like image unlike the training slices (maybe another sequence, skull-stripped, or another scanner)",
)
# Index order of reason_indices: a flagged image's reason is FLAG_REASONS[index].
FLAG_REASONS = (COLOUR, BLANK, LIGHT, DARK, CONTRAST, GREY_LEVELS, UNLIKE_TRAINING)
NOT_FLAGGED = -1


def reason_for_code(code: str) -> FlagReason:
    """The :class:`FlagReason` of a ``code``.

    Example:
        >>> reason_for_code("not_mri_blank").text
        'not an MRI slice: almost blank (nearly one flat grey level)'
    """
    for reason in FLAG_REASONS:
        if reason.code == code:
            return reason
    raise KeyError(f"unknown flag reason code {code!r}: one of {[r.code for r in FLAG_REASONS]}")


def reason_indices(
    ood_score: torch.Tensor,
    evidence: torch.Tensor,
    above: torch.Tensor,
    below: torch.Tensor,
    outside_below: torch.Tensor,
    names: Sequence[str],
) -> torch.Tensor:
    """Per image, the index in :data:`FLAG_REASONS` of its reason, :data:`NOT_FLAGGED` (-1) when not flagged.

    Args:
        ood_score: ``[N]`` combined scores (flagged above 1).
        evidence: ``[N]`` the image evidence component, normalised like ``ood_score`` (above 1: it flags alone).
        above: ``[N, K]`` per statistic, how far above the Training range, normalised like ``evidence``.
        below: ``[N, K]`` the same below the range.
        outside_below: ``[N, K]`` how far below the range in units of the range, not normalised (above 0: below
            every Training image but the lowest 0.1%).
        names: the ``K`` statistic names (:data:`~braintumor.guard.evidence.EVIDENCE_NAMES`).

    A statistic "says so" when it alone crosses the evidence threshold (above 1). Among those, the most telling
    description wins: colour, then a flat image (grey spread below the Training range), then a light
    background, then a dark one, then too much contrast.
    """
    column = {name: index for index, name in enumerate(names)}

    def says(side: torch.Tensor, name: str) -> torch.Tensor:
        return side[:, column[name]] > 1.0

    flagged = ood_score > 1.0
    on_evidence = flagged & (evidence > 1.0)
    index = torch.full(ood_score.shape, NOT_FLAGGED, dtype=torch.long)
    index[flagged & ~on_evidence] = FLAG_REASONS.index(UNLIKE_TRAINING)
    # Least telling first: each later rule overwrites the earlier ones where it applies.
    rules = [
        (torch.ones_like(flagged), GREY_LEVELS),
        (says(above, "grey_std"), CONTRAST),
        (says(below, "mean_grey") | says(above, "dark_fraction"), DARK),
        (says(above, "mean_grey") | says(above, "border_grey") | says(below, "dark_fraction"), LIGHT),
        (outside_below[:, column["grey_std"]] > 0.0, BLANK),
        (says(above, "colourfulness"), COLOUR),
    ]
    for mask, reason in rules:
        index[on_evidence & mask] = FLAG_REASONS.index(reason)
    return index


def reasons_of(indices: torch.Tensor) -> tuple[FlagReason | None, ...]:
    """The :class:`FlagReason` of each index from :func:`reason_indices` (None where not flagged).

    Example:
        >>> [r and r.code for r in reasons_of(torch.tensor([-1, 0]))]
        [None, 'not_mri_colour']
    """
    return tuple(None if int(i) == NOT_FLAGGED else FLAG_REASONS[int(i)] for i in indices.tolist())
