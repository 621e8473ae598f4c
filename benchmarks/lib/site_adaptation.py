"""The site-adaptation protocol: a Training-only proxy to choose methods, and 2-fold cross-adaptation.

The proxy re-creates a new site inside Training (as :mod:`~lib.source_holdout` does for
training): a class's other-source images are held out, a probe (standardisation + logistic regression, the
lite probes' head) is trained on the rest, and the target is the held-out images mixed with the validation
split, which is in distribution, as Testing mixes copies of Training images with new sources. The target is
cut into 2 stratified folds; each method adapts on one fold's features (no labels) and is scored on the other.

Cross-adaptation on a labelled split (Testing) does the same with the bundle's own head: adapt on fold A,
predict fold B, then the reverse, and pool the predictions. Labels only score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from braintumor.adaptation.evidence import shift_evidence
from braintumor.adaptation.methods import HeadState, SourceStats
from braintumor.adaptation.pipeline import adapt_head, gate, parse_methods
from braintumor.classes import CLASS_NAMES
from braintumor.evaluation.metrics import bootstrap_confidence_intervals, classification_metrics

from .source_holdout import HELD_OUT_CLASSES, holdout_split

FOLD_SEED = 0
PROXY_C = 0.1  # the probe's regularisation, fixed a priori (the middle of source_holdout's grid)
# A method may cost the proxy's in-distribution images at most this much accuracy to be the default.
IN_DISTRIBUTION_TOLERANCE = 0.01


def two_folds(labels: np.ndarray, seed: int = FOLD_SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """Two stratified folds as ``(adapt on, evaluate on)`` pairs: A then B, B then A.

    Example:
        >>> [(len(a), len(b)) for a, b in two_folds(np.array([0, 0, 1, 1, 0, 1]))]
        [(3, 3), (3, 3)]
    """
    splitter = StratifiedKFold(n_splits=2, shuffle=True, random_state=seed)
    return [(a, b) for a, b in splitter.split(np.zeros(len(labels)), labels)]


@dataclass(frozen=True)
class Member:
    """One network's view of a target: its penultimate features, its last layer and its source statistics.

    A single bundle is one member; an ensemble's members each adapt on their own features.
    """

    features: torch.Tensor
    head: HeadState
    source: SourceStats


def _joined_source(members: Sequence[Member]) -> SourceStats:
    """The members' source statistics side by side (what the shift evidence of an ensemble reads)."""
    first = members[0].source
    mean = torch.cat([m.source.mean.double() for m in members])
    return SourceStats(mean, torch.cat([m.source.std.double() for m in members]), first.priors)


def _predict(
    methods: tuple[str, ...],
    members: Sequence[Member],
    weights: Sequence[float],
    adapt_rows: np.ndarray,
    eval_rows: np.ndarray,
    temperature: float,
) -> np.ndarray:
    """Log of the weighted mean probabilities on ``eval_rows``, each member adapted on ``adapt_rows``."""
    mixed = torch.zeros((len(eval_rows), len(members[0].head.bias)), dtype=torch.float64)
    for member, weight in zip(members, weights, strict=True):
        head = member.head
        if methods:
            head, _ = adapt_head(methods, member.features[adapt_rows], head, member.source, temperature)
        mixed += weight * torch.softmax(head.logits(member.features[eval_rows]), dim=1)
    return mixed.clamp_min(1e-12).log().numpy()


