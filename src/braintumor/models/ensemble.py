"""Ensembles: several networks whose class probabilities are averaged, behaving as one network.

``forward`` returns the log of the (weighted) mean probability. Softmax of that is exactly the mean
probability, so everything built for one network (temperature scaling, TTA, ONNX export, serving)
works on an ensemble unchanged.

Example:
    >>> import torch
    >>> first, second = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)
    >>> ensemble = EnsembleNet([first, second])
    >>> x = torch.randn(4, 2)
    >>> mean = (first(x).softmax(1) + second(x).softmax(1)) / 2
    >>> torch.allclose(ensemble(x).softmax(1), mean, atol=1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class EnsembleNet(nn.Module):
    """Members' softmax probabilities averaged with fixed ``weights`` (default equal); returns log-probabilities."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("ensemble weights must be one non-negative number per member, not all zero")
        total = sum(weights)
        # A buffer (not a parameter): saved in the bundle, never trained.
        self.register_buffer("weights", torch.tensor([w / total for w in weights]), persistent=False)

    @property
    def backbone(self) -> nn.Module:
        """The first member's backbone (where explanations look by default)."""
        return self.members[0].backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([member(x) for member in self.members])

    def combine(self, member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weighted average of the members' softmax probabilities, as log-probabilities."""
        probabilities = torch.stack([logits.softmax(dim=1) for logits in member_logits])
        mean = (probabilities * self.weights.view(-1, 1, 1)).sum(dim=0)
        return mean.clamp_min(1e-12).log()

    def penultimate_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' penultimate features side by side, and the ensemble's log-probabilities."""
        parts = [member.penultimate_and_logits(x) for member in self.members]
        return torch.cat([p for p, _ in parts], dim=1), self.combine([z for _, z in parts])
