"""The site-adaptation benchmark's protocol (``benchmarks/lib/site_adaptation.py``): cross-adaptation of an
ensemble, and the network proxy's held-out and validation rows, on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lib.site_adaptation import Member, choose_on_proxy, cross_adapt, network_proxy_rows, transductive

from braintumor.adaptation import HeadState, SourceStats
from tests.adaptation.test_adaptation import DIMS, _blobs, _source_head


def test_cross_adaptation_of_an_ensemble_averages_its_adapted_members() -> None:
    rng = np.random.default_rng(0)
    head, source = _source_head()
    target, labels = _blobs(rng, 200, 1.4, 0.5)
    strata = labels.numpy()
    single = cross_adapt("standardize", [Member(target, head, source)], strata)
    # Two copies of one member, weighted 0.5 each, are that member; the pooled folds close the shift.
    twice = cross_adapt("standardize", [Member(target, head, source)] * 2, strata, weights=[0.5, 0.5])
    assert np.allclose(single, twice) and np.allclose(np.exp(single).sum(1), 1.0)
    unadapted = cross_adapt("none", [Member(target, head, source)], strata)
    assert np.mean(single.argmax(1) == strata) - np.mean(unadapted.argmax(1) == strata) > 0.15
    expected = torch.log_softmax(head.logits(target), dim=1).numpy()
    assert np.allclose(transductive("none", [Member(target, head, source)]), expected)


def test_a_network_proxy_scores_its_own_held_out_images_and_validation_rows() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 40)
    centres = rng.normal(0.0, 3.0, (4, DIMS))
    features = torch.tensor(centres[labels] + rng.normal(0.0, 1.0, (len(labels), DIMS)))
    main_source = np.ones(len(labels), dtype=bool)
    main_source[40:60] = False  # 20 meningiomas from another source: held out of the proxy network's training
    val = np.arange(0, len(labels), 4)
    head = HeadState(torch.tensor(centres), torch.tensor(-0.5 * (centres**2).sum(1)))  # nearest centre
    source = SourceStats(torch.zeros(DIMS), torch.full((DIMS,), 3.0), torch.full((4,), 0.25))
    rows = network_proxy_rows("meningioma", Member(features, head, source), labels, main_source, val, ["none", "em"])
    assert {(r["site"], r["method"], r["gated"]) for r in rows} == {
        (site, method, gated) for site in ("mixture", "shifted") for method in ("none", "em") for gated in (0, 1)
    }
    plain = next(r for r in rows if r["site"] == "mixture" and r["method"] == "none" and not r["gated"])
    held = head.logits(features[40:60]).argmax(1).numpy() == 1
    assert plain["n_held_out"] == 20 and plain["held_out_recall"] == pytest.approx(held.mean())
    assert plain["n_in_distribution"] == len(np.setdiff1d(val, np.arange(40, 60)))
    assert choose_on_proxy(rows)["chosen"] in ("none", "em")
