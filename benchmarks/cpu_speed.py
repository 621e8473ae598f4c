"""CPU speed of the product's default path against eager fp32, side by side on the real data, in one run.

    python benchmarks/cpu_speed.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights \\
        --bundle runs/lite2-probe/bundle [--bf16-bundle runs/seed-cnn/bundle] [--quick]

Each path runs in its own process, one after the other (never at the same time):
- eager: the code before the fast path: ``BRAINTUMOR_CPU_TUNING=0`` (glibc's default allocator behaviour, NCHW
  tensors), precision 32, the feature cache's transform applied image by image;
- default: what the product does now: allocator tuning, channels_last, each recipe's precision
  (``Recipe.precision``: bf16 for networks trained from scratch where the CPU has native bf16, fp32 for frozen
  features), batched transforms.
Measured in both: training images/s of ``seed-cnn`` (augmented batches, forward, backward, Adam step), feature
extraction images/s of Lite0 (224 px) and Lite2 (260 px, head crop), ``evaluate`` of ``--eval-images`` Training
images with ``--bundle`` (wall time: decoding, model, metrics, plots), and the validation accuracy of
``--bundle`` (and of ``--bf16-bundle``, a network whose default is bf16) with 95% bootstrap intervals.
In the default path only: the bare network's images/s beside the product's clean and augmented feature views
of ``lite0-lpft-cached`` (streamed from disk as training reads them), and the augmented view's time over the
clean view's. ``--avx2`` runs both paths on oneDNN's and PyTorch's AVX2 kernels only (``ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2``; ``precision: auto`` then picks fp32), as on a CPU without AVX-512 or bf16 units, and
writes ``cpu_speed_avx2.json``; the core's clock and caches stay this machine's.
Writes ``benchmarks/results/cpu_speed.json`` with ``train_speedup``, ``feature_speedup`` (the smaller of the
two backbones') and ``evaluate_speedup``. ``--quick``: a few batches each (under 3 minutes), for a check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import AVX2_ENVIRONMENT, command_line, data_parser, option, produced_by, use_weights_dir, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_speed.json"
AVX2_RESULTS = RESULTS.with_name("cpu_speed_avx2.json")
PATHS = ("eager", "default")
FEATURE_RECIPES = ("lite0-probe", "lite2-probe")
# The recipe whose training encodes augmented views (clean view + 2 augmented, each a pass over Training).
VIEW_RECIPE = "lite0-lpft-cached"


def _arguments() -> argparse.Namespace:
    parser = data_parser(__doc__)
    parser.add_argument("--bundle", type=Path, help="A trained bundle (the README's lite2-probe) for evaluate.")
    parser.add_argument("--bf16-bundle", type=Path, help="A bundle whose default precision is bf16 (seed-cnn).")
    parser.add_argument("--train-images", type=int, default=320, help="Training images timed for seed-cnn.")
    parser.add_argument("--feature-images", type=int, default=512, help="Images timed per backbone.")
    parser.add_argument("--eval-images", type=int, default=1520, help="Images evaluate reads.")
    parser.add_argument("--view-images", type=int, default=512, help="Images per feature view timed.")
    parser.add_argument("--quick", action="store_true", help="A few batches each, for a check.")
    parser.add_argument(
        "--avx2", action="store_true", help="Both paths on AVX2 kernels only, as on a CPU without AVX-512 or bf16."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="Results JSON (default: the committed file; --quick: a temporary one)."
    )
    # Set by the parent for its child processes only.
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def _evaluation_root(data: Path, count: int) -> Path:
    """A data root whose ``Bench`` split links ``count`` Training images (class folders kept)."""
    from lib.cpu_speed import spread_samples

    root = Path(tempfile.mkdtemp(prefix="cpu-speed-"))
    for sample in spread_samples(data, count):
        target = root / "Bench" / sample.path.parent.name / sample.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(sample.path.resolve())
    return root


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one path (run inside the child process)."""
    from lib import cpu_speed as speed

    from braintumor.runtime import tune_cpu_runtime

    tune_cpu_runtime()  # what the CLI does before any command (a no-op in the eager child)

    precision = "32" if args.path == "eager" else None
    eager = args.path == "eager"
    result: dict[str, Any] = {
        "training": speed.training_throughput("seed-cnn", args.data, args.train_images, precision),
        "features": {
            name: speed.feature_throughput(name, args.data, args.feature_images, precision, eager=eager)
            for name in FEATURE_RECIPES
        },
    }
    if not eager:
        result["views"] = speed.view_throughput(VIEW_RECIPE, args.data, args.view_images)
    if args.bundle is not None:
        root = _evaluation_root(args.data, args.eval_images)
        result["evaluate"] = speed.evaluate_throughput(args.bundle, root, "Bench", root / "eval", precision)
        result["validation"] = [speed.validation_accuracy(args.bundle, args.data, precision)]
        if args.bf16_bundle is not None:
            result["validation"].append(speed.validation_accuracy(args.bf16_bundle, args.data, precision))
    return result


