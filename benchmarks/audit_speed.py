"""Speed of the data audit: a real data set end to end, and both near-copy stages at 100k-image scale.

Usage:
    .venv/bin/python benchmarks/audit_speed.py [--data ../shared/data/brain-tumor-mri]
        [--queries 2000] [--references 20000] [--pairs 512]

1. ``--data``: ``run_audit`` on that data set (reading, exact and near copies, report), wall and CPU
   seconds per phase. Target: well under a minute on 2 cores for the 3264-image Sartaj set.
2. Candidate search: random 64 px thumbnails, ``--queries`` against ``--references``, both channels
   (frame and content box), k = 3. Prints comparisons per second and the time extrapolated to
   10k queries x 90k references (a 100k-image set with a 10% test split): the cost is linear in
   queries x references, and memory stays bounded by the reference block.
3. Pair checks: ``--pairs`` random 128 px pairs that all need the coarse fit (the worst case; on real
   data whole-image copies skip it). Pairs per second, extrapolated to 30k pairs (10k queries x 3).

Results are printed and written to ``benchmarks/results/audit_speed/<time>.json``.
"""

from __future__ import annotations

import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import script_parser, timed, write_json
from torchvision.transforms.v2.functional import gaussian_blur

from braintumor.audit.run import run_audit
from braintumor.audit.similarity import check_pairs, nearest_candidates

RESULTS = Path(__file__).resolve().parent / "results" / "audit_speed"


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


def main() -> None:
    parser = script_parser(__doc__, whole_doc=True)
    parser.add_argument("--data", type=Path, help="Data root to audit end to end.")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--references", type=int, default=20000)
    parser.add_argument("--pairs", type=int, default=512)
    args = parser.parse_args()
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
            audit, wall, cpu = timed(lambda: run_audit(args.data, out, show_progress=False), digits=2)
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
    path = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    write_json(path, results)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