def cross_adapt(
    method: str,
    members: Sequence[Member],
    strata: np.ndarray,
    *,
    weights: Sequence[float] | None = None,
    temperature: float = 1.0,
    seed: int = FOLD_SEED,
    gated: bool = False,
    flagged: np.ndarray | None = None,
    validation_flag_rate: float | None = None,
) -> np.ndarray:
    """Pooled log-probabilities ``[N, C]``: each fold predicted by the members adapted on the other fold
    (``none``: unadapted), averaged with ``weights`` (equal by default) as an ensemble bundle averages them.

    ``gated`` applies only what ``braintumor adapt`` would on that fold's evidence (:func:`~braintumor.
    adaptation.pipeline.gate`, on the members' features side by side; ``flagged`` marks the images the input
    guard flags, when known).
    """
    weights = list(weights) if weights is not None else [1.0 / len(members)] * len(members)
    out = np.zeros((len(members[0].features), len(members[0].head.bias)))
    for adapt_rows, eval_rows in two_folds(strata, seed):
        methods = () if method == "none" else parse_methods(method)
        if gated and methods:
            share = 0.0 if flagged is None else float(np.mean(flagged[adapt_rows]))
            evidence = shift_evidence(
                torch.cat([m.features[adapt_rows] for m in members], dim=1),
                _joined_source(members),
                flagged_share=share,
                validation_flag_rate=validation_flag_rate,
            )
            methods = gate(methods, evidence.near_source)[0]
        out[eval_rows] = _predict(methods, members, weights, adapt_rows, eval_rows, temperature)
    return out


def transductive(
    method: str, members: Sequence[Member], *, weights: Sequence[float] | None = None, temperature: float = 1.0
) -> np.ndarray:
    """Log-probabilities when adapting on every image and predicting the same images (not an honest estimate)."""
    weights = list(weights) if weights is not None else [1.0 / len(members)] * len(members)
    rows = np.arange(len(members[0].features))
    methods = () if method == "none" else parse_methods(method)
    return _predict(methods, members, weights, rows, rows, temperature)


