"""Memory and speed as the data grows: train (feature stage), evaluate, predict and audit on 3k and 30k images.

Usage:
    .venv/bin/python benchmarks/scale.py [--data ROOT] [--sizes 3000 30000] [--work DIR]
    .venv/bin/python benchmarks/scale.py --quick        # 40 and 200 images at 64 px; results stay in --work
    .venv/bin/python benchmarks/scale.py --stages audit # re-measure one stage; the others keep their rows

For each size N a tree ``<work>/tree-N/Training/<class>/`` is made from the Training images of ``--data``
(Testing is never read): image ``i`` is Training image ``i mod 2870`` (in turn over the sorted paths, so the class
proportions stay those of Training) with a seeded random horizontal flip, crop (85-100 % of each side) and
intensity change (gain 0.85-1.15, offset -12..12), saved as a JPEG of quality 90. Every stage is the command a
user types, run as a subprocess:

- ``train``: ``braintumor train lite2-probe --data TREE --tracker none --no-onnx`` (images/s: Training images
  over the feature stage's seconds in the training record, ``timing.feature_extraction_s``);
- ``evaluate``: ``braintumor evaluate BUNDLE --data TREE --split Training`` (the copies of Training: only the cost
  is measured here, never the accuracy);
- ``predict``: ``braintumor predict BUNDLE TREE/Training --out-dir OUT`` (the batch engine);
- ``audit``: ``braintumor audit TREE --no-cache --no-report``.

Peak RSS is the command's own (``ru_maxrss`` from ``wait4``: exact, every page it touched at its peak); the decode
workers are separate processes of a few hundred MB each, not in that figure. ``--quick`` writes into ``--work``
only, never over the committed results.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import command_line, markdown_header, markdown_row, option, produced_by, script_parser, write_json
from lib.replicas import augmented_copy
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"
BRAINTUMOR = [sys.executable, "-m", "braintumor.cli"]
# The limit the scale work is held to: peak RSS at the largest size at most this times the smallest's.
RSS_RATIO_LIMIT = 1.3
STAGES = ("train", "evaluate", "predict", "audit")


def build_tree(data: Path, tree: Path, count: int, seed: int = 0) -> None:
    """``count`` augmented copies of the Training images, in their class folders under ``tree/Training``.

    A tree already built in ``--work`` is kept: the build is seeded, so building it again writes the same files.
    It counts as built when it holds ``count`` images and the last one written decodes.
    """
    if _built(tree, count):
        return
    sources = sorted(path for path in (data / "Training").rglob("*") if path.suffix.lower() in {".jpg", ".jpeg"})
    rng = np.random.default_rng(seed)
    for index in range(count):
        source = sources[index % len(sources)]
        image = augmented_copy(Image.open(source), rng)
        folder = tree / "Training" / source.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:06d}.jpg", quality=90)


def _built(tree: Path, count: int) -> bool:
    images = sorted((tree / "Training").rglob("*.jpg")) if (tree / "Training").is_dir() else []
    if len(images) != count:
        return False
    last = max(images, key=lambda path: path.name)
    try:
        with Image.open(last) as image:
            image.load()
    except OSError:
        return False
    return True


def run_command(arguments: list[str]) -> dict[str, Any]:
    """Run a braintumor command; its wall seconds and peak RSS (MB). Fails loudly when the command fails."""
    started = time.perf_counter()
    process = subprocess.Popen([*BRAINTUMOR, *arguments], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{output[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def measure_size(
    tree: Path, work: Path, count: int, overrides: list[str], stages: Sequence[str] = STAGES
) -> dict[str, dict[str, Any]]:
    """The chosen stages on one tree: seconds, images/s and peak RSS of each (evaluate and predict need train)."""
    run_dir, bundle = work / "run", work / "run" / "bundle"
    results: dict[str, dict[str, Any]] = {}
    if "train" in stages:
        train = ["train", "lite2-probe", "--data", str(tree), "--out", str(run_dir), "--tracker", "none", "--no-onnx"]
        results["train"] = run_command(train + [part for value in overrides for part in ("--set", value)] + ["-q"])
        record = json.loads((bundle / "config.json").read_text(encoding="utf-8"))["training"]
        feature_s = record["timing"]["feature_extraction_s"]
        results["train"]["images_per_s"] = round((record["n_train"] + record["n_val"]) / feature_s, 2)
        results["train"]["feature_stage_s"] = feature_s
    if "evaluate" in stages:
        evaluate = ["evaluate", str(bundle), "--data", str(tree), "--split", "Training", "--out", str(work / "eval")]
        results["evaluate"] = run_command([*evaluate, "--quiet"])
    if "predict" in stages:
        predict = ["predict", str(bundle), str(tree / "Training"), "--out-dir", str(work / "pred")]
        results["predict"] = run_command(predict)
    if "audit" in stages:
        audit = ["audit", str(tree), "--out", str(work / "audit"), "--no-cache", "--no-report", "-q"]
        results["audit"] = run_command(audit)
    for name in ("evaluate", "predict", "audit"):
        if name in results:
            results[name]["images_per_s"] = round(count / results[name]["seconds"], 2)
    return results


def merge_committed(
    results: dict[int, dict[str, dict[str, Any]]], sizes: list[int], committed: Path
) -> dict[int, dict[str, dict[str, Any]]]:
    """The committed results with the stages measured now replaced; other stages keep their own provenance."""
    if not committed.exists():
        raise SystemExit(f"--stages re-measures part of {committed}, which does not exist: run every stage first")
    earlier = json.loads(committed.read_text(encoding="utf-8"))
    if earlier["sizes"] != sizes:
        raise SystemExit(f"{committed} has sizes {earlier['sizes']}, not {sizes}: re-run every stage")
    date = earlier.get("date") or _caption_date(committed.with_suffix(".md"))
    merged: dict[int, dict[str, dict[str, Any]]] = {}
    for size in sizes:
        kept = earlier["results"][str(size)]
        for stage in kept.values():
            stage.setdefault("measured_by", earlier["command"].strip())
            stage.setdefault("date", date)
        merged[size] = {**kept, **results[size]}
    return merged


def table(sizes: list[int], results: dict[int, dict[str, dict[str, Any]]], caption: str) -> str:
    """Markdown: per stage, images/s and peak RSS at each size and the RSS ratio of the largest to the smallest."""
    columns = ["stage", *[f"{size} images: images/s" for size in sizes], *[f"{size}: peak RSS MB" for size in sizes]]
    lines = markdown_header([*columns, "RSS ratio"], "l" + "r" * (2 * len(sizes) + 1))
    for stage in STAGES:
        rates = [str(results[size][stage]["images_per_s"]) for size in sizes]
        rss = [results[size][stage]["peak_rss_mb"] for size in sizes]
        lines.append(markdown_row([stage, *rates, *map(str, rss), f"{rss[-1] / rss[0]:.2f}"]))
    return "\n".join([*lines, "", caption, ""])


def _caption_date(markdown: Path) -> str:
    """The date in a results table's caption (results written before the JSON kept one)."""
    found = re.findall(r"(\d{4}-\d{2}-\d{2})\.", markdown.read_text(encoding="utf-8")) if markdown.exists() else []
    return found[0] if found else "date not recorded"


