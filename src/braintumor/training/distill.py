"""Knowledge distillation: a teacher bundle's outputs on the student's training views as extra targets.

The student learns ``(1 - w) * label loss + w * distillation term``, where the term is the KL divergence to the
teacher's softened probabilities (``soft``, Hinton et al. 2015, scaled by ``T^2``) or the cross-entropy to the
teacher's predicted class (``hard``, as DeiT). With ``token`` (DeiT's distillation token, for a distilled ViT) the
label loss is the class token's and the distillation term the distillation token's (:func:`token_logits`).
The teacher sees exactly the student's augmented view: the student's network input is mapped back to pixels and
re-normalised (and resized) for the teacher. On cached views (a frozen backbone's feature cache) the teacher's
outputs are computed once per view, not once per epoch.

Choices are made on validation only: among several candidate teachers the one with the best validation accuracy
is used, and a teacher that trained on any of the student's validation images is refused (the student's early
stopping would then follow a teacher that saw them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from braintumor.bundle import read_bundle_config
from braintumor.bundle.schema import BundleConfig
from braintumor.bundle.store import load_bundle
from braintumor.config import DistillConfig
from braintumor.data.preprocessing import Preprocessing
from braintumor.errors import BrainTumorError


class DistillationError(BrainTumorError):
    """The teacher cannot teach this student: missing, incompatible, or it saw the student's validation images."""


class TeacherOnStudentInputs(nn.Module):
    """The teacher network fed with the student's inputs: back to pixels, resized, normalised the teacher's way.

    The teacher always runs in eval mode (fixed BatchNorm statistics, no dropout) and without gradients.

    Example:
        >>> teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
        >>> student = Preprocessing(image_size=8)
        >>> wrapped = TeacherOnStudentInputs(teacher, student, Preprocessing(image_size=4, mean=(0.5,) * 3))
        >>> wrapped(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(self, teacher: nn.Module, student: Preprocessing, teacher_prep: Preprocessing) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.size = teacher_prep.image_size
        self.resize = student.image_size != teacher_prep.image_size
        self.mode = "bicubic" if teacher_prep.interpolation == "bicubic" else "bilinear"
        for name, values in (
            ("student_mean", student.mean),
            ("student_std", student.std),
            ("teacher_mean", teacher_prep.mean),
            ("teacher_std", teacher_prep.std),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> TeacherOnStudentInputs:
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        pixels = inputs.float() * self.student_std + self.student_mean
        if self.resize:
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode=self.mode, antialias=True)
        return self.teacher((pixels - self.teacher_mean) / self.teacher_std).float()


@dataclass
class Teacher:
    """The chosen teacher, wrapped for the student's inputs, and what the student's bundle records about it."""

    network: TeacherOnStudentInputs
    config: DistillConfig
    precision: str
    record: dict[str, Any]


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    label_loss: torch.Tensor,
    config: DistillConfig,
) -> torch.Tensor:
    """``(1 - weight) * label_loss + weight * term``, the term soft (KL at the temperature) or hard.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
        >>> config = DistillConfig(teacher="t", weight=1.0)
        >>> round(distillation_loss(logits, logits, torch.tensor(5.0), config).item(), 6)  # matches the teacher
        0.0
    """
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if config.loss == "soft":
        temperature = config.temperature
        term = F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (temperature**2)
    else:
        term = F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))
    return (1.0 - config.weight) * label_loss + config.weight * term


def token_logits(network: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The class token's and the distillation token's logits of a distilled ViT (timm's ``deit_*_distilled_*``),
    each through the network's one linear head.

    timm's distilled ViT pools its two tokens by their average; a linear head of that average is the average of
    the two tokens' logits, so prediction is DeiT's average of the two heads with the heads tied.
    """
    backbone = network.backbone
    if getattr(backbone, "dist_token", None) is None:
        raise DistillationError(
            f"{type(backbone).__name__} has no distillation token: train.distill.token needs a deit_*_distilled_* "
            "backbone"
        )
    tokens = backbone.forward_features(inputs)
    return network.forward_head(tokens[:, 0]), network.forward_head(tokens[:, 1])