def scores(labels: np.ndarray, logits: np.ndarray, n_bootstrap: int = 1000) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall (glioma first) with percentile bootstrap intervals."""
    probabilities = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    metrics = classification_metrics(labels, probabilities, list(CLASS_NAMES))
    intervals = bootstrap_confidence_intervals(
        labels, logits.argmax(1), len(CLASS_NAMES), n_resamples=n_bootstrap, class_names=list(CLASS_NAMES)
    )
    recall = {name: metrics["per_class"][name]["recall"] for name in CLASS_NAMES}
    return {
        "n": len(labels),
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "recall": recall,
        "confidence_intervals": intervals,
    }


def _proxy_head(features: np.ndarray, labels: np.ndarray) -> tuple[HeadState, SourceStats, np.ndarray, np.ndarray]:
    """A standardisation + logistic-regression probe on the source rows, as a head over standardised features."""
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-3
    z = (features - mean) / std
    probe = LogisticRegression(C=PROXY_C, max_iter=3000).fit(z, labels)
    priors = np.bincount(labels, minlength=len(CLASS_NAMES)) / len(labels)
    class_means = np.stack([z[labels == k].mean(axis=0) for k in range(len(CLASS_NAMES))])
    head = HeadState(
        torch.tensor(probe.coef_, dtype=torch.float64), torch.tensor(probe.intercept_, dtype=torch.float64)
    )
    dims = features.shape[1]
    source = SourceStats(
        torch.zeros(dims, dtype=torch.float64),
        torch.ones(dims, dtype=torch.float64),
        torch.tensor(priors),
        torch.tensor(class_means),
    )
    return head, source, mean, std


def proxy_rows(
    features: np.ndarray,
    labels: np.ndarray,
    main_source: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    methods: Sequence[str],
) -> list[dict[str, Any]]:
    """Per held-out class, site and method: the held-out recall, the other images' accuracy and the target's.

    Two sites per held-out class: ``mixture`` (the held-out images and the whole validation split, mostly in
    distribution, as Testing mixes copies of Training with new sources) and ``shifted`` (the held-out images
    and only the validation images from the other sources: a site away from the main source).
    """
    rows = []
    for name in HELD_OUT_CLASSES:
        label = CLASS_NAMES.index(name)
        keep, held = holdout_split(labels, main_source, train_idx, label)
        head, source, mean, std = _proxy_head(features[keep], labels[keep])
        for site, target in proxy_sites(held, val_idx, main_source).items():
            rows += _proxy_site_rows(
                name,
                site,
                methods,
                torch.tensor((features[target] - mean) / std),
                labels[target],
                held[target],
                head,
                source,
            )
    return rows


def proxy_sites(held: np.ndarray, val_idx: np.ndarray, main_source: np.ndarray) -> dict[str, np.ndarray]:
    """The proxy's two target sites as row indices: ``mixture`` (the held-out images and the validation split)
    and ``shifted`` (the held-out images and the validation images from the other sources).

    Example:
        >>> held, main = np.array([False, False, True, True]), np.array([True, False, False, False])
        >>> {k: v.tolist() for k, v in proxy_sites(held, np.array([0, 1]), main).items()}
        {'mixture': [0, 1, 2, 3], 'shifted': [1, 2, 3]}
    """
    return {
        "mixture": np.union1d(val_idx, np.flatnonzero(held)),
        "shifted": np.union1d(np.flatnonzero(held), np.intersect1d(val_idx, np.flatnonzero(~main_source))),
    }


def network_proxy_rows(
    name: str,
    member: Member,
    labels: np.ndarray,
    main_source: np.ndarray,
    val_idx: np.ndarray,
    methods: Sequence[str],
) -> list[dict[str, Any]]:
    """:func:`proxy_rows` for one held-out class, from a network trained on Training without that class's
    other-source images (its own head, source statistics and validation rows ``val_idx``), in place of a probe.

    A bundle whose backbone was fine-tuned on all of Training has seen the held-out images, so the probe proxy
    over its features is no hold-out; a network of the same recipe trained without them is.
    ``member.features`` are its penultimate features of every Training row, in the order of ``labels``.
    """
    held = (labels == CLASS_NAMES.index(name)) & ~main_source
    rows = []
    for site, target in proxy_sites(held, val_idx, main_source).items():
        rows += _proxy_site_rows(
            name, site, methods, member.features[target], labels[target], held[target], member.head, member.source
        )
    return rows


def _proxy_site_rows(
    name: str,
    site: str,
    methods: Sequence[str],
    z: torch.Tensor,
    labels: np.ndarray,
    shifted: np.ndarray,
    head: HeadState,
    source: SourceStats,
) -> list[dict[str, Any]]:
    rows = []
    for method in methods:
        for gated in (False, True):
            predicted = cross_adapt(method, [Member(z, head, source)], labels * 2 + shifted, gated=gated).argmax(1)
            correct = predicted == labels
            rows.append(
                {
                    "held_out": name,
                    "site": site,
                    "method": method,
                    "gated": gated,
                    "n_held_out": int(shifted.sum()),
                    "n_in_distribution": int((~shifted).sum()),
                    "held_out_recall": _share(correct[shifted]),
                    "in_distribution_accuracy": _share(correct[~shifted]),
                    "accuracy": float(correct.mean()),
                }
            )
    return rows


def _share(correct: np.ndarray) -> float | None:
    """The share of true values; None for no images (a site without in-distribution images has no such rate)."""
    return float(correct.mean()) if correct.size else None


def choose_on_proxy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The method with the best mean target accuracy over the hold-outs among those that keep the
    in-distribution accuracy within :data:`IN_DISTRIBUTION_TOLERANCE` of the unadapted probe (``none`` included).

    Example:
        >>> rows = [{"method": "none", "accuracy": 0.7, "in_distribution_accuracy": 0.9},
        ...         {"method": "em", "accuracy": 0.72, "in_distribution_accuracy": 0.895}]
        >>> choose_on_proxy(rows)["chosen"]
        'em'
    """
    rows = [row for row in rows if row.get("site", "mixture") == "mixture" and not row.get("gated", False)]
    summary: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        summary[method] = {
            "accuracy": float(np.mean([row["accuracy"] for row in mine])),
            "in_distribution_accuracy": float(np.mean([row["in_distribution_accuracy"] for row in mine])),
        }
    floor = summary["none"]["in_distribution_accuracy"] - IN_DISTRIBUTION_TOLERANCE
    allowed = {m: s for m, s in summary.items() if s["in_distribution_accuracy"] >= floor}
    chosen = max(allowed, key=lambda m: (allowed[m]["accuracy"], m == "none"))
    return {"chosen": chosen, "summary": summary, "rule": choose_on_proxy.__doc__.split("\n\n")[0].strip()}
