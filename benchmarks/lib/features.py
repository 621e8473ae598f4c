"""Frozen-backbone features of image tensors: pooled, multi-level, and with every image's style replaced.

Images are uint8 ``[N, 3, S, S]`` (``ImageSet.images``); each function normalises them with the
preprocessing's eval transform, in batches of :data:`BATCH_SIZE`, without gradients. A backbone is a timm
EfficientNet made by :func:`~braintumor.models.pretrained.create_backbone` (``num_classes=0``).

"Style" is every channel's per-image mean and standard deviation after one block (as in AdaIN and
MixStyle): replacing it keeps where things are in the image and changes how bright and contrasted the
block sees them, which is most of what tells one scanner or exporter from another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from braintumor.config import AugmentConfig
from braintumor.data.dataset import ImageSet, drop_exact_duplicates, load_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, augmentation_transform, eval_transform

BATCH_SIZE = 64
# Keeps the division by a channel's standard deviation finite on a flat (all-zero) channel.
STYLE_EPSILON = 1e-5

Style = tuple[torch.Tensor, torch.Tensor]

POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": lambda maps: maps.mean(dim=(2, 3)),
    "max": lambda maps: maps.amax(dim=(2, 3)),
    "avgmax": lambda maps: torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1),
}


def probe_preprocessing(image_size: int, crop: str, intensity: str) -> Preprocessing:
    """The probes' preprocessing: mean and standard deviation 0.5, what timm's EfficientNet-Lite weights expect.

    Args:
        image_size: Side of the square the images are resized to.
        crop: ``Preprocessing.crop`` (``none`` or ``head``).
        intensity: ``Preprocessing.intensity`` (``none``, ``equalize``, ``window``, ``clahe``).

    Example:
        >>> probe_preprocessing(224, "head", "none").std
        (0.5, 0.5, 0.5)
    """
    return Preprocessing(
        image_size=image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop=crop, intensity=intensity
    )


def load_split(data: Path, split: str, prep: Preprocessing) -> ImageSet:
    """A split's decoded images; Training without its exact copies, as training itself drops them.

    Args:
        data: The data set's root (``Training/`` and ``Testing/`` below it).
        split: ``Training`` or ``Testing``.
        prep: How the images are cropped, resized and normalised in intensity.
    """
    images = load_images(discover_split(data, split), prep, show_progress=False)
    return drop_exact_duplicates(images)[0] if split == "Training" else images


def batch_slices(count: int, batch_size: int = BATCH_SIZE) -> list[slice]:
    """Consecutive slices that cover ``count`` rows, ``batch_size`` at a time.

    Example:
        >>> batch_slices(5, 2)
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


@torch.inference_mode()
def batched_outputs(
    network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, prep: Preprocessing
) -> torch.Tensor:
    """``network`` applied to ``images`` (normalised by ``prep``'s eval transform) batch by batch, concatenated.

    Args:
        network: Normalised float images ``[B, 3, S, S]`` to outputs ``[B, ...]``.
        images: uint8 ``[N, 3, S, S]``.
        prep: Gives the normalisation's mean and standard deviation.

    Example:
        >>> images = torch.zeros(70, 3, 8, 8, dtype=torch.uint8)
        >>> batched_outputs(lambda x: x.mean(dim=(2, 3)), images, probe_preprocessing(8, "none", "none")).shape
        torch.Size([70, 3])
    """
    transform = eval_transform(prep)
    return torch.cat([network(transform(images[rows])) for rows in batch_slices(len(images))])


def pooled_features(
    backbone: torch.nn.Module, images: torch.Tensor, prep: Preprocessing, pool: str = "avg"
) -> np.ndarray:
    """``[N, D]`` features: the backbone's last feature map pooled by ``POOLS[pool]``.

    Args:
        backbone: A timm EfficientNet.
        images: uint8 ``[N, 3, S, S]``.
        prep: The normalisation.
        pool: ``avg`` (timm's default), ``max`` (the most activated place: a lesion is local, a source's look is
            global) or ``avgmax`` (both, concatenated).
    """
    return batched_outputs(lambda x: POOLS[pool](backbone.forward_features(x)), images, prep).numpy()