def provenance(results: dict[int, dict[str, dict[str, Any]]], sizes: list[int], caption: str) -> str:
    """The caption, with a line for each stage measured by an earlier run (its command and date)."""
    earlier: dict[tuple[str, str], list[str]] = {}
    for stage in STAGES:
        entry = results[sizes[-1]][stage]
        if "measured_by" in entry:
            earlier.setdefault((entry["measured_by"], entry["date"]), []).append(stage)
    lines = [caption]
    for (command, date), stages in earlier.items():
        lines.append(f"The {', '.join(stages)} rows: measured by `{command}`, {date}.")
    return "\n\n".join(lines)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BRAINTUMOR_DATA", "../shared/data/brain-tumor-mri"))
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    parser.add_argument("--work", type=Path, default=None, help="Where the trees and outputs go (default: temporary).")
    parser.add_argument("--quick", action="store_true", help="40 and 200 images at 64 px; results stay in --work.")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="Measure only these stages; the committed results keep the other stages' rows with their own command.",
    )
    args = parser.parse_args()
    stages = [stage for stage in STAGES if stage in args.stages]
    if {"evaluate", "predict"} & set(stages) and "train" not in stages:
        parser.error("evaluate and predict score the bundle that train writes: add train to --stages")
    sizes = [40, 200] if args.quick else sorted(args.sizes)
    # The recipe as it is; --quick only shrinks the images so that the check takes seconds.
    overrides = ["data.image_size=64", "train.max_epochs=3"] if args.quick else []
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-"))
    load_start = os.getloadavg()[0]
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for size in sizes:
        tree = work / f"tree-{size}"
        started = time.perf_counter()
        build_tree(args.data, tree, size)
        print(f"tree of {size} images ready in {time.perf_counter() - started:.0f} s: {tree}", flush=True)
        results[size] = measure_size(tree, work / f"out-{size}", size, overrides, stages)
        print(json.dumps(results[size]), flush=True)
    sizes_option = option("--sizes", sizes, [3000, 30000])
    stages_option = option("--stages", stages, list(STAGES))
    command = command_line("scale.py", "--quick" if args.quick else sizes_option, stages_option)
    target = (work if args.quick else RESULTS) / "scale.md"
    if stages != list(STAGES):
        if args.quick:
            raise SystemExit(f"measured {stages} only: {json.dumps(results)}")
        results = merge_committed(results, sizes, target.with_suffix(".json"))
    caption = produced_by(
        command.strip(),
        f"load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, ",
    )
    write_results(target, sizes, overrides, results, command, provenance(results, sizes, caption))


def write_results(
    target: Path,
    sizes: list[int],
    overrides: list[str],
    results: dict[int, dict[str, dict[str, Any]]],
    command: str,
    caption: str,
) -> None:
    """The Markdown table and the JSON record, and the ratios checked against the limit."""
    markdown = table(sizes, results, caption)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(markdown, encoding="utf-8")
    ratios = {
        stage: round(results[sizes[-1]][stage]["peak_rss_mb"] / results[sizes[0]][stage]["peak_rss_mb"], 3)
        for stage in STAGES
    }
    full = {"sizes": sizes, "overrides": overrides, "results": results, "rss_ratio": ratios, "command": command}
    full["date"] = time.strftime("%Y-%m-%d")
    full["within_limit"] = all(ratio <= RSS_RATIO_LIMIT for ratio in ratios.values())
    write_json(target.with_suffix(".json"), full)
    print(markdown)
    print(f"peak RSS ratios {ratios}: within {RSS_RATIO_LIMIT}x: {full['within_limit']}")


if __name__ == "__main__":
    main()
