"""Site adaptation, measured honestly: methods chosen on a Training-only proxy, scored by 2-fold cross-adaptation.

1. Proxy (Training only): each of a class's other-source images held out of a probe's training, then mixed with
   the validation split as the target (lib/site_adaptation.py); every method adapts on one fold of it and is
   scored on the other. The default method is the rule's choice there (choose_on_proxy).
2. Testing: the bundle adapts on the unlabelled images of one stratified fold (seed 0) and predicts the other,
   then the reverse; pooled accuracy, macro-F1 and per-class recall with bootstrap CIs, beside the unadapted
   bundle on the same images; the transductive figure (adapt on all of Testing, predict it), labelled so; the
   deduplicated split (needs `braintumor audit DATA`).
3. Validation check: adapting to the validation split (Training-like) must keep its accuracy within 1 point.
   In-distribution sites: `adapt` with the recipe's default on the validation split, and on it skewed to one class
   (adapt_in_distribution.py), must change accuracy by at most 0.5 points; reported beside the cross-fold rows.
4. Timing: `adapt` (the library call behind the command) on --timing-images images; `--timing-only` runs only
   this, into benchmarks/results/adapt_timing.json.

Features are cached in --cache (one backbone pass per split).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import command_line, data_parser, option, produced_by, timed, use_weights_dir, write_json

CANDIDATES = ["none", "em", "standardize", "coral", "t3a", "shot", "standardize+em", "coral+em", "shot+em"]


def _features(bundle: Any, data: Path, split: str, cache: Path) -> dict[str, np.ndarray]:
    """Each member's backbone features (``features``, ``features_1``, ...), labels, paths, content hashes and
    source flags of a split, cached as .npz."""
    path = cache / f"{split}.npz"
    if path.is_file():
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    from lib.source_holdout import is_main_source

    from braintumor.adaptation.network import backbone_features
    from braintumor.data.dataset import drop_exact_duplicates, load_images, validation_split
    from braintumor.data.layout import discover_split
    from braintumor.data.preprocessing import eval_transform
    from braintumor.workflows.adapt import network_members

    images = load_images(discover_split(data, split), bundle.preprocessing, show_progress=False)
    if split == "Training":
        images = drop_exact_duplicates(images)[0]
    transform = eval_transform(bundle.preprocessing)
    arrays = {
        _member_key(index): backbone_features(member.backbone, images.images, transform).numpy()
        for index, member in enumerate(network_members(bundle.model))
    }
    arrays |= {
        "labels": images.labels.numpy(),
        "paths": np.array([str(p) for p in images.paths]),
        "hashes": np.array(images.hashes),
        "main_source": np.array([is_main_source(p) for p in images.paths]),
    }
    if split == "Training":
        arrays["train_idx"], arrays["val_idx"] = validation_split(bundle.recipe, images)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def _member_key(index: int) -> str:
    return "features" if index == 0 else f"features_{index}"


def _member_features(bundle: Any, arrays: dict[str, np.ndarray], rows: Any = slice(None)) -> list[Any]:
    import torch

    from braintumor.workflows.adapt import network_members

    return [torch.as_tensor(arrays[_member_key(i)][rows]) for i in range(len(network_members(bundle.model)))]


def _view(bundle: Any, arrays: dict[str, np.ndarray], rows: Any = slice(None)) -> tuple[list[Any], list[float]]:
    """The bundle's members over ``rows`` of a split (penultimate features, last layer, source) and their weights."""
    from lib.site_adaptation import Member

    from braintumor.adaptation.network import head_state, penultimate
    from braintumor.workflows.adapt import member_stats, network_members, source_stats

    networks = network_members(bundle.model)
    zs = [penultimate(net, part) for net, part in zip(networks, _member_features(bundle, arrays, rows), strict=True)]
    sources = member_stats(source_stats(bundle), [z.shape[1] for z in zs])
    members = [Member(z, head_state(net), src) for net, z, src in zip(networks, zs, sources, strict=True)]
    weights = getattr(bundle.model, "weights", None)
    return members, ([1.0] if weights is None else [float(w) for w in weights])