def multilevel_maps(backbone: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Average-pooled outputs of the last three blocks and of the head conv, concatenated (mid-level beside top).

    Args:
        backbone: A timm EfficientNet.
        x: Normalised images ``[B, 3, S, S]``.
    """
    # With extra_blocks, an integer n takes the outputs of the last n blocks; the first value is the head conv's.
    head, taps = backbone.forward_intermediates(x, indices=3, extra_blocks=True)
    return torch.cat([maps.mean(dim=(2, 3)) for maps in [*taps, head]], dim=1)


def multilevel_features(backbone: torch.nn.Module, images: torch.Tensor, prep: Preprocessing) -> np.ndarray:
    """:func:`multilevel_maps` of ``images`` (uint8 ``[N, 3, S, S]``) as ``[N, D]`` features."""
    return batched_outputs(lambda x: multilevel_maps(backbone, x), images, prep).numpy()


def channel_style(maps: torch.Tensor) -> Style:
    """Per-image channel means and standard deviations ``[N, C, 1, 1]`` of feature maps ``[N, C, H, W]``.

    Example:
        >>> mean, std = channel_style(torch.arange(8.0).reshape(1, 2, 2, 2))
        >>> mean.shape, mean.flatten().tolist()
        (torch.Size([1, 2, 1, 1]), [1.5, 5.5])
    """
    return maps.mean(dim=(2, 3), keepdim=True), maps.std(dim=(2, 3), keepdim=True) + STYLE_EPSILON


def restyle(maps: torch.Tensor, style: Style) -> torch.Tensor:
    """``maps`` with each image's channel style replaced by ``style`` (means, standard deviations), as in AdaIN.

    Example:
        >>> maps = torch.randn(2, 3, 4, 4)
        >>> target = (torch.full((3, 1, 1), 5.0), torch.full((3, 1, 1), 2.0))
        >>> mean, std = channel_style(restyle(maps, target))
        >>> bool(torch.allclose(mean, torch.tensor(5.0))), bool(torch.allclose(std, torch.tensor(2.0), atol=1e-3))
        (True, True)
    """
    mean, std = channel_style(maps)
    return (maps - mean) / std * style[1] + style[0]


def restyled_maps(backbone: torch.nn.Module, x: torch.Tensor, block: int, style: Style) -> torch.Tensor:
    """The last feature map (as ``forward_features``) with the style after ``blocks[block]`` set to ``style``.

    Args:
        backbone: A timm EfficientNet.
        x: Normalised images ``[B, 3, S, S]``.
        block: Index into ``backbone.blocks``.
        style: Means and standard deviations, ``[C, 1, 1]`` for all images or ``[B, C, 1, 1]`` one per image.
    """
    # An explicit walk: timm's forward_intermediates can read the maps between blocks but not change them.
    x = backbone.bn1(backbone.conv_stem(x))
    for index, stage in enumerate(backbone.blocks):
        x = stage(x)
        if index == block:
            x = restyle(x, style)
    return backbone.bn2(backbone.conv_head(x))


def block_styles(backbone: torch.nn.Module, images: torch.Tensor, prep: Preprocessing, block: int) -> Style:
    """Every image's style after ``backbone.blocks[block]``: means and standard deviations ``[N, C, 1, 1]``.

    Args:
        backbone: A timm EfficientNet.
        images: uint8 ``[N, 3, S, S]``.
        prep: The normalisation.
        block: Index into ``backbone.blocks``.
    """

    def style(x: torch.Tensor) -> torch.Tensor:
        # forward_intermediates numbers the stem 0 and blocks[i] i + 1; stop_early skips the blocks above.
        (maps,) = backbone.forward_intermediates(
            x, indices=[block + 1], extra_blocks=True, intermediates_only=True, stop_early=True
        )
        return torch.cat(channel_style(maps), dim=1)

    mean, std = batched_outputs(style, images, prep).chunk(2, dim=1)
    return mean, std


def style_free_features(
    backbone: torch.nn.Module,
    block: int,
    fit_images: torch.Tensor,
    image_sets: list[torch.Tensor],
    prep: Preprocessing,
    pool: str = "avg",
) -> list[np.ndarray]:
    """Pooled features of each of ``image_sets`` with the style after ``blocks[block]`` fixed to one style.

    The fixed style is the average over ``fit_images`` of every channel's per-image mean and standard deviation
    (instance normalisation to one style, as in AdaIN), so the frozen layers above see every image in it.

    Args:
        backbone: A timm EfficientNet.
        block: Index into ``backbone.blocks``.
        fit_images: uint8 ``[M, 3, S, S]`` whose average style is kept.
        image_sets: uint8 image tensors to compute features of.
        prep: The normalisation.
        pool: A key of :data:`POOLS`.
    """
    # Averaged per batch, then over the batches: the summation order the published tables were computed in, so
    # the features stay bit-identical (with full batches it is the plain mean up to float rounding).
    mean, std = (
        torch.stack([part.mean(0) for part in style.split(BATCH_SIZE)]).mean(0)
        for style in block_styles(backbone, fit_images, prep, block)
    )
    fixed = (mean, std)
    return [
        batched_outputs(lambda x: POOLS[pool](restyled_maps(backbone, x, block, fixed)), images, prep).numpy()
        for images in image_sets
    ]


@torch.inference_mode()
def style_swapped_views(
    backbone: torch.nn.Module,
    images: torch.Tensor,
    prep: Preprocessing,
    main_source: torch.Tensor,
    donor: torch.Tensor,
    *,
    count: int,
    block: int,
    seed: int = 0,
) -> np.ndarray:
    """``[count, N, D]`` timm-pooled features of ``images``, each in the style of an image of the other source.

    Each view gives every image the style after ``blocks[block]`` of a random donor (seeded) from the other kind
    of source, so a main-source image is seen in another source's style and the other way round.

    Args:
        backbone: A timm EfficientNet.
        images: uint8 ``[N, 3, S, S]``.
        prep: The normalisation.
        main_source: ``[N]`` bool, whether each image comes from the main source.
        donor: ``[N]`` bool, which images may lend their style.
        count: Views to make.
        block: Index into ``backbone.blocks``.
        seed: Seed of the donors' draw.
    """
    style_mean, style_std = block_styles(backbone, images, prep, block)
    transform = eval_transform(prep)
    generator = torch.Generator().manual_seed(seed)
    main_index = torch.nonzero(main_source & donor).flatten()
    other_index = torch.nonzero(~main_source & donor).flatten()
    views = []
    for _ in range(count):
        donors = torch.empty(len(images), dtype=torch.long)
        donors[main_source] = other_index[
            torch.randint(len(other_index), (int(main_source.sum()),), generator=generator)
        ]
        donors[~main_source] = main_index[
            torch.randint(len(main_index), (int((~main_source).sum()),), generator=generator)
        ]
        view = [
            backbone.forward_head(
                restyled_maps(
                    backbone, transform(images[rows]), block, (style_mean[donors[rows]], style_std[donors[rows]])
                )
            )
            for rows in batch_slices(len(images))
        ]
        views.append(torch.cat(view).numpy())
    return np.stack(views)


def augmented_views(
    backbone: torch.nn.Module, images: torch.Tensor, prep: Preprocessing, augment: AugmentConfig, *, count: int
) -> np.ndarray:
    """``[count, N, D]`` average-pooled features of ``images`` under ``augment``, in their order.

    Seeds torch's global generator with 0 first. The gamma and CLAHE steps draw from Python's ``random``, which is
    left as it is, so those two vary between processes unless the caller seeds it.

    Args:
        backbone: A timm EfficientNet.
        images: uint8 ``[N, 3, S, S]``.
        prep: The normalisation.
        augment: The augmentation applied to each image (uint8 in, uint8 out).
        count: Views to make.
    """
    transform = augmentation_transform(augment, prep)
    torch.manual_seed(0)
    return np.stack(
        [pooled_features(backbone, torch.stack([transform(image) for image in images]), prep) for _ in range(count)]
    )
