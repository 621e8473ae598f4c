"""Small torchvision-v2 transforms that torchvision lacks, for the shift-robust augmentations.

Both draw their strength per call from Python's ``random`` / torch's generator, so seeding
(``lightning.seed_everything``) makes them reproducible like torchvision's own random transforms.

Example:
    >>> import torch
    >>> image = torch.full((3, 8, 8), 64, dtype=torch.uint8)
    >>> RandomGamma(2.0, 2.0)(image)[0, 0, 0].item()  # (64/255)**2 * 255
    16
    >>> noisy = RandomGaussianNoise(0.1)(torch.full((3, 8, 8), 0.5))
    >>> bool(noisy.min() >= 0.0 and noisy.max() <= 1.0)
    True
    >>> flat = torch.full((3, 32, 32), 100, dtype=torch.uint8)
    >>> flat[:, :16, :] = 110  # the top half a little brighter
    >>> out = clahe_uint8(flat)
    >>> int(out[0, 0, 0]) - int(out[0, 31, 0]) > 10  # the step of 10 grey levels is stretched
    True
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

CLAHE_CLIP_LIMIT = 2.0


class RandomGamma(v2.Transform):
    """Gamma correction with the exponent drawn log-uniformly from ``[low, high]`` (contrast of the mid-tones)."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise ValueError(f"gamma range must satisfy 0 < low <= high, got ({low}, {high})")
        self.low, self.high = low, high

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"gamma": math.exp(random.uniform(math.log(self.low), math.log(self.high)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return TF.adjust_gamma(inpt, params["gamma"])


def clahe_uint8(image: torch.Tensor, clip_limit: float = CLAHE_CLIP_LIMIT) -> torch.Tensor:
    """CLAHE (kornia, 8x8 tiles) of a uint8 ``[..., 3, H, W]`` image, per channel; returns uint8.

    Contrast-limited adaptive histogram equalisation evens out contrast locally, so slices from scanners
    with different windowing look more alike while the clip limit keeps noise from being amplified.
    """
    from kornia.enhance import equalize_clahe

    batched = image if image.dim() == 4 else image.unsqueeze(0)
    out = equalize_clahe(batched.float() / 255.0, clip_limit=clip_limit, grid_size=(8, 8))
    out = (out * 255.0).round().clamp_(0, 255).to(torch.uint8)
    return out if image.dim() == 4 else out[0]


class RandomCLAHE(v2.Transform):
    """:func:`clahe_uint8` with probability ``p`` and a clip limit drawn from ``[1, max_clip_limit]``."""

    def __init__(self, p: float, max_clip_limit: float = 4.0) -> None:
        super().__init__()
        self.p, self.max_clip_limit = p, max_clip_limit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"apply": random.random() < self.p, "clip": random.uniform(1.0, self.max_clip_limit)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return clahe_uint8(inpt, params["clip"]) if params["apply"] else inpt


class RandomGaussianNoise(v2.Transform):
    """Additive Gaussian noise on float ``[0, 1]`` images, its std drawn uniformly from ``[0, max_std]``, clipped."""

    def __init__(self, max_std: float) -> None:
        super().__init__()
        self.max_std = max_std

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"std": random.uniform(0.0, self.max_std)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not torch.is_floating_point(inpt):
            raise TypeError("RandomGaussianNoise expects a float image in [0, 1]; apply it after ToDtype")
        return (inpt + torch.randn_like(inpt) * params["std"]).clamp_(0.0, 1.0)