def _run_child(args: argparse.Namespace, path: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="cpu-speed-")) / f"{path}.json"
    command = [sys.executable, __file__, *sys.argv[1:], "--path", path, "--child-out", str(out)]
    environment = dict(os.environ, BRAINTUMOR_CPU_TUNING="0" if path == "eager" else "1")
    if args.avx2:
        environment.update(AVX2_ENVIRONMENT)
    subprocess.run(command, check=True, env=environment)
    return json.loads(out.read_text(encoding="utf-8"))


def _ratio(fast: dict[str, Any], slow: dict[str, Any]) -> float:
    return round(fast["images_per_s"] / slow["images_per_s"], 2)


def _summary(eager: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    features = {name: _ratio(default["features"][name], eager["features"][name]) for name in FEATURE_RECIPES}
    summary: dict[str, Any] = {
        "train_speedup": _ratio(default["training"], eager["training"]),
        "feature_speedup": min(features.values()),
        "feature_speedup_by_recipe": features,
        "evaluate_speedup": _ratio(default["evaluate"], eager["evaluate"]) if "evaluate" in default else None,
        "augmented_over_clean_time": default["views"]["augmented_over_clean_time"],
    }
    return summary


def _print(eager: dict[str, Any], default: dict[str, Any], summary: dict[str, Any]) -> None:
    rows = [("seed-cnn training", eager["training"], default["training"])]
    rows += [(f"{name} features", eager["features"][name], default["features"][name]) for name in FEATURE_RECIPES]
    if "evaluate" in default:
        rows.append((f"evaluate ({default['evaluate']['images']} images)", eager["evaluate"], default["evaluate"]))
    print(f"{'work':<30} {'eager fp32 img/s':>17} {'default img/s':>14} {'default precision':>18} {'speed-up':>9}")
    for name, slow, fast in rows:
        print(
            f"{name:<30} {slow['images_per_s']:>17.1f} {fast['images_per_s']:>14.1f} {fast['precision']:>18} "
            f"{fast['images_per_s'] / slow['images_per_s']:>8.2f}x"
        )
    if "evaluate" in default:
        seconds = eager["evaluate"]["seconds"], default["evaluate"]["seconds"]
        print(f"evaluate wall time: eager {seconds[0]:.1f} s, default {seconds[1]:.1f} s")
    for slow, fast in zip(eager.get("validation", []), default.get("validation", []), strict=True):
        print(
            f"validation accuracy of {fast['bundle']} ({fast['n_images']} images): eager fp32 {slow['accuracy']:.2%} "
            f"[{slow['ci95'][0]:.2%}, {slow['ci95'][1]:.2%}], default ({fast['precision']}) {fast['accuracy']:.2%}"
        )
    views = default["views"]
    print(f"{views['recipe']} feature views ({views['images']} images streamed from disk, {views['precision']}):")
    for name, rate in views["images_per_s"].items():
        print(f"  {name:<28} {rate:>8.1f} img/s")
    print(f"  augmented view time over clean view time: {views['augmented_over_clean_time']:.2f}x")
    keys = ("train_speedup", "feature_speedup", "evaluate_speedup", "augmented_over_clean_time")
    print(json.dumps({key: summary[key] for key in keys}))


def main() -> None:
    args = _arguments()
    use_weights_dir(args)
    if args.quick:
        args.train_images, args.feature_images, args.eval_images, args.view_images = 96, 64, 128, 64
    if args.path is not None:
        write_json(args.child_out, _measure(args))
        return
    eager, default = (_run_child(args, path) for path in PATHS)
    summary = _summary(eager, default)
    _print(eager, default, summary)
    command = command_line(
        "cpu_speed.py",
        option("--bundle", args.bundle),
        option("--bf16-bundle", args.bf16_bundle),
        option("--quick", args.quick),
        option("--avx2", args.avx2),
    )
    committed = AVX2_RESULTS if args.avx2 else RESULTS
    out = args.out or (Path(tempfile.mkdtemp(prefix="cpu-speed-")) / committed.name if args.quick else committed)
    print(f"results: {out}")
    write_json(
        out,
        {**summary, "eager": eager, "default": default, "quick": args.quick, "produced_by": produced_by(command)},
    )


if __name__ == "__main__":
    main()
