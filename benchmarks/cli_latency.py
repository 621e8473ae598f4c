"""Cold-start latency of the command line: ``braintumor predict BUNDLE one.jpg`` and ``braintumor --help``.

Usage:
    .venv/bin/python benchmarks/cli_latency.py --bundle BUNDLE --image SCAN.jpg [--runs 5] [--out FILE.json]
    .venv/bin/python benchmarks/cli_latency.py --bundle BUNDLE --image SCAN.jpg --quick

Every run is a fresh process (nothing cached in memory but the operating system's file cache). The
commands are timed in interleaved rounds beside a bare ``python -c "import torch"``, so all three see the
same machine load; each round starts with a different command. Reported: the median wall time of each,
and ``predict - torch``, whose target is at most 1 s. The CPU (model name and its bf16/AMX flags) and the
load average before and after are recorded, since other work on the machine moves every number.

``--quick`` takes 2 runs each and never writes the committed results file
(``benchmarks/results/cli_latency.json``): with ``--out`` it writes elsewhere, without it nowhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import command_line, option, script_parser, write_json

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "cli_latency.json"
TARGET_S = 1.0
QUICK_RUNS = 2
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _parse_args() -> argparse.Namespace:
    parser = script_parser(__doc__, whole_doc=True)
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder to predict with")
    parser.add_argument("--image", type=Path, required=True, help="one image file (JPEG, PNG, ...)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (default 5)")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS_FILE})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs each; never the committed file")
    args = parser.parse_args()
    if args.quick:
        args.runs = min(args.runs, QUICK_RUNS)
        if args.out is not None and args.out.resolve() == RESULTS_FILE:
            parser.error(f"--quick never writes {RESULTS_FILE}: pass another --out")
    elif args.out is None:
        args.out = RESULTS_FILE
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def cpu_description() -> dict[str, Any]:
    """The CPU's model name, which of :data:`CPU_FLAGS` it has, and the core count (from ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not flags:
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "flags": {flag: flag in flags for flag in CPU_FLAGS}, "cores": os.cpu_count()}


def _braintumor_command() -> list[str]:
    """The installed ``braintumor`` script beside this Python, else ``python -m braintumor.cli``."""
    script = Path(sys.executable).parent / "braintumor"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "braintumor.cli"]


def commands(bundle: Path, image: Path) -> dict[str, list[str]]:
    """The three timed command lines, by name."""
    braintumor = _braintumor_command()
    return {
        "torch": [sys.executable, "-c", "import torch"],
        "help": [*braintumor, "--help"],
        "predict": [*braintumor, "predict", str(bundle), str(image)],
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(command: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, all threads) of one fresh process.

    The CPU time moves less than the wall time when other work shares the cores. A failing command stops
    the benchmark with its output.
    """
    cpu, start = _children_cpu_s(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed, cpu = time.perf_counter() - start, _children_cpu_s() - cpu
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return elapsed, cpu


def measure(lines: dict[str, list[str]], runs: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``runs`` wall and CPU times per command, in interleaved rounds; round ``r`` starts with command ``r mod 3``.

    One untimed round first fills the file cache, as a second start on a user's machine finds it.
    """
    names = list(lines)
    for name in names:
        run_once(lines[name])
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, used = run_once(lines[name])
            wall[name].append(round(elapsed, 3))
            cpu[name].append(round(used, 3))
            print(f"  round {round_index + 1}/{runs} {name:8s} {elapsed:6.2f} s wall {used:6.2f} s CPU", flush=True)
    return wall, cpu


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def summary(wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict[str, Any]:
    """Medians, ``predict - torch`` (wall, and CPU for reference) and whether it meets :data:`TARGET_S`."""
    medians, cpu_medians = _medians(wall), _medians(cpu)
    difference = round(medians["predict"] - medians["torch"], 3)
    return {
        "median_s": medians,
        "predict_minus_torch_s": difference,
        "help_minus_torch_s": round(medians["help"] - medians["torch"], 3),
        "target_s": TARGET_S,
        "target_met": difference <= TARGET_S,
        "cpu_median_s": cpu_medians,
        "cpu_predict_minus_torch_s": round(cpu_medians["predict"] - cpu_medians["torch"], 3),
    }


def main() -> None:
    args = _parse_args()
    cpu = cpu_description()
    flags = ", ".join(f"{flag}={'yes' if present else 'no'}" for flag, present in cpu["flags"].items())
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores; {flags})")
    # braintumor predict runs onnxruntime when the bundle has its ONNX graph, PyTorch otherwise.
    has_onnx = (args.bundle / "model.onnx").is_file()
    print(f"bundle: {args.bundle} ({'with' if has_onnx else 'without'} model.onnx)")
    lines = commands(args.bundle, args.image)
    load_before = os.getloadavg()
    wall, cpu_times = measure(lines, args.runs)
    load_after = os.getloadavg()
    result = summary(wall, cpu_times)
    print(f"median of {args.runs} fresh processes each (interleaved):")
    for name, value in result["median_s"].items():
        used = result["cpu_median_s"][name]
        print(f"  {name:8s} {value:6.2f} s wall {used:6.2f} s CPU   {' '.join(lines[name])}")
    verdict = "met" if result["target_met"] else "NOT met"
    print(f"predict - torch = {result['predict_minus_torch_s']:.2f} s (target <= {TARGET_S:.1f} s: {verdict})")
    print(f"predict - torch in CPU time = {result['cpu_predict_minus_torch_s']:.2f} s")
    print(f"help - torch = {result['help_minus_torch_s']:.2f} s")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.out is None:
        return
    record = {
        "command": command_line(
            "cli_latency.py",
            option("--bundle", args.bundle),
            option("--image", args.image),
            option("--runs", args.runs, 5),
            option("--quick", args.quick),
        ),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu,
        "python": platform.python_version(),
        "bundle_has_onnx": has_onnx,
        "runs": args.runs,
        "interleaved": True,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "commands": {name: " ".join(line) for name, line in lines.items()},
        "times_s": wall,
        "cpu_times_s": cpu_times,
        **result,
    }
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