def _testing_rows(bundle: Any, testing: dict[str, np.ndarray], methods: list[str], data: Path) -> dict[str, Any]:
    import torch
    from lib.site_adaptation import cross_adapt, scores, transductive

    from braintumor.classes import CLASS_NAMES
    from braintumor.evaluation.deduplicated import deduplicated_metrics
    from braintumor.workflows.adapt import member_temperature

    members, weights = _view(bundle, testing)
    labels, temperature = testing["labels"], member_temperature(bundle)
    flagged, rate = _flags(bundle, testing), bundle.guard.spec.validation_flag_rate
    rows: dict[str, Any] = {}
    for method in methods:
        common = {"weights": weights, "temperature": temperature}
        logits = cross_adapt(method, members, labels, **common)
        row = {"cross_fold": scores(labels, logits)}
        gated = cross_adapt(method, members, labels, gated=True, flagged=flagged, validation_flag_rate=rate, **common)
        row["cross_fold_as_adapt_applies"] = scores(labels, gated)
        row["transductive"] = scores(labels, transductive(method, members, **common))
        probabilities = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
        paths = [Path(p) for p in testing["paths"]]
        dedup, note = deduplicated_metrics(
            data, "Testing", paths, list(testing["hashes"]), labels, probabilities, list(CLASS_NAMES)
        )
        row["deduplicated_cross_fold"] = (
            {
                "n": dedup["n_images"],
                "accuracy": dedup["accuracy"],
                "macro_f1": dedup["macro_f1"],
                # A class with no image left after deduplication has no recall (None), not 0.
                "recall": {k: v["recall"] if v["support"] else None for k, v in dedup["per_class"].items()},
                "support": {k: v["support"] for k, v in dedup["per_class"].items()},
            }
            if dedup
            else {"note": note}
        )
        rows[method] = row
    return rows


def _flags(bundle: Any, arrays: dict[str, np.ndarray], rows: Any = slice(None)) -> np.ndarray:
    """Which images the guard's feature component flags (the cache keeps no pixels for the image evidence)."""
    import torch

    from braintumor.workflows.adapt import guard_inputs

    features = _member_features(bundle, arrays, rows)
    blank = torch.zeros(len(features[0]), 3, 8, 8, dtype=torch.uint8)
    return (bundle.guard.score(guard_inputs(bundle, features, blank)).feature > 1).numpy()


def _evidence(bundle: Any, arrays: dict[str, np.ndarray], rows: Any = slice(None)) -> dict[str, Any]:
    import torch

    from braintumor.adaptation import shift_evidence
    from braintumor.workflows.adapt import source_stats

    members, _ = _view(bundle, arrays, rows)
    return shift_evidence(
        torch.cat([m.features for m in members], dim=1),
        source_stats(bundle),
        flagged_share=float(_flags(bundle, arrays, rows).mean()),
        validation_flag_rate=bundle.guard.spec.validation_flag_rate,
    ).to_dict()


def _validation_check(bundle: Any, training: dict[str, np.ndarray], method: str) -> dict[str, Any]:
    from lib.site_adaptation import cross_adapt, transductive

    from braintumor.workflows.adapt import member_temperature

    val = training["val_idx"]
    members, weights = _view(bundle, training, val)
    labels, rate = training["labels"][val], bundle.guard.spec.validation_flag_rate
    common = {"weights": weights, "temperature": member_temperature(bundle)}
    base = float(np.mean(cross_adapt("none", members, labels, **common).argmax(1) == labels))
    crossed = float(np.mean(cross_adapt(method, members, labels, **common).argmax(1) == labels))
    flagged = _flags(bundle, training, val)
    as_applied = cross_adapt(method, members, labels, gated=True, flagged=flagged, validation_flag_rate=rate, **common)
    crossed_gated = float(np.mean(as_applied.argmax(1) == labels))
    whole = float(np.mean(transductive(method, members, **common).argmax(1) == labels))
    return {
        "method": method,
        "unadapted": base,
        "cross_fold": crossed,
        "adapted_on_all_validation": whole,
        "cross_fold_as_adapt_applies": crossed_gated,
        "within_1_point": bool(max(abs(whole - base), abs(crossed - base), abs(crossed_gated - base)) <= 0.01),
        "evidence": _evidence(bundle, training, val),
    }


def _timing(bundle_path: Path, data: Path, count: int, method: str) -> dict[str, Any]:
    from braintumor.data.layout import discover_split
    from braintumor.workflows.adapt import adapt_bundle

    files = [s.path for split in ("Testing", "Training") for s in discover_split(data, split)][:count]
    with tempfile.TemporaryDirectory() as folder:
        for index, path in enumerate(files):
            (Path(folder) / "in" / str(index % 7)).mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), Path(folder) / "in" / str(index % 7) / f"{index}{path.suffix}")
        result, wall, cpu = timed(
            lambda: adapt_bundle(
                bundle_path, Path(folder) / "in", Path(folder) / "out", method=method, show_progress=False
            ),
            1,
        )
    return {
        "images": len(files),
        "method": method,
        "wall_s": wall,
        "cpu_s": cpu,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "n_adapted_on": result.record.n_images,
        "rejected_by_guard": len(result.record.rejected_by_guard),
    }


