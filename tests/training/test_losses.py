"""Focal loss, class-weighted cross-entropy and their recipe fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from braintumor.config import Recipe, RecipeError, TrainConfig, apply_overrides
from braintumor.errors import BrainTumorError
from braintumor.training.losses import balanced_class_weights, focal_loss, resolve_class_weights, training_loss
from braintumor.training.module import ClassifierModule

# Two images, two classes; the logits [ln 3, 0] give probabilities [0.75, 0.25] exactly.
LOGITS = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
TARGETS = torch.tensor([0, 1])


def test_focal_loss_matches_hand_computed_value() -> None:
    # Image 1: p_t = 0.75, image 2: p_t = 0.25; loss_i = -(1 - p_t)^gamma * ln(p_t), gamma = 2.
    easy = (1 - 0.75) ** 2 * -math.log(0.75)  # 0.0625 * 0.28768 = 0.017980
    hard = (1 - 0.25) ** 2 * -math.log(0.25)  # 0.5625 * 1.38629 = 0.779791
    assert focal_loss(LOGITS, TARGETS, gamma=2.0).item() == pytest.approx((easy + hard) / 2, rel=1e-6)
    assert focal_loss(LOGITS, TARGETS, gamma=2.0, reduction="none").tolist() == pytest.approx([easy, hard], rel=1e-6)
    # alpha weights each image by its true class's weight and the mean divides by their sum.
    alpha = torch.tensor([1.0, 3.0])
    assert focal_loss(LOGITS, TARGETS, gamma=2.0, alpha=alpha).item() == pytest.approx(
        (1 * easy + 3 * hard) / 4, rel=1e-6
    )


def test_focal_loss_down_weights_easy_images_more_than_hard_ones() -> None:
    per_image_ce = F.cross_entropy(LOGITS, TARGETS, reduction="none")
    per_image_focal = focal_loss(LOGITS, TARGETS, gamma=2.0, reduction="none")
    ratio = (per_image_focal / per_image_ce).tolist()
    assert ratio == pytest.approx([0.25**2, 0.75**2], rel=1e-6)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 2.0, 1.0, 3.0])])
def test_gamma_zero_is_cross_entropy(weights: torch.Tensor | None) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, generator=generator) * 3
    targets = torch.randint(0, 4, (64,), generator=generator)
    expected = F.cross_entropy(logits, targets, weight=weights)
    assert torch.allclose(focal_loss(logits, targets, gamma=0.0, alpha=weights), expected, atol=1e-6)


def test_focal_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(LOGITS, TARGETS, gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(LOGITS, TARGETS, reduction="median")


def test_balanced_weights_equal_scikit_learn_and_balance_the_classes() -> None:
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10 + [3] * 20)
    weights = balanced_class_weights(labels, num_classes=4)
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels.numpy())
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    # "balanced": every class then carries the same total weight, n / C.
    totals = weights * torch.bincount(labels, minlength=4)
    np.testing.assert_allclose(totals.numpy(), np.full(4, len(labels) / 4), rtol=1e-6)


def test_balanced_weights_need_every_class() -> None:
    with pytest.raises(BrainTumorError, match=r"class index\(es\) \[2\]"):
        balanced_class_weights(torch.tensor([0, 1, 3]), num_classes=4)


def test_recipe_fields_choose_the_loss_and_weights() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    assert resolve_class_weights(TrainConfig(), labels, 2) is None
    assert resolve_class_weights(TrainConfig(class_weights="balanced"), labels, 2).tolist() == pytest.approx(
        [4 / 6, 2.0]
    )
    assert resolve_class_weights(TrainConfig(class_weights=[1, 5]), labels, 2).tolist() == [1.0, 5.0]
    with pytest.raises(BrainTumorError, match="lists 3 weights"):
        resolve_class_weights(TrainConfig(class_weights=[1, 2, 3]), labels, 2)

    recipe = Recipe.model_validate({"name": "r"})
    focal = apply_overrides(recipe, ["train.loss=focal", "train.focal_gamma=1.5", "train.class_weights=balanced"])
    assert (focal.train.loss, focal.train.focal_gamma, focal.train.class_weights) == ("focal", 1.5, "balanced")
    for bad in (
        ["train.loss=hinge"],
        ["train.class_weights=[1, -2]"],
        ["train.loss=focal", "train.label_smoothing=0.1"],
    ):
        with pytest.raises(RecipeError):
            apply_overrides(recipe, bad)


def test_training_loss_and_module_use_the_recipe() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 4, generator=generator)
    targets = torch.randint(0, 4, (16,), generator=generator)
    weights = torch.tensor([1.0, 2.0, 0.5, 1.5])
    focal_config = TrainConfig(loss="focal", focal_gamma=2.0)
    expected_focal = focal_loss(logits, targets, gamma=2.0, alpha=weights)
    assert torch.allclose(training_loss(logits, targets, focal_config, weights), expected_focal)
    ce_config = TrainConfig(label_smoothing=0.1)
    expected_ce = F.cross_entropy(logits, targets, weight=weights, label_smoothing=0.1)
    assert torch.allclose(training_loss(logits, targets, ce_config, weights), expected_ce)

    module = ClassifierModule(nn.Identity(), focal_config, num_classes=4, class_weights=weights)
    assert torch.allclose(module._loss(logits, targets), expected_focal)
    # Not persistent: a checkpoint of a weighted module has the same keys as an unweighted one.
    assert "class_weights" not in module.state_dict()
    assert torch.allclose(
        ClassifierModule(nn.Identity(), ce_config, 4)._loss(logits, targets),
        F.cross_entropy(logits, targets, label_smoothing=0.1),
    )
    with pytest.raises(ValueError, match="shape"):
        ClassifierModule(nn.Identity(), ce_config, num_classes=4, class_weights=torch.ones(3))
