"""Speed of the data audit: a real data set end to end, its cache, and both near-copy stages at 100k-image scale.

Usage:
    .venv/bin/python benchmarks/audit_speed.py [--data ../shared/data/brain-tumor-mri]
        [--queries 2000] [--references 20000] [--pairs 512] [--added 100] [--skip-stages]

1. ``--data``: ``run_audit`` on that data set without the cache (reading, exact and near copies,
   report), wall and CPU seconds per phase. Target: well under a minute on 2 cores for the
   3264-image Sartaj set.
1b. The cache (docs/audit_cache.md), on a copy of ``--data`` in a temporary folder: a cold audit, a
   second audit of the unchanged copy (target: at most 20% of the cold one), and an audit after adding
   ``--added`` images (files drawn at random from the copy, re-encoded as JPEG quality 90 next to
   their originals, so they are new contents and near copies): its extra time over the second audit,
   per added image, against the cold audit's time per image. The grown copy is then audited without
   the cache and the two results compared (they must be identical).
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

from braintumor.audit.run import run_audit
from braintumor.audit.similarity import check_pairs, nearest_candidates

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


def _add_images(root: Path, count: int, seed: int) -> list[Path]:
    """``count`` files drawn from ``root``, re-encoded as JPEG quality 90 beside their originals."""
    files = sorted(p for p in root.glob("*/*/*") if p.is_file())
    chosen = np.random.default_rng(seed).choice(len(files), size=min(count, len(files)), replace=False)
    added = []
    for index in sorted(chosen):
        source = files[index]
        target = source.with_name(f"{source.stem}_added.jpg")
        with Image.open(source) as image:
            image.convert("RGB").save(target, quality=90)
        added.append(target)
    return added


def _cache_row(name: str, audit: dict, wall: float) -> dict:
    stats = audit["cache"] or {}
    return {
        "run": name,
        "wall_s": wall,
        "files": sum(s["files"] for s in audit["splits"].values()),
        "files_decoded": stats.get("files_decoded"),
        "files_reused": stats.get("files_reused"),
        "files_rehashed": stats.get("files_rehashed"),
        "pairs_checked": stats.get("pairs_checked"),
        "pairs_reused": stats.get("pairs_reused"),
        "phases": audit["timing"],
    }


def cache_runs(data: Path, added: int) -> dict:
    """Cold, second and after-adding audits of a copy of ``data`` with the cache; the grown copy without it."""
    with tempfile.TemporaryDirectory() as scratch:
        root, out = Path(scratch) / data.name, Path(scratch) / "audit"
        # copytree keeps modification times, as a data set that has not changed keeps them.
        shutil.copytree(data, root)
        runs = []
        for name in ("cold (empty cache)", "second (unchanged data)"):
            audit, wall, _ = timed(lambda: run_audit(root, out, show_progress=False).audit, digits=2)
            runs.append(_cache_row(name, audit, wall))
        added = len(_add_images(root, added, seed=0))
        audit, wall, _ = timed(lambda: run_audit(root, out, show_progress=False).audit, digits=2)
        runs.append(_cache_row(f"after adding {added} images", audit, wall))
        plain, wall, _ = timed(
            lambda: run_audit(root, Path(scratch) / "plain", show_progress=False, use_cache=False).audit, digits=2
        )
        runs.append(_cache_row(f"after adding {added} images, no cache", plain, wall))
        identical = _comparable(audit) == _comparable(plain)
    cold, second, grown = runs[0], runs[1], runs[2]
    per_image_cold = cold["wall_s"] / cold["files"]
    extra = grown["wall_s"] - second["wall_s"]
    per_added = extra / added
    # The work the added files bring, priced at the cold audit's own rates: a decode, a pair check,
    # and the candidate search, which runs whole again whenever the searched contents change.
    read_rate = cold["phases"]["read_s"] / cold["files_decoded"]
    check_rate = cold["phases"]["check_s"] / max(cold["pairs_checked"], 1)
    predicted = grown["files_decoded"] * read_rate + grown["pairs_checked"] * check_rate + cold["phases"]["search_s"]
    return {
        "runs": runs,
        "second_over_cold": round(second["wall_s"] / cold["wall_s"], 3),
        "target_second_over_cold": TARGET_SECOND_RATIO,
        "cold_s_per_image": round(per_image_cold, 4),
        "added_s_per_image": round(per_added, 4),
        "added_images": added,
        "added_extra_s": round(extra, 2),
        "added_predicted_s": round(predicted, 2),
        "added_over_cold_per_image": round(per_added / per_image_cold, 2),
        "identical_to_uncached": identical,
    }


def cache_table(result: dict, command: str) -> str:
    """The cache runs as a Markdown table with the ratios under it."""
    lines = markdown_header(
        ["run", "wall s", "files", "decoded", "reused", "re-hashed", "pairs checked", "pairs reused"], "lrrrrrrr"
    )
    for row in result["runs"]:
        cells = [row["run"], f"{row['wall_s']:.2f}", str(row["files"])]
        keys = ("files_decoded", "files_reused", "files_rehashed", "pairs_checked", "pairs_reused")
        lines.append(markdown_row(cells + ["-" if row[key] is None else str(row[key]) for key in keys]))
    verdict = "met" if result["second_over_cold"] <= TARGET_SECOND_RATIO else "NOT met"
    lines += [
        "",
        f"second / cold: {result['second_over_cold']:.3f} (target <= {TARGET_SECOND_RATIO}: {verdict}); "
        f"each added image: {result['added_s_per_image'] * 1000:.1f} ms against "
        f"{result['cold_s_per_image'] * 1000:.1f} ms per image cold "
        f"({result['added_over_cold_per_image']:.2f}x). The {result['added_images']} added images took "
        f"{result['added_extra_s']:.2f} s over the second audit; their decodes and new pair checks at the cold "
        f"audit's rates, plus one full candidate search, predict {result['added_predicted_s']:.2f} s. "
        f"Cached result identical to uncached: {result['identical_to_uncached']}.",
        "",
        produced_by(command),
    ]
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