def _candidate_paths(config: DistillConfig) -> list[Path]:
    paths = [config.teacher] if isinstance(config.teacher, str) else list(config.teacher)
    if not paths:
        raise DistillationError("train.distill.teacher names no bundle: give a bundle folder (or several)")
    return [Path(path).expanduser() for path in paths]


def _bundle_folder(path: Path) -> Path:
    """A bundle folder, or a run folder holding one in ``bundle/`` (what ``braintumor train`` writes)."""
    return path / "bundle" if (path / "bundle" / "config.json").is_file() else path


def _val_accuracy(config: BundleConfig) -> float:
    accuracy = config.training.val_metrics.get("accuracy")
    return float(accuracy) if accuracy is not None else float("-inf")


def _read_candidates(config: DistillConfig) -> list[tuple[Path, BundleConfig]]:
    candidates = []
    for path in _candidate_paths(config):
        folder = _bundle_folder(path)
        if not (folder / "config.json").is_file():
            raise DistillationError(
                f"teacher bundle {path} not found: train the teacher first (e.g. `braintumor train lite0-lpft-cached`"
                f" writes runs/lite0-lpft-cached/bundle) or set train.distill.teacher to a bundle folder"
            )
        candidates.append((folder, read_bundle_config(folder)))
    return candidates


def _check_teacher(folder: Path, teacher: BundleConfig, student: Preprocessing, val_paths: list[str]) -> None:
    """Refuse a teacher that saw the student's validation images or cannot read the student's views."""
    if teacher.extras.adaptation is not None:
        raise DistillationError(
            f"teacher {folder} was adapted to unlabelled target images: teach from the bundle it was adapted from"
        )
    teacher_val = {str(Path(p).resolve()) for p in teacher.training.val_paths}
    if not teacher_val:
        raise DistillationError(f"teacher {folder} records no validation split, so it may have trained on any image")
    seen = [p for p in val_paths if str(Path(p).resolve()) not in teacher_val]
    if seen:
        raise DistillationError(
            f"teacher {folder} trained on {len(seen)} of the student's validation images (e.g. {seen[0]}): use a "
            "teacher with the same data.val_fraction, data.split_seed and duplicate handling as the student"
        )
    prep = teacher.preprocessing
    for field in ("crop", "intensity", "resize"):
        if getattr(prep, field) != getattr(student, field):
            raise DistillationError(
                f"teacher {folder} preprocesses with {field} {getattr(prep, field)!r}, the student with "
                f"{getattr(student, field)!r}: the teacher must see the student's views (set the student's data "
                f"options to match)"
            )


def _candidate_record(path: Path, config: BundleConfig) -> dict[str, Any]:
    return {
        "bundle": str(path.resolve()),
        "recipe": config.recipe.name,
        "val_accuracy": config.training.val_metrics.get("accuracy"),
    }


def load_teacher(config: DistillConfig, student: Preprocessing, val_paths: list[str]) -> Teacher:
    """The candidate with the best validation accuracy, checked and wrapped for the student's inputs."""
    candidates = _read_candidates(config)
    folder, chosen = max(candidates, key=lambda candidate: _val_accuracy(candidate[1]))
    _check_teacher(folder, chosen, student, val_paths)
    # Building the network draws random initial weights: keep that off the student's random stream.
    with torch.random.fork_rng():
        network = load_bundle(folder).model
    record = {
        "bundle": str(folder.resolve()),
        "name": chosen.name,
        "recipe": chosen.recipe.name,
        "version": chosen.versions.get("braintumor"),
        "created_utc": chosen.created_utc,
        "val_metrics": {k: chosen.training.val_metrics.get(k) for k in ("accuracy", "loss", "macro_f1")},
        "candidates": [_candidate_record(path, cfg) for path, cfg in candidates],
        "loss": config.loss,
        "weight": config.weight,
        "temperature": config.temperature if config.loss == "soft" else None,
        "token": config.token,
    }
    wrapped = TeacherOnStudentInputs(network, student, chosen.preprocessing)
    return Teacher(wrapped, config, chosen.recipe.precision(), record)
