"""The README's main command as a user runs it: training seconds, peak memory and accuracy (this CPU or AVX2 only).

    python benchmarks/main_command.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights
    python benchmarks/main_command.py ... --avx2          # as on a CPU without AVX-512 or bf16 units
    python benchmarks/main_command.py ... --recipe lite0-lpft-cached

Runs ``braintumor train RECIPE --data DATA --out OUT --tracker none --evaluate`` in a subprocess and reports the
bundle's ``training.duration_s`` (decoding, features, probe, selection; not the ONNX export or the Testing
evaluation), the feature stage's seconds, the command's wall time and peak RSS (``ru_maxrss`` from ``wait4``: the
main process; the decode workers are separate processes), validation and Testing accuracy.

``--avx2`` sets ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2`` for the command: oneDNN and PyTorch
then run their AVX2 kernels and ``precision: auto`` resolves to fp32, as on a CPU without AVX-512 or bf16. The
core's other properties (clock, caches, memory bandwidth) stay this machine's, so a real AVX2-only CPU may differ.

Writes ``benchmarks/results/main_command_<recipe>[_avx2].json`` (``--out`` to write elsewhere).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import AVX2_ENVIRONMENT, command_line, data_parser, option, produced_by, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and the vector and matrix extensions that decide PyTorch's kernels."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return {"model": model, "cores": os.cpu_count(), "extensions": [flag for flag in wanted if flag in flags]}


def run_train(arguments: list[str], environment: dict[str, str]) -> dict[str, Any]:
    """Run ``braintumor`` with ``arguments``; its wall seconds and peak RSS (MB). Fails loudly when it fails."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "braintumor.cli", *arguments], stdout=log, stderr=subprocess.STDOUT, env=environment
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"braintumor {' '.join(arguments)} failed:\n{output[-3000:]}")
    return {"wall_s": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def summarise(run_dir: Path) -> dict[str, Any]:
    """Training seconds, the feature stage, validation and Testing accuracy from the run's files."""
    training = json.loads((run_dir / "bundle" / "config.json").read_text(encoding="utf-8"))["training"]
    evaluations = sorted(run_dir.rglob("metrics.json"), key=lambda path: path.stat().st_mtime)
    testing = json.loads(evaluations[-1].read_text(encoding="utf-8")) if evaluations else {}
    return {
        "duration_s": training["duration_s"],
        "feature_extraction_s": training.get("timing", {}).get("feature_extraction_s"),
        "best_epoch": training.get("best_epoch"),
        "val_accuracy": training["val_metrics"]["accuracy"],
        "test_accuracy": testing.get("accuracy"),
        "inference_precision": testing.get("inference_precision"),
    }


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--recipe", default="lite2-probe")
    parser.add_argument("--avx2", action="store_true", help="Run on PyTorch's and oneDNN's AVX2 kernels only.")
    parser.add_argument("--work", type=Path, default=None, help="The run folder's parent (default: temporary).")
    parser.add_argument("--out", type=Path, default=None, help="Results JSON (default: benchmarks/results/...).")
    args = parser.parse_args()
    environment = dict(os.environ)
    if args.weights_dir:
        environment["BRAINTUMOR_WEIGHTS_DIR"] = str(args.weights_dir.resolve())
    if args.avx2:
        environment.update(AVX2_ENVIRONMENT)
    run_dir = (args.work or Path(tempfile.mkdtemp(prefix="main-command-"))) / args.recipe
    load_start = os.getloadavg()[0]
    train = ["train", args.recipe, "--data", str(args.data), "--out", str(run_dir), "--tracker", "none"]
    measured = run_train([*train, "--evaluate", "--quiet"], environment)
    result = {**summarise(run_dir), **measured, "cpu": cpu_description(), "avx2_only": args.avx2}
    command = command_line(
        "main_command.py",
        option("--data", args.data),
        option("--weights-dir", args.weights_dir),
        option("--recipe", args.recipe, "lite2-probe"),
        option("--avx2", args.avx2),
    )
    result["produced_by"] = produced_by(
        command.strip(), f"load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, "
    )
    out = args.out or RESULTS / f"main_command_{args.recipe}{'_avx2' if args.avx2 else ''}.json"
    write_json(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
