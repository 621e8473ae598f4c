"""Sanity checks that tell a meaningful saliency map from a pretty one.

* Model randomisation test (Adebayo et al., 2018, "Sanity checks for saliency maps"): re-initialise
  every weight and explain the same images again. A map that explains the model must change; one that
  only traces the image's edges does not. Reported as Spearman rank correlation between the maps
  before and after; the check passes when the mean absolute correlation is below 0.5.
* Label randomisation test (the same paper's data randomisation test): fit the head again to the labels of
  labelled images shuffled at random, so that they say nothing about the images, and explain again; the maps
  must stop agreeing as well. For a frozen-backbone bundle the head is all that training fitted, so this is the
  paper's test; for a network trained end to end only the head forgets the labels (``scope`` says which).
* Deletion curve (Petsiuk et al., 2018, RISE): black out the most-attributed pixels first, in steps,
  and follow the target class's probability. A faithful map makes it fall faster than deleting in a
  random order; reported as the areas under both curves (lower is faster), which must be ordered.
  The random order has the map's own granularity: for a Grad-CAM map computed on a 7x7 feature grid it
  comes from a random 7x7 map upsampled the same way, so both curves delete smooth blobs. Scattered
  random pixels would be an unfair control: black salt noise is far from any training image and knocks
  a CNN's score down faster than removing the evidence itself (measured on MRI slices, see docs/explain.md).

Example:
    >>> import torch
    >>> from braintumor.config import Recipe
    >>> from braintumor.models import create_model
    >>> recipe = Recipe.model_validate(
    ...     {"name": "tiny", "data": {"image_size": 32},
    ...      "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]}})
    >>> model = create_model(recipe).eval()
    >>> edges = lambda net, x, targets: x.diff(dim=-1).abs().sum(dim=1)  # ignores the network entirely
    >>> result = model_randomisation_test(model, torch.rand(3, 3, 32, 32), [0, 1, 2], edges)
    >>> result.passed, round(result.mean_abs_rank_correlation, 2)
    (False, 1.0)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import spearmanr

from braintumor.inference.predictor import softmax_with_temperature

# Maps explain the model when randomising it leaves at most a weak rank agreement (|rho| < 0.5);
# Adebayo et al. report |rho| near 1 for input-driven methods and near 0 for Grad-CAM after randomisation.
RANDOMISATION_MAX_MEAN_ABS_RHO = 0.5

ExplainFunction = Callable[[nn.Module, torch.Tensor, Sequence[int]], torch.Tensor]

# A vision transformer's learnt tokens and position embeddings are parameters of the model itself, which has
# no reset_parameters: they are redrawn as timm initialises them (truncated normal, std 0.02).
TOKEN_PARAMETERS = ("cls_token", "dist_token", "reg_token", "pos_embed")
TOKEN_INIT_STD = 0.02


@dataclass
class RandomisationResult:
    """Rank correlations between maps of the trained and of the re-initialised model."""

    rank_correlations: list[float]
    mean_abs_rank_correlation: float
    threshold: float
    passed: bool
    reinitialised_modules: int
    constant_maps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeletionSettings:
    """How deletion curves are measured; the map under test and its random reference share them."""

    steps: int = 16  # deletion steps: each curve has steps + 1 points, from nothing to everything deleted
    random_orders: int = 3  # random orders averaged into the reference curve
    grid: tuple[int, int] | None = None  # the maps' native resolution (see random_order); None: single pixels
    seed: int = 0
    temperature: float = 1.0  # the bundle's, so scores are the probabilities its predictor reports


@dataclass
class DeletionResult:
    """Mean target-class probability as the most-attributed (or random) pixels are deleted."""

    fractions: list[float]
    attributed_scores: list[float]
    random_scores: list[float]
    auc_attributed: float
    auc_random: float
    per_image_auc_attributed: list[float]
    per_image_auc_random: list[float]
    passed: bool
    images_faster_than_random: int = 0
    random_grid: list[int] | None = None  # resolution of the random maps; None: single pixels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def randomised_copy(model: nn.Module, seed: int = 0) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every layer that can be re-initialised reset to a fresh random state.

    Layers reset through their own ``reset_parameters`` (PyTorch's initialisation for convolutions,
    linear and normalisation layers, running statistics included); a vision transformer's class, distillation
    and register tokens and its position embedding are redrawn. Returns the copy (eval mode) and how many
    modules were reset.
    """
    clone = copy.deepcopy(model)
    reset = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            reset_parameters = getattr(module, "reset_parameters", None)
            if callable(reset_parameters):
                reset_parameters()
                reset += 1
            tokens = [t for name in TOKEN_PARAMETERS if isinstance(t := getattr(module, name, None), nn.Parameter)]
            with torch.no_grad():
                for token in tokens:
                    nn.init.trunc_normal_(token, std=TOKEN_INIT_STD)
            if tokens and not callable(reset_parameters):
                reset += 1
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                # A reset BatchNorm is the identity in eval mode; random affine terms keep it a random layer.
                with torch.no_grad():
                    if module.weight is not None:
                        module.weight.normal_(1.0, 0.1)
                        module.bias.normal_(0.0, 0.1)
    clone.eval()
    clone.requires_grad_(False)
    return clone, reset


