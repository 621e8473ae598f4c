"""Preprocessing stored with each model, and the transforms built from it.

Images are resized once to the model's square size (as the seed did: no aspect-ratio padding) and
kept as uint8 tensors; the transforms below then augment (torchvision v2) and normalise them. The
evaluation transform is plain torch (:class:`Normalise`, the same numbers as torchvision's), and
torchvision, scipy and kornia are imported only by the functions that use them: importing torchvision
imports torch's compiler, seconds that a one-image prediction does not need.

Example:
    >>> import torch
    >>> prep = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> image = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    >>> eval_transform(prep)(image).max().item()
    1.0
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torchvision.transforms import v2

    from braintumor.config import AugmentConfig

Interpolation = Literal["nearest", "bilinear", "bicubic"]
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


class Preprocessing(BaseModel):
    """How raw pixels become model input; saved in every bundle's ``config.json``."""

    model_config = ConfigDict(extra="forbid")

    image_size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: Interpolation = "bilinear"
    resize: Literal["squash"] = "squash"
    crop: Literal["none", "head"] = "none"
    intensity: Literal["none", "equalize", "clahe", "window"] = "none"


def head_bounding_box(grey: np.ndarray, *, margin: float = 0.02) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the head in a grey slice, or ``None`` when no head stands out.

    Foreground is what is brighter than a tenth of the 99th percentile; the head is its largest
    connected region, so burnt-in text, rulers and stray noise do not stretch the box.

    Example:
        >>> slice_ = np.zeros((100, 200), dtype=np.uint8)
        >>> slice_[20:80, 120:180] = 150
        >>> head_bounding_box(slice_, margin=0.0)
        (20, 80, 120, 180)
    """
    height, width = grey.shape
    level = percentile_99(grey)
    if level <= 0:
        return None
    region = largest_region(grey > 0.1 * level)
    if region is None:
        return None
    rows, cols = region
    if rows.stop - rows.start < 0.1 * height or cols.stop - cols.start < 0.1 * width:
        return None
    pad_y, pad_x = round(margin * height), round(margin * width)
    return (
        max(0, rows.start - pad_y),
        min(height, rows.stop + pad_y),
        max(0, cols.start - pad_x),
        min(width, cols.stop + pad_x),
    )


def largest_region(mask: np.ndarray) -> tuple[slice, slice] | None:
    """Rows and columns spanned by the largest 4-connected region of a 2-D boolean mask (None when it is empty).

    Of regions of equal size, the one whose first pixel comes first in raster order: the region that
    ``scipy.ndimage.label`` numbers lowest, so the box is the one of its largest label (the tests compare
    them). Computed on the runs of each row, without scipy: importing ``scipy.ndimage`` took longer than a
    one-image prediction's network.

    Example:
        >>> mask = np.zeros((6, 8), dtype=bool)
        >>> mask[1:3, 1:3] = True  # 4 pixels
        >>> mask[2:5, 5:7] = True  # 6 pixels: the largest
        >>> largest_region(mask)
        (slice(2, 5, None), slice(5, 7, None))
    """
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    # Runs of True in raster order: row, first column and the column after the last.
    rows, starts = np.nonzero(steps == 1)
    ends = np.nonzero(steps == -1)[1]
    if len(starts) == 0:
        return None
    roots = _run_components(rows, starts, ends, width + 2)
    sizes = np.bincount(roots, weights=ends - starts)
    # The largest region, the first in raster order on a tie; a region's id is the index of its first run.
    chosen = roots == int(np.flatnonzero(sizes == sizes.max())[0])
    return (
        slice(int(rows[chosen].min()), int(rows[chosen].max()) + 1),
        slice(int(starts[chosen].min()), int(ends[chosen].max())),
    )


def _run_components(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, stride: int) -> np.ndarray:
    """For each run, the index of the first run of its 4-connected region (runs in raster order)."""
    # Run b touches run a of the row above when a ends after b starts and starts before b ends; those runs of
    # the row above are consecutive, found by binary search on keys that order runs by row, then column.
    start_keys, end_keys = rows * stride + starts, rows * stride + ends
    above = (rows - 1) * stride
    first = np.searchsorted(end_keys, above + starts, side="right")
    stop = np.searchsorted(start_keys, above + ends, side="left")
    counts = np.maximum(stop - first, 0)
    lower = np.repeat(np.arange(len(rows)), counts)
    upper = np.repeat(first, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    parent = list(range(len(rows)))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for a, b in zip(upper.tolist(), lower.tolist(), strict=True):
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    return np.array([find(index) for index in range(len(rows))], dtype=np.int64)


def percentile_99(grey: np.ndarray) -> float:
    """``np.percentile(grey, 99)`` (linear interpolation), from a histogram when ``grey`` is uint8.

    Example:
        >>> grey = np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)
        >>> percentile_99(grey) == float(np.percentile(grey, 99))
        True
    """
    if grey.dtype != np.uint8 or grey.size == 0:
        return float(np.percentile(grey, 99))
    # The values at sorted positions floor(r) and floor(r) + 1, r = 0.99 (n - 1), read off the cumulative
    # histogram, then numpy's own linear interpolation between them (numpy.lib._function_base_impl._lerp).
    cumulative = np.cumsum(np.bincount(grey.ravel(), minlength=256))
    rank = np.float64(0.99) * (grey.size - 1)
    low = math.floor(rank)
    below, above = (float(np.searchsorted(cumulative, min(i, grey.size - 1), side="right")) for i in (low, low + 1))
    gamma = rank - low
    difference = above - below
    return float(above - difference * (1 - gamma) if gamma >= 0.5 else below + difference * gamma)


def crop_to_head(image: Image.Image) -> Image.Image:
    """Crop an RGB (or grey) slice to its head's bounding box, padded with black to a square (framing removed).

    Example:
        >>> slice_ = np.zeros((100, 200, 3), dtype=np.uint8)
        >>> slice_[20:80, 120:180] = 150
        >>> crop_to_head(Image.fromarray(slice_)).size  # 60 px plus a 2% margin on each side
        (68, 68)
    """
    box = head_bounding_box(np.asarray(image.convert("L")))
    if box is None:
        return image
    top, bottom, left, right = box
    cropped = image.crop((left, top, right, bottom))
    side = max(cropped.size)
    square = Image.new(image.mode, (side, side))
    square.paste(cropped, ((side - cropped.width) // 2, (side - cropped.height) // 2))
    return square


def equalize_intensity(image: Image.Image) -> Image.Image:
    """Histogram-equalise a slice so that scanners' and sequences' contrast settings matter less.

    Applied after resizing, at training and inference alike (it is part of the stored preprocessing).

    Example:
        >>> dim = Image.fromarray(np.tile(np.arange(0, 64, dtype=np.uint8), (8, 1)))
        >>> np.asarray(equalize_intensity(dim.convert("RGB"))).max()  # the dim ramp now spans the range
        np.uint8(255)
    """
    return ImageOps.equalize(image)


WINDOW_PERCENTILES = (1.0, 99.0)


def window_intensity(image: Image.Image, percentiles: tuple[float, float] = WINDOW_PERCENTILES) -> Image.Image:
    """Stretch a slice's contrast so the head's 1st and 99th intensity percentiles become black and white.

    The per-image intensity normalisation of MRI pipelines: sources differ in windowing (some export dim,
    low-contrast slices, others bright, well-windowed ones), and a classifier should not tell them apart by
    that. Only head pixels (brighter than a tenth of the 99th percentile, as in :func:`head_bounding_box`)
    set the window, so the amount of black background does not. Applied after resizing, at training and
    inference alike (it is part of the stored preprocessing).

    Example:
        >>> dim = np.zeros((8, 64), dtype=np.uint8)
        >>> dim[:, 8:] = np.arange(10, 66, dtype=np.uint8)  # a dim head on a black background
        >>> out = np.asarray(window_intensity(Image.fromarray(dim).convert("RGB")))
        >>> int(out[:, :8].max()), int(out.max())
        (0, 255)
    """
    pixels = np.asarray(image, dtype=np.float32)
    grey = pixels.mean(axis=2)
    level = float(np.percentile(grey, 99))
    head = grey[grey > 0.1 * level]
    if level <= 0 or head.size < 16:
        return image
    low, high = np.percentile(head, percentiles)
    if high - low < 1.0:
        return image
    stretched = np.clip((pixels - low) * (255.0 / (high - low)), 0.0, 255.0)
    return Image.fromarray(np.rint(stretched).astype(np.uint8))


def resize_to_uint8_tensor(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Resize an RGB PIL image to the model's square size and return a ``[3, S, S]`` uint8 tensor.

    With ``prep.crop == "head"`` the slice is first cropped to the head (:func:`crop_to_head`); with
    ``prep.intensity == "equalize"`` the resized slice's histogram is equalised (:func:`equalize_intensity`),
    with ``"clahe"`` it gets contrast-limited adaptive equalisation (:func:`braintumor.data.augment.clahe_uint8`),
    with ``"window"`` its head's 1st-99th intensity percentiles are stretched to the full range
    (:func:`window_intensity`).
    """
    size = (prep.image_size, prep.image_size)
    # Most MRI slices are grey stored as RGB: crop and resize their one band (bitwise the same pixels,
    # PIL resamples each band alike) at a third of the cost, and copy it to three channels at the end.
    work = grey_band(image) or image.convert("RGB")
    if prep.crop == "head":
        work = crop_to_head(work)
    resized = work.resize(size, resample=_PIL_RESAMPLE[prep.interpolation], reducing_gap=3.0)
    if prep.intensity == "equalize":
        resized = equalize_intensity(resized.convert("RGB"))
    elif prep.intensity == "window":
        resized = window_intensity(resized.convert("RGB"))
    pixels = np.asarray(resized, dtype=np.uint8)
    # numpy's copies: torch's multi-threaded permute().contiguous() of one small uint8 image
    # costs ~10 ms on a busy 2-core machine (thread-pool wake-ups), numpy's single-threaded copy ~0.2 ms.
    if pixels.ndim == 2:
        channels_first = np.broadcast_to(pixels, (3, *pixels.shape)).copy()
    else:
        channels_first = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    tensor = torch.from_numpy(channels_first)
    if prep.intensity != "clahe":
        return tensor
    from braintumor.data.augment import clahe_uint8

    return clahe_uint8(tensor)


