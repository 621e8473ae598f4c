"""Single-image latency and batch throughput of a bundle: PyTorch against onnxruntime, on this machine.

Usage:
    .venv/bin/python benchmarks/inference_speed.py BUNDLE [--image SCAN.jpg] [--runs 200] [--batch 32]

Three measurements per backend, taken in alternating rounds so both see the same machine load:
``model``: one uint8 image already at the model's size through the network (the issue's target:
p50 <= 15 ms for EfficientNet-Lite0 at 224x224 on 2 cores); ``end-to-end``: JPEG bytes decoded,
resized and classified, as the service does per request; ``batch``: images per second through
``predict_uint8`` in batches. The CPU time per single-image model run (all threads of the process)
is printed too: it shows each backend's own cost whatever else runs on the machine. When the bundle
has no ``model.onnx`` the graph is exported to a temporary folder first (the bundle is not changed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from braintumor.bundle import load_bundle
from braintumor.data.images import decode_image_bytes
from braintumor.data.preprocessing import resize_to_uint8_tensor
from braintumor.data.synthetic import synthetic_image
from braintumor.inference import Predictor
from braintumor.inference.onnx_export import ONNX_FILE, OnnxPredictor, export_onnx

TARGET_P50_MS = 15.0
console = Console(width=120)


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
        "n": len(values),
    }


def _timed(function: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def _sample_jpeg(image_path: Path | None) -> bytes:
    if image_path is not None:
        return image_path.read_bytes()
    buffer = io.BytesIO()
    synthetic_image("glioma", 512, np.random.default_rng(0)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument(
        "--image", type=Path, help="JPEG/PNG/DICOM for the end-to-end timing (default: synthetic 512x512)"
    )
    parser.add_argument("--runs", type=int, default=200, help="single-image runs per backend and measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds the runs are split into")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5, help="timed batches per backend")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime and torch threads (default: cores)")
    parser.add_argument("--spin", action="store_true", help="let idle onnxruntime threads busy-wait")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    bundle = load_bundle(args.bundle)
    size = bundle.preprocessing.image_size
    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = args.bundle / ONNX_FILE
        if not onnx_path.is_file():
            console.print(f"{onnx_path} missing: exporting to a temporary folder")
            onnx_path = export_onnx(bundle, out=Path(scratch) / ONNX_FILE).path
        predictors: dict[str, Predictor] = {
            "pytorch": Predictor(bundle, batch_size=args.batch),
            "onnxruntime": OnnxPredictor(
                bundle, onnx_path=onnx_path, threads=threads, spin=args.spin, batch_size=args.batch
            ),
        }
        jpeg = _sample_jpeg(args.image)
        one = resize_to_uint8_tensor(decode_image_bytes(jpeg, "sample"), bundle.preprocessing).unsqueeze(0)
        batch = one.repeat(args.batch, 1, 1, 1)
        load_before = os.getloadavg()

        def end_to_end(predictor: Predictor) -> Callable[[], object]:
            return lambda: predictor.predict_images([decode_image_bytes(jpeg, "sample")])

        for predictor in predictors.values():
            _timed(lambda p=predictor: p.predict_uint8(one), args.warmup)
            _timed(lambda p=predictor: p.predict_uint8(batch), 1)
        samples: dict[str, dict[str, list[float]]] = {name: {"model": [], "end_to_end": []} for name in predictors}
        batch_ms: dict[str, list[float]] = {name: [] for name in predictors}
        # CPU time of this process (all its threads) per single-image run: unlike the wall-clock
        # latency it hardly depends on the machine's other load, so it shows each backend's own cost.
        model_cpu_ms: dict[str, float] = dict.fromkeys(predictors, 0.0)
        per_round = max(1, args.runs // args.rounds)
        batches_per_round = max(1, args.batches // args.rounds)
        for _ in range(args.rounds):
            for name, predictor in predictors.items():
                cpu_started = time.process_time()
                samples[name]["model"] += _timed(lambda p=predictor: p.predict_uint8(one), per_round)
                model_cpu_ms[name] += (time.process_time() - cpu_started) * 1000.0
                samples[name]["end_to_end"] += _timed(end_to_end(predictor), per_round)
                batch_ms[name] += _timed(lambda p=predictor: p.predict_uint8(batch), batches_per_round)
        load_after = os.getloadavg()

    results: dict[str, object] = {
        "bundle": str(args.bundle),
        "recipe": bundle.name,
        "image_size": size,
        "sample_bytes": len(jpeg),
        "threads": threads,
        "onnxruntime_spin": args.spin,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "backends": {},
    }
    table = Table(
        title=f"{bundle.name} at {size}x{size}, {threads} threads, load {load_before[0]:.1f}->{load_after[0]:.1f}"
    )
    for column in (
        "backend",
        "model p50",
        "model p95",
        "model CPU",
        "end-to-end p50",
        "end-to-end p95",
        f"batch {args.batch} img/s",
    ):
        table.add_column(column, justify="right")
    for name in predictors:
        model_stats = _percentiles(samples[name]["model"])
        e2e_stats = _percentiles(samples[name]["end_to_end"])
        throughput = args.batch / (float(np.median(batch_ms[name])) / 1000.0)
        model_stats["cpu_ms_per_image"] = model_cpu_ms[name] / max(1, len(samples[name]["model"]))
        results["backends"][name] = {  # type: ignore[index]
            "model": model_stats,
            "end_to_end": e2e_stats,
            "batch_size": args.batch,
            "batch_images_per_s": throughput,
        }
        table.add_row(
            name,
            f"{model_stats['p50_ms']:.1f} ms",
            f"{model_stats['p95_ms']:.1f} ms",
            f"{model_stats['cpu_ms_per_image']:.1f} ms",
            f"{e2e_stats['p50_ms']:.1f} ms",
            f"{e2e_stats['p95_ms']:.1f} ms",
            f"{throughput:.0f}",
        )
    console.print(table)
    best = min(results["backends"][name]["model"]["p50_ms"] for name in predictors)  # type: ignore[index]
    verdict = "[green]met[/]" if best <= TARGET_P50_MS else "[red]missed[/]"
    console.print(f"target: single-image model p50 <= {TARGET_P50_MS:.0f} ms -> best {best:.1f} ms: {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
