"""The bone-ring rule: a head CT's white skull ring is flagged as looking like a head CT, an MR slice's bright scalp
fat (with the dark skull inside it) is not, CT-like training images are left out of the fit, and guards fitted
before the rule score as they did."""

from __future__ import annotations

import numpy as np
import torch

from braintumor.guard import GuardInputs, GuardSpec, InputGuard, fit_guard
from braintumor.guard.defaults import BONE_RING_RULE
from braintumor.guard.evidence import ALL_EVIDENCE_NAMES, EVIDENCE_NAMES, bone_ring_score, image_evidence
from braintumor.guard.reasons import CT_LIKE, FLAG_REASONS, NOT_AN_MRI

SIZE = 128


def _head(rng: np.random.Generator, ring: str) -> torch.Tensor:
    """A [3, S, S] uint8 axial head: ``ring`` "ct" (white skull right around grey brain), "fat" (white scalp, dark
    skull, grey brain: T1 MR) or "none" (grey head, no white)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1) * 2 - 1
    radius = np.hypot(xx / rng.uniform(0.75, 0.85), yy / rng.uniform(0.85, 0.95))
    brain = rng.uniform(90, 130)
    grey = np.where(radius < 1, brain, 0.0) + rng.normal(0, 6, radius.shape) * (radius < 1)
    if ring == "ct":
        grey[(radius < 1) & (radius > 0.9)] = 255
    elif ring == "fat":
        grey[(radius < 1) & (radius > 0.92)] = 255
        grey[(radius <= 0.92) & (radius > 0.84)] = 8  # the skull: no MR signal
    return torch.from_numpy(np.clip(grey, 0, 255).astype(np.uint8)).expand(3, -1, -1).contiguous()


def _batch(count: int, ring: str, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([_head(rng, ring) for _ in range(count)])


def test_a_white_skull_ring_scores_above_one_and_bright_scalp_fat_does_not() -> None:
    scores = {ring: bone_ring_score(image_evidence(_batch(6, ring, 0)), BONE_RING_RULE) for ring in ("ct", "fat")}
    assert (scores["ct"] > 1).all()
    assert (scores["fat"] < 1).all()
    assert bone_ring_score(image_evidence(_batch(6, "none", 0)), BONE_RING_RULE).max() == 0
    assert image_evidence(_batch(1, "ct", 0)).shape[1] == len(ALL_EVIDENCE_NAMES)


def test_fewer_evidence_columns_give_no_bone_ring_score() -> None:
    evidence = image_evidence(_batch(2, "ct", 0))[:, : len(EVIDENCE_NAMES)]
    assert bone_ring_score(evidence, BONE_RING_RULE).tolist() == [0.0, 0.0]


def _inputs(images: torch.Tensor, seed: int) -> GuardInputs:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(images), 8, generator=generator)
    return GuardInputs(features, features[:, :4], image_evidence(images))


def test_ct_like_training_images_are_left_out_and_flagged_as_head_ct() -> None:
    train_images = torch.cat([_batch(60, "none", 1), _batch(20, "fat", 2), _batch(4, "ct", 3)])
    val_images = torch.cat([_batch(30, "none", 4), _batch(10, "fat", 5), _batch(2, "ct", 6)])
    train, val = _inputs(train_images, 0), _inputs(val_images, 1)
    labels = torch.arange(len(train_images)) % 4
    guard = fit_guard(train, labels, val)
    assert guard.spec.bone_ring == list(BONE_RING_RULE) and guard.spec.ct_like_left_out == 6
    assert guard.spec.n_train == 80 and guard.spec.n_val == 40
    scores = guard.score(_inputs(_batch(5, "ct", 7), 2))
    assert scores.flagged.all() and (scores.bone_ring > 1).all()
    assert all(reason == CT_LIKE for reason in scores.reasons)
    assert not CT_LIKE.text.startswith(NOT_AN_MRI) and FLAG_REASONS[-1] == CT_LIKE
    fat = guard.score(_inputs(_batch(10, "fat", 8), 3))
    assert not any(reason == CT_LIKE for reason in fat.reasons)
    plain = fit_guard(train, labels, val, bone_ring=None)
    assert plain.spec.bone_ring is None and plain.spec.ct_like_left_out == 0 and plain.spec.n_train == 84


def test_a_guard_fitted_before_the_rule_scores_as_before() -> None:
    images = torch.cat([_batch(40, "none", 1), _batch(8, "ct", 2)])
    train, val = _inputs(images, 0), _inputs(_batch(20, "none", 3), 1)
    fitted = fit_guard(train, torch.arange(len(images)) % 4, val, bone_ring=None)
    old_fields = {k: v for k, v in fitted.spec.model_dump().items() if k not in {"bone_ring", "ct_like_left_out"}}
    old = InputGuard(GuardSpec.model_validate(old_fields), fitted.state)
    assert old.spec.bone_ring is None
    probe = _inputs(_batch(6, "ct", 4), 2)
    short = GuardInputs(probe.features, probe.logits, probe.evidence[:, : len(EVIDENCE_NAMES)])
    full, five = old.score(probe), old.score(short)
    assert torch.equal(full.ood_score, five.ood_score) and torch.equal(full.reason_index, five.reason_index)
    assert CT_LIKE not in full.reasons
