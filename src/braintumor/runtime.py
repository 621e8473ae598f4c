"""How PyTorch runs fast on a CPU: the memory allocator, bf16 autocast and channels_last, chosen once.

Three measured causes of slow CPU work (``benchmarks/cpu_speed.py``, ``docs/speed.md``):

- **The allocator.** glibc's malloc hands every block above its mmap threshold back to the kernel when it
  is freed, so each batch's activation maps are page-faulted in again: on 2 cores the kernel time was as
  large as the compute time. :func:`tune_cpu_runtime` keeps freed memory in the process (``mallopt``);
  it changes no result, only where memory comes from.
- **The memory format.** oneDNN's convolutions run natively on NHWC; NCHW tensors are reordered at every
  layer. :func:`to_channels_last` converts a network once (same numbers up to float rounding order).
- **The precision.** CPUs with AVX-512 bf16 (or AMX) run bf16 matrix work at about twice fp32's rate;
  :func:`autocast` runs a block under bf16 autocast when the precision says so. This changes numbers
  slightly (features agree to a cosine of 0.9997 on Lite2), so it is a recipe choice, recorded in bundles.

A fourth, on a small machine: threads slow down preparing a network for inference (:func:`one_thread`).

``BRAINTUMOR_CPU_TUNING=0`` turns the allocator tuning, channels_last, BatchNorm folding
(:mod:`braintumor.models.fusion`) and the single-thread preparation off (the eager baseline that
``benchmarks/cpu_speed.py`` compares against); precision is chosen separately.

Example:
    >>> resolve_precision("32")
    '32-true'
    >>> resolve_precision("auto") in ("32-true", "bf16-mixed")
    True
    >>> import torch
    >>> with autocast("32-true"):
    ...     torch.ones(2, 2).mm(torch.ones(2, 2)).dtype
    torch.float32
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Literal

# torch is imported inside the functions: the CLI tunes the allocator before any command without paying for it.
if TYPE_CHECKING:
    import torch
    import torch.nn as nn

# What a recipe or a command may ask for; "auto" is bf16 where the CPU runs it natively, else fp32.
PrecisionChoice = Literal["auto", "32", "32-true", "bf16-mixed"]
# What "auto" and the aliases resolve to: Lightning's precision strings.
Precision = Literal["32-true", "bf16-mixed"]
PRECISION_CHOICES: tuple[str, ...] = ("auto", "32", "32-true", "bf16-mixed")
# Images per forward pass where a network only reads (features, validation, the guard's outputs): the activations
# of a 260 px EfficientNet grow with the batch (peak memory 1.5 GB at 32 images, 1.1 GB at 16, with the 0.76 GB the
# process holds before), and 16 images run as fast per image on a CPU; each image's outputs do not depend on the
# batch it is in (tests/training/test_features.py).
INFERENCE_BATCH_SIZE = 16
TUNING_ENV = "BRAINTUMOR_CPU_TUNING"

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@cache
def tuning_enabled() -> bool:
    """False when ``BRAINTUMOR_CPU_TUNING=0``: no allocator tuning, channels_last or BatchNorm folding (read once)."""
    return os.environ.get(TUNING_ENV, "1") != "0"


@cache
def tune_cpu_runtime() -> bool:
    """Keep freed memory in the process instead of returning it to the kernel (glibc); True when applied.

    Idempotent and cheap; a no-op on other C libraries or with ``BRAINTUMOR_CPU_TUNING=0``. The cost is that
    the process keeps its peak memory until it exits, which is what a training or serving process does anyway.
    """
    if not tuning_enabled() or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # Never trim the heap's top, and serve big blocks from the heap rather than fresh mmaps.
        applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    return applied


@cache
def bf16_supported() -> bool:
    """Whether this machine runs bf16 natively: a CUDA GPU with bf16, or a CPU with AVX-512 bf16 or AMX.

    Without native support autocast emulates bf16 and is slower than fp32, so "auto" must not pick it.
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_has_bf16_flag()
    except (AttributeError, RuntimeError):
        return False


def _cpu_has_bf16_flag() -> bool:
    # oneDNN reports bf16 support on any AVX-512 core (emulated); the native units have these flags.
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return platform.machine().lower() in {"arm64", "aarch64"}  # Apple and Graviton cores have bf16 units
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(requested: str) -> Precision:
    """The Lightning precision string for a recipe's or command's choice (``auto`` decided by the machine).

    Raises ValueError for anything else, naming the choices.
    """
    if requested in ("32", "32-true"):
        return "32-true"
    if requested == "bf16-mixed":
        return "bf16-mixed"
    if requested == "auto":
        return "bf16-mixed" if bf16_supported() else "32-true"
    raise ValueError(f"unknown precision {requested!r}: choose one of {', '.join(PRECISION_CHOICES)}")


def precision_note(requested: str) -> str | None:
    """One line for the person running a job when a bf16 request falls back to fp32, else None."""
    if requested in ("auto", "bf16-mixed") and not bf16_supported():
        return "this CPU has no native bf16 units (AVX-512 bf16 or AMX): running in fp32"
    return None


@contextlib.contextmanager
def autocast(precision: str, device_type: str = "cpu") -> Iterator[None]:
    """bf16 autocast for ``bf16-mixed`` (outputs of matrix work become bf16; cast back where exactness matters)."""
    import torch

    if resolve_precision(precision) == "bf16-mixed":
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            yield
    else:
        yield


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread (torch's setting again afterwards); unchanged when tuning is off.

    For work that threads slow down on a small machine: preparing a network for inference (NHWC copies of
    the weights, BatchNorm folding, loading weights: fresh memory written once) took 0.03 s on one thread
    and 0.4-0.6 s on two on 2 cores (EfficientNet-Lite2), the threads' page faults queueing on each other.
    Element-wise work and copies give the same numbers on any number of threads. Not for a network's forward
    pass: on a single image oneDNN splits some convolutions' sums between the threads, so one thread and two
    differ by float rounding. The setting is the process's: callers that run models from several threads at
    once serialise them (the service holds a lock around PyTorch runs).
    """
    import torch

    if not tuning_enabled():
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def has_convolutions(module: nn.Module) -> bool:
    """Whether ``module`` has 2D convolutions, the layers that channels_last speeds up."""
    import torch.nn as nn

    return any(isinstance(layer, nn.Conv2d) for layer in module.modules())


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` with 4D parameters in NHWC order, when it has convolutions (in place, returned)."""
    import torch

    if tuning_enabled() and has_convolutions(module):
        module.to(memory_format=torch.channels_last)
    return module


def channels_last_batch(batch: torch.Tensor) -> torch.Tensor:
    """A ``[N, C, H, W]`` batch in NHWC order (other shapes unchanged), so the first convolution reads it directly."""
    import torch

    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 and tuning_enabled() else batch
