"""Test-time augmentation: the views of a uint8 batch whose logits a predictor averages.

Views: the image, its horizontal mirror, and the image shifted by ``shift_fraction`` of its size
left, right, up and down (black fill, whole pixels, so no interpolation blurs the image). Brain MRI
slices are roughly left-right symmetric and framed a little differently from scan to scan, which is
what these views average over.

Example:
    >>> import torch
    >>> images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    >>> [tuple(view.shape) for view in tta_views(images)][:2]
    [(2, 3, 32, 32), (2, 3, 32, 32)]
    >>> len(tta_views(images))
    6
"""

from __future__ import annotations

import torch

TTA_SHIFT_FRACTION = 0.05


def shift_pixels(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move the content of ``[..., H, W]`` images by whole pixels (right and down are positive), black fill."""
    # torchvision (and with it torch's compiler) is imported only when test-time augmentation is asked for.
    from torchvision.transforms.v2 import functional as TF

    return TF.affine(images, angle=0.0, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0], fill=0)


def tta_views(images: torch.Tensor, shift_fraction: float = TTA_SHIFT_FRACTION) -> list[torch.Tensor]:
    """The test-time views of a uint8 batch ``[N, 3, S, S]``: identity, mirror and four small shifts."""
    shift = max(1, round(shift_fraction * images.shape[-1]))
    return [
        images,
        images.flip(-1),
        shift_pixels(images, shift, 0),
        shift_pixels(images, -shift, 0),
        shift_pixels(images, 0, shift),
        shift_pixels(images, 0, -shift),
    ]