def _network_proxies(specs: list[str], data: Path, cache_root: Path, methods: list[str]) -> dict[str, list[Any]]:
    """Proxy rows per held-out class from ``CLASS=BUNDLE`` networks trained without that class's other-source
    images (``benchmarks/holdout_tree.py`` writes the Training tree to train them on)."""
    from lib.site_adaptation import network_proxy_rows
    from lib.source_holdout import HELD_OUT_CLASSES

    from braintumor.bundle import load_bundle

    rows: dict[str, list[Any]] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if name not in HELD_OUT_CLASSES or not path:
            raise SystemExit(f"--proxy-bundle {spec!r}: write CLASS=BUNDLE with CLASS one of {HELD_OUT_CLASSES}")
        proxy = load_bundle(path)
        arrays = _features(proxy, data, "Training", _cache_folder(cache_root, proxy))
        # Its own validation images (split from the tree without the held-out images), found by class and name.
        key = {(Path(p).parent.name, Path(p).name): row for row, p in enumerate(arrays["paths"])}
        val = np.array(sorted(key[(Path(p).parent.name, Path(p).name)] for p in proxy.config.training.val_paths))
        members, _ = _view(proxy, arrays)
        rows[name] = network_proxy_rows(name, members[0], arrays["labels"], arrays["main_source"], val, methods)
    return rows


def _cache_folder(cache_root: Path, bundle: Any) -> Path:
    return cache_root / bundle.path.resolve().as_posix().strip("/").replace("/", "_")


def _row_text(name: str, scores: dict[str, Any]) -> str:
    ci = scores["confidence_intervals"]
    recall = " / ".join(f"{scores['recall'][k]:.2f}" for k in ("glioma", "meningioma", "no_tumor", "pituitary"))
    g = ci["recall"]["glioma"]
    return (
        f"| {name} | {scores['accuracy']:.2%} [{ci['accuracy']['low']:.1%}, {ci['accuracy']['high']:.1%}] | "
        f"{scores['macro_f1']:.3f} [{ci['macro_f1']['low']:.3f}, {ci['macro_f1']['high']:.3f}] | "
        f"{scores['recall']['glioma']:.2f} [{g['low']:.2f}, {g['high']:.2f}] | {recall} |"
    )


def _timing_only(args: argparse.Namespace) -> None:
    """``adapt`` on ``--timing-images`` images with the bundle recipe's default method, nothing else."""
    import torch

    from braintumor.workflows.adapt import recipe_method

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    command = command_line(
        "site_adaptation.py",
        str(args.bundle),
        option("--data", args.data),
        option("--timing-images", args.timing_images, 1000),
        option("--timing-only", True),
    )
    result = {
        "bundle": str(args.bundle),
        "timing": _timing(args.bundle, args.data, args.timing_images or 1000, recipe_method(args.bundle)),
        "produced_by": produced_by(command, f"torch threads {torch.get_num_threads()}, "),
    }
    write_json(Path(__file__).resolve().parent / "results" / "adapt_timing.json", result)
    print(result["timing"])
    print(result["produced_by"])


