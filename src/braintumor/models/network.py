"""The one network shape every recipe builds: a feature extractor followed by the seed's head.

``forward_features`` gives one vector per image, ``forward_head`` maps vectors to logits. A frozen
backbone can therefore be run once and its features cached while only the head trains.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Keras' BatchNormalization defaults, in PyTorch's convention (Keras' momentum 0.99 is PyTorch's 0.01).
KERAS_BATCHNORM_MOMENTUM = 0.01
KERAS_BATCHNORM_EPS = 1e-3


def keras_initialise(module: nn.Module) -> nn.Module:
    """Keras' default initialisation, in place: Glorot-uniform weights and zero biases for Conv and Dense layers,
    Keras' BatchNorm momentum and epsilon. Returns ``module``.

    Example:
        >>> layer = keras_initialise(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
        >>> float(layer[0].bias.detach().abs().sum()), layer[1].momentum, layer[1].eps
        (0.0, 0.01, 0.001)
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm1d | nn.BatchNorm2d):
            layer.momentum, layer.eps = KERAS_BATCHNORM_MOMENTUM, KERAS_BATCHNORM_EPS
    return module


class SeedHead(nn.Sequential):
    """The seed's classifier head: Dense(hidden, ReLU), BatchNorm, Dropout, Dense(num_classes)."""

    def __init__(self, in_features: int, hidden: int, dropout: float, num_classes: int) -> None:
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )


class LinearHead(nn.Sequential):
    """A linear probe: features standardised by BatchNorm (running statistics, no affine), Dropout, Dense.

    With ``standardize=False`` the first layer is an identity (same state-dict keys for the Dense layer).

    Example:
        >>> LinearHead(16, dropout=0.1, num_classes=4)(torch.randn(8, 16)).shape
        torch.Size([8, 4])
        >>> type(LinearHead(16, dropout=0.1, num_classes=4, standardize=False)[0]).__name__
        'Identity'
    """

    def __init__(self, in_features: int, dropout: float, num_classes: int, *, standardize: bool = True) -> None:
        super().__init__(
            nn.BatchNorm1d(in_features, affine=False) if standardize else nn.Identity(),
            nn.Dropout(dropout),
            nn.Linear(in_features, num_classes),
        )


class SeedCNN(nn.Module):
    """The seed's from-scratch feature extractor: blocks of Conv(3x3, same)+ReLU+MaxPool(2), then Flatten.

    Example:
        >>> net = SeedCNN(channels=[8, 16], image_size=32)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 1024])
    """

    def __init__(self, channels: list[int], image_size: int) -> None:
        super().__init__()
        if image_size % (2 ** len(channels)):
            raise ValueError(f"image_size {image_size} must be divisible by 2**{len(channels)} (one pool per block)")
        blocks: list[nn.Module] = []
        in_channels = 3
        for out_channels in channels:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        side = image_size // 2 ** len(channels)
        self.num_features = in_channels * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.blocks(x), 1)


class BrainTumorNet(nn.Module):
    """Backbone (image to feature vector) plus :class:`SeedHead`; ``forward`` returns logits."""

    def __init__(self, backbone: nn.Module, num_features: int, head: nn.Module, frozen_backbone: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.head = head
        self.frozen_backbone = frozen_backbone
        if frozen_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> BrainTumorNet:
        super().train(mode)
        if self.frozen_backbone:
            # A frozen backbone keeps its BatchNorm statistics: that is what makes cached features exact.
            self.backbone.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def penultimate_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input of the head's last Dense layer (what the classes are read from) and the logits.

        Both heads are ``nn.Sequential`` ending in that layer, so the logits equal :meth:`forward`'s.
        """
        return self.head_penultimate_and_logits(self.forward_features(x))

    def head_penultimate_and_logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`penultimate_and_logits` from backbone features (cached features of a frozen backbone)."""
        *body, last = self.head  # slicing would rebuild the head class with other arguments
        penultimate = features
        for layer in body:
            penultimate = layer(penultimate)
        return penultimate, last(penultimate)
