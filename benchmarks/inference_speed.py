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
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import latencies_ms, percentiles_ms, sample_image, script_parser, write_json
from rich.console import Console
from rich.table import Table

from braintumor.bundle import Bundle, load_bundle
from braintumor.data.images import decode_image_bytes
from braintumor.data.preprocessing import resize_to_uint8_tensor
from braintumor.inference import Predictor
from braintumor.inference.onnx_export import ONNX_FILE, OnnxPredictor, export_onnx

TARGET_P50_MS = 15.0
COLUMNS = ("backend", "model p50", "model p95", "model CPU", "end-to-end p50", "end-to-end p95")
console = Console(width=120)


@dataclass
class _Samples:
    """One backend's timings: milliseconds per call, and the CPU milliseconds of all single-image model runs."""

    model: list[float] = field(default_factory=list)
    end_to_end: list[float] = field(default_factory=list)
    batch: list[float] = field(default_factory=list)
    model_cpu_ms: float = 0.0


def _parse_args() -> argparse.Namespace:
    parser = script_parser(__doc__, whole_doc=True)
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
    return parser.parse_args()


def _measure(
    predictors: dict[str, Predictor], jpeg: bytes, one: torch.Tensor, args: argparse.Namespace
) -> dict[str, _Samples]:
    """Warm every backend up, then time them in alternating rounds."""
    batch = one.repeat(args.batch, 1, 1, 1)
    for predictor in predictors.values():
        latencies_ms(lambda p=predictor: p.predict_uint8(one), args.warmup)
        latencies_ms(lambda p=predictor: p.predict_uint8(batch), 1)
    samples = {name: _Samples() for name in predictors}
    per_round = max(1, args.runs // args.rounds)
    batches_per_round = max(1, args.batches // args.rounds)
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            # CPU time of this process (all its threads) per single-image run: unlike the wall-clock
            # latency it hardly depends on the machine's other load, so it shows each backend's own cost.
            cpu_started = time.process_time()
            samples[name].model += latencies_ms(lambda p=predictor: p.predict_uint8(one), per_round)
            samples[name].model_cpu_ms += (time.process_time() - cpu_started) * 1000.0
            samples[name].end_to_end += latencies_ms(
                lambda p=predictor: p.predict_images([decode_image_bytes(jpeg, "sample")]), per_round
            )
            samples[name].batch += latencies_ms(lambda p=predictor: p.predict_uint8(batch), batches_per_round)
    return samples


def _summary(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {**percentiles_ms(values, (50, 95)), "mean_ms": float(values.mean()), "n": len(values)}


def _backend_results(samples: _Samples, batch_size: int) -> dict[str, Any]:
    model = _summary(samples.model)
    model["cpu_ms_per_image"] = samples.model_cpu_ms / max(1, len(samples.model))
    return {
        "model": model,
        "end_to_end": _summary(samples.end_to_end),
        "batch_size": batch_size,
        "batch_images_per_s": batch_size / (float(np.median(samples.batch)) / 1000.0),
    }


def _table(title: str, backends: dict[str, dict[str, Any]], batch_size: int) -> Table:
    table = Table(title=title)
    for column in (*COLUMNS, f"batch {batch_size} img/s"):
        table.add_column(column, justify="right")
    for name, result in backends.items():
        model, e2e = result["model"], result["end_to_end"]
        times = (model["p50_ms"], model["p95_ms"], model["cpu_ms_per_image"], e2e["p50_ms"], e2e["p95_ms"])
        table.add_row(name, *(f"{value:.1f} ms" for value in times), f"{result['batch_images_per_s']:.0f}")
    return table


def _predictors(bundle: Bundle, args: argparse.Namespace, threads: int, scratch: Path) -> dict[str, Predictor]:
    onnx_path = args.bundle / ONNX_FILE
    if not onnx_path.is_file():
        console.print(f"{onnx_path} missing: exporting to a temporary folder")
        onnx_path = export_onnx(bundle, out=scratch / ONNX_FILE).path
    return {
        "pytorch": Predictor(bundle, batch_size=args.batch),
        "onnxruntime": OnnxPredictor(
            bundle, onnx_path=onnx_path, threads=threads, spin=args.spin, batch_size=args.batch
        ),
    }


def main() -> int:
    args = _parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    bundle = load_bundle(args.bundle)
    size = bundle.preprocessing.image_size
    jpeg, _ = sample_image(args.image)
    one = resize_to_uint8_tensor(decode_image_bytes(jpeg, "sample"), bundle.preprocessing).unsqueeze(0)
    with tempfile.TemporaryDirectory() as scratch:
        predictors = _predictors(bundle, args, threads, Path(scratch))
        load_before = os.getloadavg()
        samples = _measure(predictors, jpeg, one, args)
        load_after = os.getloadavg()
    backends = {name: _backend_results(samples[name], args.batch) for name in predictors}
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
        "backends": backends,
    }
    title = f"{bundle.name} at {size}x{size}, {threads} threads, load {load_before[0]:.1f}->{load_after[0]:.1f}"
    console.print(_table(title, backends, args.batch))
    best = min(result["model"]["p50_ms"] for result in backends.values())
    verdict = "[green]met[/]" if best <= TARGET_P50_MS else "[red]missed[/]"
    console.print(f"target: single-image model p50 <= {TARGET_P50_MS:.0f} ms -> best {best:.1f} ms: {verdict}")
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
