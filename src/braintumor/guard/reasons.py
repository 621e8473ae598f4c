"""Why the input guard flagged an image, in a short code and a sentence, from the evidence it already scored.

A flagged image gets one reason. When its image evidence crosses the evidence threshold in a way no brain MRI
slice does (a colour image, an almost blank one, a mostly light page of text or a drawing, ...), the reason says
"not an MRI slice" and names what the statistics show. Evidence that a brain MRI can show too (a light border: a
slice in a white frame or cropped close to the head) is named without saying "not an MRI". A white bone ring
around the head (the bone-ring rule) is named as looking like a head CT, without saying "not an MRI" either: an
MR slice with very bright scalp fat comes close to it. When only the feature detector flags the image, the model's
features are unlike those of the training slices, which happens to other modalities and body parts and also to
brain MRIs of another sequence, skull-stripped slices or slices from another scanner: that reason never says
"not an MRI" either.

Example:
    >>> import torch
    >>> names = ["colourfulness", "mean_grey", "grey_std", "dark_fraction", "border_grey"]
    >>> above = torch.tensor([[3.0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0]])
    >>> statistics, low = torch.full((2, 5), 0.3), torch.full((5,), 0.1)
    >>> codes = reason_indices(torch.tensor([3.0, 2.0]), torch.tensor([3.0, 0.0]), above, torch.zeros(2, 5),
    ...                        statistics, low, names)
    >>> [FLAG_REASONS[int(i)].code for i in codes]
    ['not_mri_colour', 'unlike_training']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from braintumor.guard.defaults import FLAG_REASON

NOT_AN_MRI = "not an MRI slice"


@dataclass(frozen=True)
class FlagReason:
    """Why an image was flagged: a stable ``code`` for programs and a ``text`` for people."""

    code: str
    text: str


COLOUR = FlagReason("not_mri_colour", f"{NOT_AN_MRI}: a colour image")
BLANK = FlagReason("not_mri_blank", f"{NOT_AN_MRI}: almost blank")
LIGHT = FlagReason("not_mri_light", f"{NOT_AN_MRI}: mostly light, like text or a drawing")
DARK = FlagReason("not_mri_dark", f"{NOT_AN_MRI}: almost all black")
CONTRAST = FlagReason("not_mri_contrast", f"{NOT_AN_MRI}: far more contrast than an MR slice (noise or a pattern)")
LIGHT_BORDER = FlagReason(
    "light_border",
    "a light border unlike the training slices (a slice in a white frame or cropped close to the head, or not an MRI)",
)
GREY_LEVELS = FlagReason("grey_levels", "grey levels outside the training slices' range")
UNLIKE_TRAINING = FlagReason(
    "unlike_training",
    "unlike the training slices (maybe another modality or body part, another MR sequence, a skull-stripped slice "
    "or another scanner)",
)
CT_LIKE = FlagReason("ct_like", "looks like a head CT: a white ring of bone around the head")
# A flagged image's reason when no more specific one is known (older callers, a score without evidence).
UNEXPLAINED = FlagReason("unlike_training_images", FLAG_REASON)
# Index order of reason_indices: a flagged image's reason is FLAG_REASONS[index] (new reasons go at the end).
FLAG_REASONS = (COLOUR, BLANK, LIGHT, DARK, CONTRAST, LIGHT_BORDER, GREY_LEVELS, UNLIKE_TRAINING, CT_LIKE)
# The reasons that say "not an MRI slice": a white bone ring does not overrule them.
_NOT_AN_MRI = (COLOUR, BLANK, LIGHT, DARK, CONTRAST)
NOT_FLAGGED = -1
# "Almost blank": a grey spread under this share of the Training images' lowest (their 0.1% quantile). Blank pages
# are near 0; Training slices cropped close to the head or put in a white frame keep at least 0.75 of it.
BLANK_SHARE = 0.5


def reason_for_code(code: str) -> FlagReason:
    """The :class:`FlagReason` of a ``code``.

    Example:
        >>> reason_for_code("not_mri_blank").text
        'not an MRI slice: almost blank'
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
    statistics: torch.Tensor,
    low: torch.Tensor,
    names: Sequence[str],
    *,
    bone_ring: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per image, the index in :data:`FLAG_REASONS` of its reason, :data:`NOT_FLAGGED` (-1) when not flagged.

    Args:
        ood_score: ``[N]`` combined scores (flagged above 1).
        evidence: ``[N]`` the image evidence component, normalised like ``ood_score`` (above 1: it flags alone).
        above: ``[N, K]`` per statistic, how far above the Training range, normalised like ``evidence``.
        below: ``[N, K]`` the same below the range.
        statistics: ``[N, K]`` the images' statistics (:func:`~braintumor.guard.evidence.image_evidence`).
        low: ``[K]`` the Training images' low quantile of each statistic.
        names: the ``K`` statistic names (:data:`~braintumor.guard.evidence.EVIDENCE_NAMES`).
        bone_ring: ``[N]`` the bone-ring score (above 1: looks like a head CT), or None.

    A statistic "says so" when it alone crosses the evidence threshold (above 1). Among the images flagged on
    evidence, the most telling description wins: colour, then an almost flat image, then a mostly light one,
    then an almost black one, then too much contrast. Only these say "not an MRI slice". A light border alone
    (the mean grey level still within reach of the Training range) is what a slice in a white frame or cropped
    close to the head shows too, so its reason does not. A bone-ring score above 1 names a head CT, unless a
    "not an MRI slice" reason already applies.
    """
    column = {name: index for index, name in enumerate(names)}

    def says(side: torch.Tensor, name: str) -> torch.Tensor:
        return side[:, column[name]] > 1.0

    flagged = ood_score > 1.0
    on_evidence = flagged & (evidence > 1.0)
    index = torch.full(ood_score.shape, NOT_FLAGGED, dtype=torch.long)
    index[flagged & ~on_evidence] = FLAG_REASONS.index(UNLIKE_TRAINING)
    spread = column["grey_std"]
    # Least telling first: each later rule overwrites the earlier ones where it applies.
    rules = [
        (torch.ones_like(flagged), GREY_LEVELS),
        (says(above, "border_grey"), LIGHT_BORDER),
        (says(above, "grey_std"), CONTRAST),
        (says(below, "mean_grey") | says(above, "dark_fraction"), DARK),
        (says(above, "mean_grey"), LIGHT),
        (statistics[:, spread] < BLANK_SHARE * low[spread], BLANK),
        (says(above, "colourfulness"), COLOUR),
    ]
    for mask, reason in rules:
        index[on_evidence & mask] = FLAG_REASONS.index(reason)
    if bone_ring is not None:
        said = torch.isin(index, torch.tensor([FLAG_REASONS.index(r) for r in _NOT_AN_MRI]))
        index[flagged & (bone_ring > 1.0) & ~said] = FLAG_REASONS.index(CT_LIKE)
    return index


def reasons_of(indices: torch.Tensor) -> tuple[FlagReason | None, ...]:
    """The :class:`FlagReason` of each index from :func:`reason_indices` (None where not flagged).

    Example:
        >>> [r and r.code for r in reasons_of(torch.tensor([-1, 0]))]
        [None, 'not_mri_colour']
    """
    return tuple(None if int(i) == NOT_FLAGGED else FLAG_REASONS[int(i)] for i in indices.tolist())