def _in_distribution_rows(bundle: Path, data: Path) -> list[dict[str, Any]]:
    """`adapt` as a user runs it, on sites drawn from the source itself: at most 0.5 points of change each."""
    from adapt_in_distribution import IN_DISTRIBUTION_SKEWS, measure

    rows = []
    for skew in [None, *IN_DISTRIBUTION_SKEWS]:
        with tempfile.TemporaryDirectory() as work:
            rows.append(measure(bundle, data, Path(work), skew))
    return rows


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "site_adaptation_cache")
    parser.add_argument("--methods", nargs="+", default=CANDIDATES)
    parser.add_argument("--timing-images", type=int, default=1000, help="0: skip the timing run.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/site_adaptation.json"))
    parser.add_argument(
        "--timing-only", action="store_true", help="Only the timing run (to benchmarks/results/adapt_timing.json)."
    )
    parser.add_argument(
        "--proxy-bundle",
        action="append",
        default=[],
        metavar="CLASS=BUNDLE",
        help="For a fine-tuned bundle: the proxy of held-out CLASS (meningioma, pituitary) from BUNDLE, the same "
        "recipe trained on Training without that class's other-source images, instead of a probe over features "
        "that saw them.",
    )
    args = parser.parse_args()
    use_weights_dir(args)
    import torch

    if args.timing_only:
        _timing_only(args)
        return

    from lib.site_adaptation import choose_on_proxy, proxy_rows

    from braintumor.bundle import load_bundle

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    bundle = load_bundle(args.bundle)
    cache = _cache_folder(args.cache, bundle)
    training, testing = (_features(bundle, args.data, split, cache) for split in ("Training", "Testing"))
    # An ensemble's proxy probe reads its members' backbone features side by side.
    proxy = proxy_rows(
        np.concatenate([part.numpy() for part in _member_features(bundle, training)], axis=1).astype(np.float64),
        training["labels"],
        training["main_source"],
        training["train_idx"],
        training["val_idx"],
        args.methods,
    )
    networks = _network_proxies(args.proxy_bundle, args.data, args.cache, args.methods)
    proxy = [row for row in proxy if row["held_out"] not in networks] + [r for rows in networks.values() for r in rows]
    choice = choose_on_proxy(proxy)
    # What `adapt` does to this bundle without --method: its recipe's adapt.method.
    default = bundle.config.recipe.adapt.method
    methods = list(dict.fromkeys(["none", choice["chosen"], default, *args.methods]))
    result: dict[str, Any] = {
        "bundle": str(args.bundle),
        "proxy": {"rows": proxy, "networks": dict(spec.partition("=")[::2] for spec in args.proxy_bundle), **choice},
        "default_method": default,
        "default_matches_proxy": choice["chosen"] == default,
        "testing": _testing_rows(bundle, testing, methods, args.data),
        "testing_evidence": _evidence(bundle, testing),
        "validation_check": _validation_check(bundle, training, default),
    }
    if choice["chosen"] not in ("none", default):
        result["validation_check_proxy_choice"] = _validation_check(bundle, training, choice["chosen"])
    result["in_distribution"] = _in_distribution_rows(args.bundle, args.data)
    if args.timing_images:
        result["timing"] = _timing(args.bundle, args.data, args.timing_images, default)
    command = command_line(
        "site_adaptation.py",
        str(args.bundle),
        option("--data", args.data),
        option("--timing-images", args.timing_images, 1000),
        *(option("--proxy-bundle", spec) for spec in args.proxy_bundle),
        option("--out", args.out, Path("benchmarks/results/site_adaptation.json")),
    )
    result["produced_by"] = produced_by(command, f"torch threads {torch.get_num_threads()}, ")
    write_json(args.out, result)
    print(f"proxy (Training only): chosen {choice['chosen']!r}; the bundle recipe's default {default!r}")
    for site in ("mixture", "shifted"):
        for row in (r for r in proxy if r["site"] == site and r["method"] in ("none", "em", choice["chosen"])):
            others = row["in_distribution_accuracy"]
            print(
                f"  proxy {site:8s} held {row['held_out']:10s} {row['method']:12s} gated={row['gated']!s:5s} "
                f"held recall {row['held_out_recall']:.3f} others {'-' if others is None else f'{others:.3f}'}"
            )
    for method, summary in choice["summary"].items():
        accuracy, kept = summary["accuracy"], summary["in_distribution_accuracy"]
        print(f"  {method:16s} target acc {accuracy:.3f}  in-distribution {kept:.3f}")
    print(
        "| method (Testing, 2-fold cross-adaptation) | accuracy [95% CI] | macro-F1 [CI] | glioma recall [CI] "
        "| recall g / m / n / p |"
    )
    print("|---|---|---|---|---|")
    for method, row in result["testing"].items():
        print(_row_text(method, row["cross_fold"]))
    print("as `adapt` applies it (the evidence gate on each fold):")
    for method, row in result["testing"].items():
        print(_row_text(method + " (gated)", row["cross_fold_as_adapt_applies"]))
    print("transductive (adapt on all Testing, evaluate on it; not an honest estimate):")
    for method, row in result["testing"].items():
        print(_row_text(method + " (transductive)", row["transductive"]))
    print(result["validation_check"])
    if "validation_check_proxy_choice" in result:
        print(result["validation_check_proxy_choice"])
    print("deduplicated Testing split (cross-fold):")
    for method, row in result["testing"].items():
        dedup = row["deduplicated_cross_fold"]
        if "accuracy" in dedup:
            recall = " / ".join("-" if value is None else f"{value:.2f}" for value in dedup["recall"].values())
            print(f"  {method:16s} {dedup['n']} images, accuracy {dedup['accuracy']:.2%}, recall g/m/n/p {recall}")
    print("in-distribution sites (`adapt` with the recipe's default; at most 0.5 points of change):")
    for row in result["in_distribution"]:
        site = "validation" if row["skew"] is None else f"validation skewed to {row['skew']}"
        print(
            f"  {site:38s} {row['n_images']:4d} images  {row['accuracy_before']:.2%} -> {row['accuracy_after']:.2%} "
            f"({row['change_points']:+.2f} points; applied {row['applied'] or 'nothing'})"
        )
    print(result.get("timing"))
    print(result["produced_by"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
