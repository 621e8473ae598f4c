"""The predictor a batch scores with: the one ``braintumor predict`` uses, on a GPU where there is one.

On a CPU it is the same choice as :meth:`braintumor.api.Bundle.predictor`: ONNX Runtime when the bundle has
``model.onnx`` (``backend="auto"``), PyTorch otherwise or with test-time augmentation. On a CUDA GPU the
bundle's PyTorch network runs there; everything around it (the resize, the temperature, the input guard, the
TTA views) stays as it is on the CPU, so the rows mean the same. ``backend="onnx"`` keeps ONNX Runtime on the CPU.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from braintumor.errors import BrainTumorError
from braintumor.inference.predictor import Predictor

DEVICES = ("auto", "cpu", "cuda")


class _OnDevice(nn.Module):
    """A network on another device that takes and returns CPU tensors, so the predictor around it is unchanged."""

    def __init__(self, network: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.network = network.to(device)
        self.device = device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.to(self.device)).float().cpu()

    def penultimate_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part.float().cpu() for part in self.network.penultimate_and_logits(images.to(self.device)))


class DevicePredictor(Predictor):
    """:class:`~braintumor.inference.predictor.Predictor` whose network runs on ``device`` (a CUDA GPU)."""

    def __init__(self, bundle: Any, *, device: str, tta: bool = False) -> None:
        super().__init__(bundle, tta=tta)
        self.device = torch.device(device)

    @functools.cached_property
    def model(self) -> nn.Module:  # type: ignore[override]
        return _OnDevice(Predictor.model.func(self), self.device)  # type: ignore[attr-defined]


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` where PyTorch sees a GPU, else ``cpu``."""
    if device not in DEVICES:
        raise BrainTumorError(f"unknown device {device!r}: use {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise BrainTumorError("device cuda asked for, but PyTorch sees no CUDA GPU here")
    return device


def build_predictor(
    bundle_dir: Path | str, *, tta: bool, backend: str = "auto", device: str = "auto", threads: int | None = None
) -> Predictor:
    """Load the bundle once and return the predictor a batch scores with (see the module docstring).

    ``threads``: the CPU threads this predictor may use (an actor of a Ray pool gets its share of a node).
    """
    from braintumor.bundle import load_bundle
    from braintumor.inference.onnx_export import make_predictor

    if threads is not None:
        torch.set_num_threads(threads)
    bundle = load_bundle(Path(bundle_dir))
    resolved = resolve_device(device)
    if resolved != "cpu" and backend != "onnx":
        return DevicePredictor(bundle, device=resolved, tta=tta)
    if tta:
        return Predictor(bundle, tta=True)
    return make_predictor(bundle, backend, threads=threads)