def rank_correlation(first: torch.Tensor, second: torch.Tensor) -> float | None:
    """Spearman's rho between two maps, ``None`` when either is constant (it ranks nothing)."""
    a, b = first.flatten().double().numpy(), second.flatten().double().numpy()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def model_randomisation_test(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[int],
    explain: ExplainFunction,
    *,
    seed: int = 0,
    threshold: float = RANDOMISATION_MAX_MEAN_ABS_RHO,
    original: torch.Tensor | None = None,
) -> RandomisationResult:
    """Explain ``inputs`` with ``model`` and with a re-initialised copy; maps must stop agreeing.

    ``explain(model, inputs, targets)`` returns one map per input; ``original`` passes the trained
    model's maps when they are already computed. A map that became constant after randomisation
    counts as rho = 0 (it keeps no ranking of the original).
    """
    if original is None:
        original = explain(model, inputs, targets)
    randomised_model, reset = randomised_copy(model, seed)
    rhos, constant = _rank_correlations(original, explain(randomised_model, inputs, targets))
    mean_abs = float(np.mean(np.abs(rhos))) if rhos else float("nan")
    return RandomisationResult(rhos, mean_abs, threshold, bool(mean_abs < threshold), reset, constant)


@dataclass
class LabelRandomisationResult:
    """Rank correlations between maps of the trained model and of one whose head learnt random labels.

    ``scope`` is what was re-trained: the head (for a frozen-backbone bundle that is everything training fitted;
    for a network trained end to end the backbone keeps what the true labels taught it, a weaker test).
    ``fit_accuracy`` is the head's accuracy on the shuffled labels it learnt: near 1 when it memorised them.
    """

    rank_correlations: list[float]
    mean_abs_rank_correlation: float
    threshold: float
    passed: bool
    scope: str
    n_labelled: int
    fit_accuracy: float
    constant_maps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Full-batch Adam steps that fit a re-initialised head to shuffled labels (a few hundred images memorise in fewer).
LABEL_FIT_STEPS = 300
LABEL_FIT_LR = 0.01


@dataclass(frozen=True)
class RefitPart:
    """What a label randomisation test re-trains: ``parts(copy)`` are the modules of a copy of the model that are
    re-initialised and fitted, and ``logits(copy, inputs)`` reads the cached inputs of those parts (the backbone's
    features for the head; a transformer's tokens entering its last block for that block and the head)."""

    parts: Callable[[nn.Module], list[nn.Module]]
    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    steps: int = LABEL_FIT_STEPS
    learning_rate: float = LABEL_FIT_LR


# The head alone, on the backbone's features.
HEAD = RefitPart(lambda model: [model.head], lambda model, features: model.head(features))


