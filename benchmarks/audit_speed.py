"""Speed of the data audit: a real data set end to end, its cache, and both near-copy stages at 100k-image scale.

Usage:
    .venv/bin/python benchmarks/audit_speed.py [--data ../shared/data/brain-tumor-mri]
        [--queries 2000] [--references 20000] [--pairs 512] [--added 100] [--skip-stages]

1. ``--data``: ``run_audit`` on that data set without the cache (reading, exact and near copies,
   report), wall and CPU seconds per phase. Target: well under a minute on 2 cores for the
   3264-image Sartaj set.
1b. The cache (docs/audit.md), on a copy of ``--data`` in a temporary folder: a cold audit, a
   second audit of the unchanged copy (target: at most 20% of the cold one), then twice an audit after
   adding ``--added`` images drawn at random from the copy and written as JPEG quality 90 next to
   their originals: first re-encoded as they are (near copies, each bringing its pair checks), then
   rotated by 90 degrees (new contents, like new scans). Each addition's extra time over an unchanged
   audit, per added image, is set against the cold audit's time per image and against the work the
   images bring at the cold audit's rates; each grown copy is also audited without the cache and the
   two results compared (they must be identical).
2. Candidate search: random 64 px thumbnails, ``--queries`` against ``--references``, both channels
   (frame and content box), k = 3. Prints comparisons per second and the time extrapolated to
   10k queries x 90k references (a 100k-image set with a 10% test split): the cost is linear in
   queries x references, and memory stays bounded by the reference block.
3. Pair checks: ``--pairs`` random 128 px pairs that all need the coarse fit (the worst case; on real
   data whole-image copies skip it). Pairs per second, extrapolated to 30k pairs (10k queries x 3).

Results are printed and written to ``benchmarks/results/audit_speed.json`` (the latest) and
``benchmarks/results/audit_speed/<time>.json`` (the history, not kept in git). ``--skip-stages`` leaves
out parts 2 and 3.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import command_line, markdown_header, markdown_row, option, produced_by, script_parser, timed, write_json
from PIL import Image
from torchvision.transforms.v2.functional import gaussian_blur

from braintumor.auditing.run import run_audit
from braintumor.auditing.similarity import check_pairs, nearest_candidates

RESULTS = Path(__file__).resolve().parent / "results" / "audit_speed"
LATEST = RESULTS.parent / "audit_speed.json"
TARGET_SECOND_RATIO = 0.2


def _smooth_images(count: int, size: int, seed: int) -> np.ndarray:
    """Random images with structure at a few pixels' scale (pure noise would make NCC trivially ~0)."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for start in range(0, count, 1024):
        noise = torch.randn(min(1024, count - start), 1, size, size, generator=generator)
        smooth = gaussian_blur(noise, [9, 9], [2.0, 2.0])[:, 0]
        scaled = (smooth - smooth.amin(dim=(1, 2), keepdim=True)) / smooth.std(dim=(1, 2), keepdim=True) * 40
        images.append(scaled.clamp(0, 255).to(torch.uint8).numpy())
    return np.concatenate(images)


def _comparable(audit: dict) -> dict:
    """The audit without what differs between any two runs: times and the cache's own counts."""
    kept = {k: v for k, v in audit.items() if k not in ("created", "timing", "cache")}
    kept["near_duplicates"] = {k: v for k, v in audit["near_duplicates"].items() if k not in ("search_s", "check_s")}
    return kept


def _add_images(root: Path, count: int, seed: int, kind: str) -> list[Path]:
    """``count`` files drawn from ``root``, written beside their originals as JPEG quality 90.

    ``kind`` ``copies``: re-encoded as they are (new bytes, and near copies of their originals, so each
    brings its own pair checks). ``new``: rotated by 90 degrees, which the search does not undo, so
    they stand for new scans (new contents that are nobody's copy).
    """
    files = sorted(p for p in root.glob("*/*/*") if p.is_file() and "_added" not in p.stem)
    chosen = np.random.default_rng(seed).choice(len(files), size=min(count, len(files)), replace=False)
    added = []
    for index in sorted(chosen):
        source = files[index]
        target = source.with_name(f"{source.stem}_added_{kind}.jpg")
        with Image.open(source) as image:
            picture = image.convert("RGB")
            (picture.transpose(Image.Transpose.ROTATE_90) if kind == "new" else picture).save(target, quality=90)
        added.append(target)
    return added


