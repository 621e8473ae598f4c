"""SHAP-style pixel attributions (captum's GradientShap) and the background images they compare against.

GradientShap estimates SHAP values as expected gradients: the gradient at random points between the
input and images drawn from a background set, times the difference to that background. The
background should look like the data the model was trained on, so it is drawn from the bundle's
training images (or a folder the user names). Without any, a black image and a blurred copy of the
input stand in, and the result says so.

Example:
    >>> import torch
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe).eval()
    >>> maps = shap_maps(model, torch.rand(1, 3, 32, 32), [2], torch.zeros(4, 3, 32, 32), n_samples=8)
    >>> maps.shape, bool(maps.abs().max() <= 1.0)
    (torch.Size([1, 32, 32]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from captum.attr import GradientShap
from torchvision.transforms.v2 import functional as TF

from braintumor.bundle import Bundle
from braintumor.bundle.validation import validation_samples
from braintumor.data.dataset import load_images
from braintumor.data.layout import Sample, discover_split
from braintumor.errors import BrainTumorError, DatasetLayoutError
from braintumor.explain.defaults import DEFAULT_LABELLED_IMAGES
from braintumor.inference.predictor import expand_inputs

# The share of |attribution| above which a map saturates: a few extreme pixels must not wash out the rest.
SHAP_SCALE_QUANTILE = 0.99


@dataclass
class Background:
    """Background images for SHAP (``images`` uint8 ``[B, 3, S, S]``, or ``None``) and where they came from."""

    images: torch.Tensor | None
    source: str
    note: str | None = None


def _sample_evenly(samples: list[Sample], count: int, seed: int) -> list[Sample]:
    """``count`` samples spread over the classes present (seeded), so no class is missing from the background."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    chosen: list[Sample] = []
    classes = sorted(by_class)
    for position, label in enumerate(classes):
        share = count // len(classes) + (1 if position < count % len(classes) else 0)
        members = by_class[label]
        picks = rng.choice(len(members), size=min(share, len(members)), replace=False)
        chosen.extend(members[i] for i in sorted(picks.tolist()))
    return chosen


def background_images(
    bundle: Bundle, *, count: int = 16, background_dir: Path | str | None = None, seed: int = 0
) -> Background:
    """Up to ``count`` training images at the model's size, from ``background_dir`` or the bundle's data root.

    ``background_dir`` may be a data root (with ``Training/<class>/``) or any folder of images. Without
    it, the bundle's ``config.training.data_root`` is used when that folder still exists; its
    validation images are left out. When neither gives images, ``images`` is ``None`` with a note.
    """
    if background_dir is not None:
        folder = Path(background_dir)
        if not folder.is_dir():
            raise BrainTumorError(f"background folder {folder} does not exist or is not a folder")
        try:
            samples = discover_split(folder, "Training")
        except DatasetLayoutError:
            samples = [Sample(path, 0) for path in expand_inputs([folder])]
        source = str(folder)
    else:
        data_root = bundle.config.training.data_root
        if not data_root or not Path(data_root).is_dir():
            where = f"its data root {data_root} is not on this machine" if data_root else "it records no data root"
            return Background(
                None,
                "black image + blurred input",
                f"no training images for the SHAP background ({where}; pass --background-dir): "
                "a black image and a blurred copy of each input are the baselines instead",
            )
        try:
            samples = discover_split(data_root, "Training")
        except DatasetLayoutError as error:
            note = f"no training images for the SHAP background: {error}"
            return Background(None, "black image + blurred input", note)
        held_out = set(bundle.config.training.val_paths)
        samples = [s for s in samples if str(s.path) not in held_out] or samples
        source = f"{data_root}/Training"
    if not samples:
        raise BrainTumorError(f"background folder {source} holds no images")
    chosen = _sample_evenly(samples, count, seed)
    try:
        image_set = load_images(chosen, bundle.preprocessing, show_progress=False, workers=2)
    except DatasetLayoutError as error:
        raise BrainTumorError(f"background images from {source}: {error}") from None
    return Background(image_set.images, f"{len(image_set)} training images from {source}")


def fallback_baselines(normalised_input: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
    """Two baselines for one normalised input ``[3, H, W]``: a black image and a strongly blurred copy."""
    side = normalised_input.shape[-1]
    kernel = max(3, (side // 8) | 1)  # odd kernel about an eighth of the image: the anatomy stays, the detail goes
    blurred = TF.gaussian_blur(normalised_input.unsqueeze(0), kernel_size=[kernel, kernel], sigma=kernel / 4)[0]
    return torch.stack([black.view(3, 1, 1).expand_as(normalised_input), blurred])


def scale_signed(maps: torch.Tensor) -> torch.Tensor:
    """Divide each signed map ``[N, H, W]`` by its high quantile of ``|value|`` and clip to [-1, 1]."""
    flat = maps.flatten(1).abs()
    scale = torch.quantile(flat, SHAP_SCALE_QUANTILE, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return (maps / scale).clamp(-1.0, 1.0)


def shap_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[int],
    baselines: torch.Tensor | Sequence[torch.Tensor],
    *,
    n_samples: int = 32,
    seed: int = 0,
) -> torch.Tensor:
    """GradientShap maps ``[N, H, W]`` summed over colour channels, signed, scaled to [-1, 1].

    ``baselines`` is one normalised batch ``[B, 3, H, W]`` shared by all inputs, or one such batch per
    input. Positive values pushed the score of the target class up, negative values down.
    """
    if len(targets) != len(inputs):
        raise BrainTumorError(f"{len(inputs)} inputs but {len(targets)} targets")
    explainer = GradientShap(model)
    maps = []
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)  # captum draws the baselines and interpolation points from torch's generator
        for index, target in enumerate(targets):
            reference = baselines if isinstance(baselines, torch.Tensor) else baselines[index]
            attribution = explainer.attribute(
                inputs[index : index + 1], baselines=reference, target=int(target), n_samples=n_samples, stdevs=0.0
            )
            maps.append(attribution.detach().sum(dim=1))
    return scale_signed(torch.cat(maps))


@dataclass
class LabelledImages:
    """uint8 images ``[N, 3, S, S]`` with their class labels, for the label randomisation test; or a note saying
    why there are none (``images`` None)."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    note: str | None = None


def labelled_images(bundle: Bundle, count: int = DEFAULT_LABELLED_IMAGES, seed: int = 0) -> LabelledImages:
    """Up to ``count`` images of the bundle's validation split, spread over the classes, with their labels."""
    try:
        samples = [sample for sample in validation_samples(bundle) if sample.path.is_file()]
    except BrainTumorError as error:
        return LabelledImages(None, None, f"no label randomisation test: {error}")
    if len({sample.label for sample in samples}) < 2:
        where = bundle.config.training.data_root or "its data root"
        return LabelledImages(
            None, None, f"no label randomisation test: the bundle's validation images under {where} are not here"
        )
    image_set = load_images(_sample_evenly(samples, count, seed), bundle.preprocessing, show_progress=False, workers=2)
    return LabelledImages(image_set.images, image_set.labels)