def random_label_copy(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, seed: int = 0, refit: RefitPart = HEAD
) -> tuple[nn.Module, float]:
    """A copy of ``model`` whose ``refit`` part (default the head) was re-initialised and fitted to a random
    permutation of ``labels``.

    The data randomisation test of Adebayo et al. (2018) trains on permuted labels, so the labels carry no
    information about the images; here the re-trained part learns them from its cached ``inputs`` for labelled
    images. Returns the copy (eval mode, frozen) and its accuracy on the permuted labels.
    """
    clone = copy.deepcopy(model)
    parts = refit.parts(clone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        shuffled = labels[torch.randperm(len(labels))]
        parameters = []
        for part in parts:
            for module in part.modules():
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
            part.requires_grad_(True)
            part.train()
            parameters += list(part.parameters())
        optimizer = torch.optim.Adam(parameters, lr=refit.learning_rate)
        with torch.enable_grad():
            for _ in range(refit.steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(refit.logits(clone, inputs), shuffled).backward()
                optimizer.step()
    clone.eval()
    clone.requires_grad_(False)
    with torch.no_grad():
        accuracy = float((refit.logits(clone, inputs).argmax(dim=1) == shuffled).float().mean())
    return clone, accuracy


def label_randomisation_test(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[int],
    explain: ExplainFunction,
    labelled_features: torch.Tensor,
    labels: torch.Tensor,
    *,
    scope: str,
    seed: int = 0,
    threshold: float = RANDOMISATION_MAX_MEAN_ABS_RHO,
    original: torch.Tensor | None = None,
    refit: RefitPart = HEAD,
) -> LabelRandomisationResult:
    """Explain ``inputs`` with ``model`` and with a copy whose head learnt shuffled labels; maps must stop agreeing.

    ``labelled_features`` are the inputs of the ``refit`` part (default: the backbone's features, for the head) for
    labelled images (``labels``); that part of the copy is fitted to those labels permuted
    (:func:`random_label_copy`). A map that only reflects the image, not what the labels taught, survives the
    shuffle and fails.
    """
    if original is None:
        original = explain(model, inputs, targets)
    shuffled_model, fit_accuracy = random_label_copy(model, labelled_features, labels, seed, refit)
    rhos, constant = _rank_correlations(original, explain(shuffled_model, inputs, targets))
    mean_abs = float(np.mean(np.abs(rhos))) if rhos else float("nan")
    passed = bool(mean_abs < threshold)
    return LabelRandomisationResult(rhos, mean_abs, threshold, passed, scope, len(labels), fit_accuracy, constant)


def _rank_correlations(before: torch.Tensor, after: torch.Tensor) -> tuple[list[float], int]:
    """Spearman's rho of each pair of maps; a map that became constant counts as 0 (it keeps no ranking)."""
    rhos: list[float] = []
    constant = 0
    for first, second in zip(before, after, strict=True):
        rho = rank_correlation(first, second)
        if rho is None:
            constant += 1
            rho = 0.0
        rhos.append(rho)
    return rhos, constant


@torch.no_grad()
def _deletion_scores(
    model: nn.Module,
    image: torch.Tensor,
    target: int,
    order: torch.Tensor,
    fill: torch.Tensor,
    settings: DeletionSettings,
) -> np.ndarray:
    """Target probability after deleting the first ``k`` pixels of ``order`` for ``steps + 1`` values of k."""
    steps = settings.steps
    channels, height, width = image.shape
    n_pixels = height * width
    batch = []
    for step in range(steps + 1):
        deleted = order[: round(n_pixels * step / steps)]
        mask = torch.zeros(n_pixels, dtype=torch.bool)
        mask[deleted] = True
        mask = mask.view(1, height, width)
        batch.append(torch.where(mask, fill.view(channels, 1, 1), image))
    probabilities = softmax_with_temperature(model(torch.stack(batch)), settings.temperature)
    return probabilities[:, target].numpy()


def random_order(n_rows: int, n_columns: int, grid: tuple[int, int] | None, generator: torch.Generator) -> torch.Tensor:
    """A random pixel order: a permutation (``grid=None``) or the ranking of a random ``grid`` map upsampled
    bilinearly to the image, as class-activation maps are."""
    if grid is None:
        return torch.randperm(n_rows * n_columns, generator=generator)
    coarse = torch.rand(1, 1, *grid, generator=generator)
    smooth = F.interpolate(coarse, size=(n_rows, n_columns), mode="bilinear", align_corners=False)[0, 0]
    return torch.argsort(-smooth.flatten(), stable=True)


def random_deletion_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[int],
    fill: torch.Tensor,
    settings: DeletionSettings = DeletionSettings(),
) -> np.ndarray:
    """Deletion scores ``[N, steps + 1]`` in random orders (mean of ``settings.random_orders``): the reference curve.

    ``settings.grid`` gives the random maps the granularity of the maps under test (see :func:`random_order`).
    It does not depend on the map itself, so one computation serves every method on the same grid.
    """
    model = model.eval()
    generator = torch.Generator().manual_seed(settings.seed)
    n_rows, n_columns = inputs.shape[-2:]
    curves = []
    for image, target in zip(inputs, targets, strict=True):
        repeats = [
            _deletion_scores(
                model, image, int(target), random_order(n_rows, n_columns, settings.grid, generator), fill, settings
            )
            for _ in range(settings.random_orders)
        ]
        curves.append(np.mean(repeats, axis=0))
    return np.asarray(curves)


def deletion_curve(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Sequence[int],
    maps: torch.Tensor,
    fill: torch.Tensor,
    settings: DeletionSettings = DeletionSettings(),
    *,
    random_scores: np.ndarray | None = None,
) -> DeletionResult:
    """Deletion curves for ``maps`` (most-attributed pixels first) against random pixel orders.

    ``fill`` is the normalised value of a deleted pixel per channel (the preprocessing's black).
    AUCs are trapezoid areas over the deleted fraction in [0, 1]; lower means the score fell faster.
    ``settings.grid`` is the maps' native resolution (e.g. the Grad-CAM layer's ``(h, w)``; ``None`` for
    pixel-level maps). ``random_scores`` reuses a :func:`random_deletion_scores` result with the same settings.
    """
    model = model.eval()
    steps = settings.steps
    fractions = np.linspace(0.0, 1.0, steps + 1)
    if random_scores is None:
        random_scores = random_deletion_scores(model, inputs, targets, fill, settings)
    if random_scores.shape != (len(inputs), steps + 1):
        raise ValueError(f"random_scores has shape {random_scores.shape}, expected {(len(inputs), steps + 1)}")
    attributed = []
    for image, target, saliency in zip(inputs, targets, maps, strict=True):
        # Stable sort on the negated map: ties (flat upsampled regions) keep raster order, reproducibly.
        order = torch.argsort(-saliency.flatten(), stable=True)
        attributed.append(_deletion_scores(model, image, int(target), order, fill, settings))
    attributed_array, random_array = np.asarray(attributed), np.asarray(random_scores)
    per_image_attributed = [float(np.trapezoid(curve, fractions)) for curve in attributed_array]
    per_image_random = [float(np.trapezoid(curve, fractions)) for curve in random_array]
    auc_attributed = float(np.mean(per_image_attributed))
    auc_random = float(np.mean(per_image_random))
    return DeletionResult(
        fractions=fractions.tolist(),
        attributed_scores=attributed_array.mean(axis=0).tolist(),
        random_scores=random_array.mean(axis=0).tolist(),
        auc_attributed=auc_attributed,
        auc_random=auc_random,
        per_image_auc_attributed=per_image_attributed,
        per_image_auc_random=per_image_random,
        passed=bool(auc_attributed < auc_random),
        images_faster_than_random=int(sum(a < r for a, r in zip(per_image_attributed, per_image_random, strict=True))),
        random_grid=list(settings.grid) if settings.grid is not None else None,
    )