def _cache_row(name: str, audit: dict, wall: float) -> dict:
    stats = audit["cache"] or {}
    return {
        "run": name,
        "wall_s": wall,
        "files": sum(s["files"] for s in audit["splits"].values()),
        **{key: stats.get(key) for key in CACHE_COUNTS},
        "phases": audit["timing"],
    }


CACHE_COUNTS = (
    "files_decoded",
    "files_reused",
    "files_rehashed",
    "pairs_checked",
    "pairs_reused",
    "queries_searched",
    "queries_extended",
    "search_comparisons",
)
ADDED_KINDS = {"copies": "re-encoded copies", "new": "new contents (rotated 90 degrees)"}


def cache_runs(data: Path, added: int) -> dict:
    """Cold and second audits of a copy of ``data`` with the cache; then, for each kind of added image
    (:data:`ADDED_KINDS`), an audit after adding ``added`` of them, the grown copy without the cache
    (the two must agree), and an unchanged audit that is the baseline of the next addition."""
    with tempfile.TemporaryDirectory() as scratch:
        root, out = Path(scratch) / data.name, Path(scratch) / "audit"
        # copytree keeps modification times, as a data set that has not changed keeps them.
        shutil.copytree(data, root)

        def audit_row(name: str, cached: bool = True) -> tuple[dict, dict]:
            target = out if cached else Path(scratch) / "plain"
            audit, wall, _ = timed(
                lambda: run_audit(root, target, show_progress=False, use_cache=cached).audit, digits=2
            )
            return audit, _cache_row(name, audit, wall)

        runs = [audit_row("cold (empty cache)")[1], audit_row("second (unchanged data)")[1]]
        cold, baseline, additions = runs[0], runs[1], []
        for seed, (kind, label) in enumerate(ADDED_KINDS.items()):
            count = len(_add_images(root, added, seed=seed, kind=kind))
            grown_audit, grown = audit_row(f"after adding {count} {label}")
            plain_audit, plain = audit_row(f"after adding {count} {label}, no cache", cached=False)
            runs += [grown, plain]
            additions.append(
                _addition(kind, count, cold, baseline, grown, _comparable(grown_audit) == _comparable(plain_audit))
            )
            baseline = audit_row(f"unchanged again ({cold['files'] + count * (seed + 1)} files)")[1]
            runs.append(baseline)
    return {
        "runs": runs,
        "second_over_cold": round(runs[1]["wall_s"] / cold["wall_s"], 3),
        "target_second_over_cold": TARGET_SECOND_RATIO,
        "cold_s_per_image": round(cold["wall_s"] / cold["files"], 4),
        "additions": additions,
        "identical_to_uncached": all(a["identical_to_uncached"] for a in additions),
    }


def _addition(kind: str, count: int, cold: dict, baseline: dict, grown: dict, identical: bool) -> dict:
    """What adding ``count`` images cost over an unchanged audit, against the work they bring at the
    cold audit's own rates (a decode, a pair check, a query-reference comparison)."""
    read_rate = cold["phases"]["read_s"] / cold["files_decoded"]
    check_rate = cold["phases"]["check_s"] / max(cold["pairs_checked"], 1)
    search_rate = cold["phases"]["search_s"] / max(cold["search_comparisons"], 1)
    extra = grown["wall_s"] - baseline["wall_s"]
    predicted = (
        grown["files_decoded"] * read_rate
        + grown["pairs_checked"] * check_rate
        + grown["search_comparisons"] * search_rate
    )
    per_image_cold = cold["wall_s"] / cold["files"]
    return {
        "kind": kind,
        "added_images": count,
        "added_extra_s": round(extra, 2),
        "added_s_per_image": round(extra / count, 4),
        "added_over_cold_per_image": round(extra / count / per_image_cold, 2),
        "added_predicted_s": round(predicted, 2),
        "search_comparisons_over_cold": round(grown["search_comparisons"] / max(cold["search_comparisons"], 1), 4),
        "pairs_checked": grown["pairs_checked"],
        "identical_to_uncached": identical,
    }


