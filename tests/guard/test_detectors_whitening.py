"""The Mahalanobis detector scores through a whitening prepared once per guard: the same scores as the direct
formula (pytorch-ood's), and a guard built from a stored state uses it."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from braintumor.guard.detectors import create_detector, mahalanobis_score, whiten_mahalanobis


def _fitted(width: int = 24) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    features = torch.randn(400, width, generator=generator) @ torch.randn(width, width, generator=generator)
    labels = torch.arange(400) % 4
    state = create_detector("mahalanobis").fit(features, labels, torch.zeros(400, 4))
    return state, torch.randn(32, width, generator=generator).double() * 4


def test_whitened_scores_equal_the_direct_formula() -> None:
    state, queries = _fitted()
    detector = create_detector("mahalanobis")
    direct = mahalanobis_score(state["mu"].double(), state["precision"].double(), queries).float()
    prepared = whiten_mahalanobis(state)
    assert set(prepared) == {"whiten", "mu_white"}
    whitened = detector.score(prepared, queries.float(), torch.zeros(32, 4))
    assert torch.allclose(whitened, direct, rtol=1e-5, atol=1e-5)
    # The stored state still scores (fitting checks its thresholds on it) and gives the same numbers.
    assert torch.allclose(detector.score(state, queries.float(), torch.zeros(32, 4)), direct)


def test_a_precision_that_is_not_positive_definite_keeps_the_direct_formula() -> None:
    state, queries = _fitted(4)
    broken = {"mu": state["mu"], "precision": -torch.eye(4)}
    prepared = whiten_mahalanobis(broken)
    assert "whiten" not in prepared
    expected = mahalanobis_score(broken["mu"].double(), broken["precision"].double(), queries).float()
    assert torch.equal(create_detector("mahalanobis").score(prepared, queries.float(), torch.zeros(32, 4)), expected)


def test_a_guard_scores_with_its_prepared_whitening() -> None:
    from braintumor.guard.guard import InputGuard

    state, _ = _fitted()

    spec = SimpleNamespace(detector="mahalanobis", evidence_low=[], evidence_high=[])
    guard = InputGuard(spec, state)  # type: ignore[arg-type]
    assert set(guard._scoring) == {"whiten", "mu_white"} and set(guard.state) == set(state)
