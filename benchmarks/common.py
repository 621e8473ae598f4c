"""What the benchmark scripts share: options, the line that says how a table was made, timing, tables, results.

Only the standard library and numpy are imported here: serve_load's load generator stays a light process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


# What makes PyTorch and oneDNN run their AVX2 kernels only (and ``precision: auto`` resolve to fp32): a CPU
# without AVX-512 or bf16 units, seen on one that has them. Set it before torch is imported (a child process).
AVX2_ENVIRONMENT = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def script_parser(doc: str | None, *, whole_doc: bool = False) -> argparse.ArgumentParser:
    """An argument parser described by the script's docstring: its first line, or all of it as written."""
    if whole_doc:
        return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0])


def data_parser(doc: str | None) -> argparse.ArgumentParser:
    """:func:`script_parser` with ``--data`` (default ``$BRAINTUMOR_DATA``) and ``--weights-dir``."""
    parser = script_parser(doc)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BRAINTUMOR_DATA", "../shared/data/brain-tumor-mri"))
    )
    parser.add_argument("--weights-dir", type=Path, default=None, help="Sets BRAINTUMOR_WEIGHTS_DIR.")
    return parser


def use_weights_dir(args: argparse.Namespace) -> None:
    """Point the pretrained-weight lookup at ``--weights-dir`` when it was given."""
    if args.weights_dir:
        os.environ["BRAINTUMOR_WEIGHTS_DIR"] = str(args.weights_dir.resolve())


def cache_timing_parser(doc: str | None, recipe: str, images: int) -> argparse.ArgumentParser:
    """:func:`data_parser` with what the cache-speed benchmarks share: the recipe and how many images to time."""
    parser = data_parser(doc)
    parser.add_argument("--recipe", default=recipe)
    parser.add_argument("--images", type=int, default=images, help="Training images timed (the epoch is extrapolated).")
    parser.add_argument("--train-images", type=int, default=2360, help="Images per real epoch (2360 on Sartaj).")
    return parser


def option(name: str, value: object, default: object = None) -> str | None:
    """``name value`` for a command line, ``name`` alone for ``True``; ``None`` when left at ``default``.

    Example:
        >>> option("--recipes", ["a", "b"]), option("--reuse", True), option("--out", "x.md", "x.md")
        ('--recipes a b', '--reuse', None)
    """
    if value is None or value is False or value == default:
        return None
    if value is True:
        return name
    return f"{name} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def command_line(script: str, *options: str | None) -> str:
    """The command that reproduces a results file: ``python benchmarks/<script>`` and the options given."""
    return f"python benchmarks/{script} " + " ".join(part for part in options if part is not None)


def produced_by(command: str, details: str = "") -> str:
    """The provenance line under a results table: the command, the machine and the date."""
    return (
        f"Produced by `{command}` on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{details}{time.strftime('%Y-%m-%d')}."
    )


def markdown_header(columns: Sequence[str], align: str = "") -> list[str]:
    """A Markdown table's header and rule lines; ``align`` has an ``r`` for each right-aligned column.

    Example:
        >>> markdown_header(["name", "n"], align="lr")
        ['| name | n |', '|---|---:|']
    """
    rule = "".join("---:|" if side == "r" else "---|" for side in align.ljust(len(columns), "l"))
    return [markdown_row(columns), "|" + rule]


def markdown_row(cells: Sequence[str]) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(cells) + " |"


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON at ``path`` (its folder made when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def write_table(out: Path, markdown: str, rows: list[dict[str, Any]]) -> None:
    """The Markdown table at ``out`` and its rows beside it, as JSON with the same stem."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown, encoding="utf-8")
    write_json(out.with_suffix(".json"), rows)


def timed(function: Callable[[], T], digits: int | None = None) -> tuple[T, float, float]:
    """``function()``'s value, the wall seconds it took and the CPU seconds of this process (all its threads).

    ``digits`` rounds the seconds, as a results file keeps them.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return (value, wall, cpu) if digits is None else (value, round(wall, digits), round(cpu, digits))


def latencies_ms(function: Callable[[], object], runs: int) -> list[float]:
    """Wall-clock milliseconds of each of ``runs`` calls of ``function``."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def percentiles_ms(samples_ms: Sequence[float], percentiles: Sequence[int]) -> dict[str, float]:
    """``p50_ms``-style entries for each of ``percentiles`` of the samples.

    Example:
        >>> percentiles_ms([1.0, 2.0, 3.0], [50])
        {'p50_ms': 2.0}
    """
    values = np.asarray(samples_ms)
    return {f"p{p}_ms": float(np.percentile(values, p)) for p in percentiles}


def sample_image(image_path: Path | None) -> tuple[bytes, str]:
    """The bytes and file name of ``image_path``, or of a synthetic 512x512 glioma JPEG when none is given."""
    if image_path is not None:
        return image_path.read_bytes(), image_path.name
    # Imported only here: braintumor brings torch, which a caller posting a given file does not need.
    from braintumor.data.synthetic import synthetic_image

    buffer = io.BytesIO()
    synthetic_image("glioma", 512, np.random.default_rng(0)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "synthetic.jpg"