def cache_table(result: dict, command: str) -> str:
    """The cache runs as a Markdown table with the ratios under it."""
    headers = ["run", "wall s", "files", "decoded", "reused", "pairs checked", "pairs reused", "searched / extended"]
    lines = markdown_header(headers, "lrrrrrrr")
    for row in result["runs"]:
        cells = [row["run"], f"{row['wall_s']:.2f}", str(row["files"])]
        cells += ["-" if row[key] is None else str(row[key]) for key in CACHE_COUNTS[:2]]
        cells += ["-" if row[key] is None else str(row[key]) for key in ("pairs_checked", "pairs_reused")]
        searched = (row["queries_searched"], row["queries_extended"])
        cells.append("-" if None in searched else f"{searched[0]} / {searched[1]}")
        lines.append(markdown_row(cells))
    verdict = "met" if result["second_over_cold"] <= TARGET_SECOND_RATIO else "NOT met"
    lines += ["", f"second / cold: {result['second_over_cold']:.3f} (target <= {TARGET_SECOND_RATIO}: {verdict})."]
    cold_ms = result["cold_s_per_image"] * 1000
    for added in result["additions"]:
        lines.append(
            f"{added['added_images']} {ADDED_KINDS[added['kind']]}: {added['added_extra_s']:.2f} s over an unchanged "
            f"audit, {added['added_s_per_image'] * 1000:.1f} ms each against {cold_ms:.1f} ms "
            f"per image cold ({added['added_over_cold_per_image']:.2f}x); {added['pairs_checked']} new pair checks, "
            f"{added['search_comparisons_over_cold']:.1%} of the cold search's comparisons; their decodes, checks "
            f"and comparisons at the cold audit's rates predict {added['added_predicted_s']:.2f} s. "
            f"Identical to the uncached audit: {added['identical_to_uncached']}."
        )
    lines += ["", produced_by(command)]
    return "\n".join(lines)


def main() -> None:
    parser = script_parser(__doc__, whole_doc=True)
    parser.add_argument("--data", type=Path, help="Data root to audit end to end.")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--references", type=int, default=20000)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--added", type=int, default=100, help="Images added before the third cached audit.")
    parser.add_argument("--skip-stages", action="store_true", help="Leave out the synthetic stage timings.")
    args = parser.parse_args()
    command = command_line(
        "audit_speed.py",
        option("--data", args.data),
        option("--added", args.added, 100),
        option("--skip-stages", args.skip_stages),
    )
    results: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average_1min": os.getloadavg()[0],
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if args.data:
        with tempfile.TemporaryDirectory() as out:
            audit, wall, cpu = timed(lambda: run_audit(args.data, out, show_progress=False, use_cache=False), digits=2)
        leak = audit.audit["leakage"].get("Testing", {})
        results["real_data"] = {
            "data": str(args.data),
            "wall_s": wall,
            "cpu_s": cpu,
            "phases": audit.audit["timing"],
            "files": sum(s["files"] for s in audit.audit["splits"].values()),
            "pairs_checked": audit.audit["near_duplicates"].get("pairs_checked", 0),
            "testing": {k: leak.get(k) for k in ("files", "exact_copy", "near_copy", "clean")},
        }
        print(f"real data: {results['real_data']}")
        results["cache"] = cache_runs(args.data, args.added)
        results["cache"]["command"] = command
        print(cache_table(results["cache"], command))
    if not args.skip_stages:
        _stages(args, results)
    path = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    write_json(path, results)
    write_json(LATEST, results)
    print(f"written: {LATEST} and {path}")


def _stages(args: argparse.Namespace, results: dict) -> None:
    """Parts 2 and 3: the candidate search and the pair checks on random images, extrapolated."""
    query = _smooth_images(args.queries, 64, 1)
    reference = _smooth_images(args.references, 64, 2)
    _, wall, cpu = timed(lambda: [nearest_candidates(query, reference, 3) for _ in range(2)], digits=2)  # two channels
    comparisons = 2 * args.queries * args.references
    rate = comparisons / wall
    results["candidate_search"] = {
        "queries": args.queries,
        "references": args.references,
        "wall_s": wall,
        "cpu_s": cpu,
        "comparisons_per_s": round(rate),
        "extrapolated_10k_x_90k_s": round(2 * 10_000 * 90_000 / rate, 1),
    }
    print(f"candidate search: {results['candidate_search']}")

    detail = _smooth_images(2 * args.pairs, 128, 3)
    _, wall, cpu = timed(lambda: check_pairs(detail[: args.pairs], detail[args.pairs :]), digits=2)
    results["pair_checks"] = {
        "pairs": args.pairs,
        "wall_s": wall,
        "cpu_s": cpu,
        "pairs_per_s": round(args.pairs / wall, 1),
        "extrapolated_30k_pairs_s": round(30_000 * wall / args.pairs, 1),
    }
    print(f"pair checks: {results['pair_checks']}")


if __name__ == "__main__":
    main()
