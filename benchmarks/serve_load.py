"""Load test of ``braintumor serve``: N concurrent clients posting one image for a bounded time.

Usage:
    .venv/bin/python benchmarks/serve_load.py BUNDLE [--clients 4] [--duration 30] [--image SCAN.jpg]

The server is started as a subprocess on 127.0.0.1 only (a free port), warmed up, then driven by
``--clients`` concurrent HTTP clients (one asyncio loop, httpx) that each post the image to
``/v1/predict`` as a multipart upload, one request after another, for ``--duration`` seconds.
Reported: requests per second, latency p50/p95/p99/max, the number of errors (any non-200
answer or transport failure), and the CPU time the server (and the load generator) spent per
request, which, unlike the rates, does not depend on what else runs on the machine. Target on the
2-core machine: >= 60 requests/s with p99 <= 150 ms and zero errors. The clients share the machine
with the server, as a local caller would.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import percentiles_ms, sample_image, script_parser, write_json
from rich.console import Console

TARGET_RPS = 60.0
TARGET_P99_MS = 150.0
console = Console(width=120)
LoadAverages = tuple[float, float, float]


@dataclass
class _LoadRun:
    """What the measured window saw: successful requests' latencies, failures by kind, CPU seconds spent."""

    latencies_ms: list[float]
    errors: dict[str, int]
    server_cpu_s: float
    client_cpu_s: float


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid`` and its live children (uvicorn workers)."""
    ticks = os.sysconf("SC_CLK_TCK")

    def stat(path: Path) -> list[str] | None:
        try:
            # The command name (field 2) may contain spaces: split after its closing parenthesis.
            return path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None

    total = 0.0
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        fields = stat(stat_path)
        if fields is None:
            continue
        process_id, parent_id = int(stat_path.parent.name), int(fields[1])
        if process_id == pid or parent_id == pid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _wait_healthy(url: str, process: subprocess.Popen, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode} before answering")
        try:
            response = httpx.get(f"{url}/v1/health", timeout=2.0)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not answer {url}/v1/health within {timeout_s:.0f} s")


async def _drive(
    url: str, data: bytes, filename: str, clients: int, duration_s: float, warmup_s: float, server_pid: int
) -> _LoadRun:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            try:
                response = await client.post(
                    f"{url}/v1/predict", files={"file": (filename, data, "application/octet-stream")}
                )
                outcome = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                outcome = type(error).__name__
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                if outcome is None:
                    latencies.append((done - sent) * 1000.0)
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

    async def cpu_window() -> tuple[float, float]:
        """Server and client CPU seconds spent during the measured window."""
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        server_start, client_start = _cpu_seconds(server_pid), time.process_time()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        return _cpu_seconds(server_pid) - server_start, time.process_time() - client_start

    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        window = asyncio.create_task(cpu_window())
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        server_cpu_s, client_cpu_s = await window
    return _LoadRun(latencies, errors, server_cpu_s, client_cpu_s)


def _parse_args() -> argparse.Namespace:
    parser = script_parser(__doc__, whole_doc=True)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--image", type=Path, help="image to post (default: synthetic 512x512 JPEG)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--backend", default="auto", help="server backend: auto, onnx or torch")
    parser.add_argument("--threads", type=int, help="server: onnxruntime threads per model run")
    parser.add_argument("--concurrency", type=int, help="server: model runs at the same time")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def _server_command(args: argparse.Namespace, port: int) -> list[str]:
    command = [
        sys.executable, "-m", "braintumor.cli", "serve", str(args.bundle),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
        "--backend", args.backend, "--log-level", "warning",
    ]  # fmt: skip
    for option in ("threads", "concurrency"):
        if getattr(args, option) is not None:
            command += [f"--{option}", str(getattr(args, option))]
    return command


def _serve_and_drive(
    args: argparse.Namespace, data: bytes, filename: str
) -> tuple[dict[str, Any], _LoadRun, LoadAverages, LoadAverages]:
    """Start the server, load it for the warm-up and the measured window, stop it; the load averages around."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = _server_command(args, port)
    console.print("starting: " + " ".join(command[1:]), highlight=False)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        health = _wait_healthy(url, server, timeout_s=180.0)
        console.print(f"serving {health['model']['name']} ({health['model']['backend']}) at {url}", highlight=False)
        load_before = os.getloadavg()
        run = asyncio.run(_drive(url, data, filename, args.clients, args.duration, args.warmup, server.pid))
        load_after = os.getloadavg()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return health, run, load_before, load_after


def _report(results: dict[str, Any]) -> None:
    kinds = results["error_kinds"] or ""
    console.print(
        f"{results['clients']} clients x {results['duration_s']:.0f} s, {results['backend']}: "
        f"{results['requests_per_s']:.1f} req/s, p50 {results['p50_ms']:.1f} ms, p95 {results['p95_ms']:.1f} ms, "
        f"p99 {results['p99_ms']:.1f} ms, max {results['max_ms']:.0f} ms, errors {results['errors']} {kinds}",
        highlight=False,
    )
    load_before, load_after = results["loadavg_before"], results["loadavg_after"]
    console.print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores)")
    # CPU time per request does not depend on what else runs on the machine: it shows the service's own cost.
    console.print(
        f"server CPU: {results['server_cpu_ms_per_request']:.1f} ms per request, {results['server_cpu_share']:.2f} "
        f"cores used on average; load generator: {results['client_cpu_ms_per_request']:.1f} ms CPU per request",
        highlight=False,
    )
    met = results["requests_per_s"] >= TARGET_RPS and results["p99_ms"] <= TARGET_P99_MS and results["errors"] == 0
    console.print(
        f"target: >= {TARGET_RPS:.0f} req/s, p99 <= {TARGET_P99_MS:.0f} ms, 0 errors: "
        + ("[green]met[/]" if met else "[red]missed[/]")
    )


def main() -> int:
    args = _parse_args()
    data, filename = sample_image(args.image)
    health, run, load_before, load_after = _serve_and_drive(args, data, filename)
    if not run.latencies_ms:
        console.print("[red]no request succeeded[/]")
        return 1
    ok = len(run.latencies_ms)
    results = {
        "bundle": str(args.bundle),
        "backend": health["model"]["backend"],
        "clients": args.clients,
        "workers": args.workers,
        "server_threads": args.threads,
        "server_concurrency": args.concurrency,
        "duration_s": args.duration,
        "image_bytes": len(data),
        "requests_ok": ok,
        "errors": sum(run.errors.values()),
        "error_kinds": run.errors,
        "requests_per_s": ok / args.duration,
        **percentiles_ms(run.latencies_ms, (50, 95, 99)),
        "max_ms": float(np.max(run.latencies_ms)),
        "server_cpu_ms_per_request": 1000.0 * run.server_cpu_s / ok,
        "client_cpu_ms_per_request": 1000.0 * run.client_cpu_s / ok,
        "server_cpu_share": run.server_cpu_s / args.duration,
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    _report(results)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