def grey_band(image: Image.Image) -> Image.Image | None:
    """The single band of an RGB image whose three channels are equal everywhere (mode ``L``), else None.

    Example:
        >>> grey_band(Image.new("RGB", (4, 3), (7, 7, 7))).mode, grey_band(Image.new("RGB", (4, 3), (7, 8, 7)))
        ('L', None)
    """
    if image.mode != "RGB":
        return image if image.mode == "L" else None
    pixels = np.asarray(image)
    if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
        return None
    return Image.fromarray(np.ascontiguousarray(pixels[..., 0]))


class Normalise:
    """uint8 ``[..., 3, S, S]`` images to normalised float32: torchvision's ``v2.Compose([v2.ToDtype(torch.float32,
    scale=True), v2.Normalize(mean, std)])`` on tensors, the same operations in the same order (the same numbers,
    bit for bit), without importing torchvision.

    Example:
        >>> normalise = Normalise(Preprocessing(image_size=2, mean=(0.5,) * 3, std=(0.25,) * 3))
        >>> normalise(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))[0, :, 0, 0].tolist()
        [2.0, 2.0, 2.0]
    """

    def __init__(self, prep: Preprocessing) -> None:
        self.mean, self.std = list(prep.mean), list(prep.std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # torchvision's to_dtype_image: integers are scaled by 1 / (their largest value), floats only converted.
        if images.is_floating_point():
            floats = images.to(torch.float32)
        else:
            floats = images.to(torch.float32).mul_(1.0 / torch.iinfo(images.dtype).max)
        # torchvision's normalize_image (not in place: the input may be the caller's tensor).
        if floats.ndim < 3:
            raise ValueError(f"expected images of shape (..., C, H, W), got {tuple(floats.shape)}")
        mean = torch.as_tensor(self.mean, dtype=floats.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=floats.dtype).view(-1, 1, 1)
        return floats.sub(mean).div_(std)

    def __repr__(self) -> str:
        return f"Normalise(mean={self.mean}, std={self.std})"


def normalise_transform(prep: Preprocessing) -> Normalise:
    """uint8 ``[.., 3, S, S]`` to normalised float32, the last step of every pipeline."""
    return Normalise(prep)


def eval_transform(prep: Preprocessing) -> Normalise:
    """Deterministic transform for validation, testing and prediction."""
    return normalise_transform(prep)


def augmentation_transform(augment: AugmentConfig, prep: Preprocessing) -> v2.Compose:
    """The recipe's augmentation on uint8 images (no normalisation): framing, geometry, then intensity.

    Gaussian noise is not here: it needs float pixels and is added in :func:`train_transform`.
    """
    from torchvision.transforms import InterpolationMode, v2

    from braintumor.data.augment import RandomCLAHE, RandomGamma

    steps: list[v2.Transform] = []
    if not augment.enabled:
        return v2.Compose([v2.Identity()])
    size = prep.image_size
    if augment.crop_scale is not None:
        steps.append(v2.RandomResizedCrop(size, scale=(augment.crop_scale, 1.0), ratio=(0.8, 1.25), antialias=True))
    if augment.zoom_out > 0:
        # Black borders of random width, as slices framed loosely by another scanner or exporter look.
        zoom_out = v2.Compose(
            [v2.RandomZoomOut(fill=0, side_range=(1.0, 1.0 + augment.zoom_out), p=1.0), v2.Resize((size, size))]
        )
        steps.append(v2.RandomApply([zoom_out], p=augment.zoom_out_p))
    if augment.rotation_degrees or augment.zoom or augment.translate:
        steps.append(
            v2.RandomAffine(
                degrees=augment.rotation_degrees,
                translate=(augment.translate, augment.translate) if augment.translate else None,
                scale=(1.0 - augment.zoom, 1.0 + augment.zoom) if augment.zoom else None,
                interpolation=InterpolationMode.BILINEAR,
                fill=0,
            )
        )
    if augment.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if augment.gamma is not None:
        steps.append(RandomGamma(*augment.gamma))
    if augment.brightness or augment.contrast:
        steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    if augment.equalize_p:
        steps.append(v2.RandomEqualize(p=augment.equalize_p))
    if augment.clahe_p:
        steps.append(RandomCLAHE(p=augment.clahe_p))
    if augment.blur_p:
        kernel = 2 * math.ceil(3 * augment.blur_sigma) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, augment.blur_sigma))], p=augment.blur_p))
    return v2.Compose(steps) if steps else v2.Compose([v2.Identity()])


def train_transform(augment: AugmentConfig, prep: Preprocessing) -> v2.Compose:
    """Augmentation followed by normalisation, applied per image during training.

    Example:
        >>> from braintumor.config import AugmentConfig
        >>> prep = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        >>> augment = AugmentConfig(crop_scale=0.6, zoom_out=0.4, gamma=(0.5, 2.0), contrast=0.3,
        ...                         equalize_p=0.3, blur_p=0.3, noise_std=0.05)
        >>> out = train_transform(augment, prep)(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
        >>> out.shape, out.dtype, bool(out.abs().max() <= 1.0)
        (torch.Size([3, 32, 32]), torch.float32, True)
    """
    from torchvision.transforms import v2

    from braintumor.data.augment import RandomGaussianNoise

    steps: list[v2.Transform] = [augmentation_transform(augment, prep), v2.ToDtype(torch.float32, scale=True)]
    if augment.enabled and augment.noise_std:
        steps.append(RandomGaussianNoise(augment.noise_std))
    steps.append(v2.Normalize(mean=prep.mean, std=prep.std))
    return v2.Compose(steps)
