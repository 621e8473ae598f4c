"""Knowledge distillation: the loss, the teacher's choice and checks, and a student that learns the teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from braintumor.bundle import read_bundle_config
from braintumor.config import DistillConfig, Recipe
from braintumor.data.preprocessing import Preprocessing
from braintumor.models import create_model
from braintumor.training.distill import (
    DistillationError,
    Teacher,
    TeacherOnStudentInputs,
    distillation_loss,
    load_teacher,
)
from braintumor.training.features import FeatureViewDataset
from braintumor.training.module import ClassifierModule
from braintumor.workflows.train import train_recipe
from tests.conftest import TINY_VIT, tiny_recipe


def test_the_soft_term_is_zero_when_the_student_matches_and_pulls_towards_the_teacher() -> None:
    teacher = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    config = DistillConfig(teacher="t", weight=1.0, temperature=2.0)
    assert distillation_loss(teacher, teacher, torch.tensor(7.0), config).item() == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(2, 4, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor(0.0), config).backward()
    # Gradient descent raises the teacher's class logits: their gradients are negative.
    assert student.grad[0, 0] < 0 and student.grad[1, 2] < 0


def test_the_weight_mixes_label_loss_and_the_hard_term() -> None:
    student = torch.tensor([[0.0, 2.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0, 5.0]])
    hard = DistillConfig(teacher="t", loss="hard", weight=0.25)
    expected = 0.75 * 1.5 + 0.25 * torch.nn.functional.cross_entropy(student, torch.tensor([3])).item()
    assert distillation_loss(student, teacher, torch.tensor(1.5), hard).item() == pytest.approx(expected)


def test_the_teacher_sees_the_students_view_in_its_own_normalisation() -> None:
    seen: list[torch.Tensor] = []

    class Record(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.mean(dim=(2, 3)).repeat(1, 2)[:, :4]

    student = Preprocessing(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    teacher = Preprocessing(image_size=4, mean=(0.1, 0.2, 0.3), std=(2.0, 2.0, 2.0))
    pixels = torch.rand(1, 3, 8, 8)
    TeacherOnStudentInputs(Record(), student, teacher)((pixels - 0.5) / 0.25)
    expected = torch.nn.functional.interpolate(pixels, size=(4, 4), mode="bilinear", antialias=True)
    expected = (expected - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 2.0
    assert torch.allclose(seen[0], expected, atol=1e-5)


def test_cached_views_serve_the_teachers_outputs_with_the_features() -> None:
    features, teacher = torch.arange(12.0).reshape(3, 2, 2), torch.arange(24.0).reshape(3, 2, 4)
    dataset = FeatureViewDataset(features, torch.tensor([0, 1]), teacher)
    item = dataset[(4, 1)]
    assert torch.equal(item[0], features[1, 1]) and torch.equal(item[2], teacher[1, 1])
    with pytest.raises(ValueError, match="do not match"):
        FeatureViewDataset(features, torch.tensor([0, 1]), teacher[:2])


def _teacher_copy(bundle_dir: Path, folder: Path, *, roll: bool, val_accuracy: float | None = None) -> Path:
    """A copy of ``bundle_dir``; with ``roll`` its last layer answers class ``(c + 1) % 4`` where the original
    answers ``c``."""
    shutil.copytree(bundle_dir, folder)
    (folder / "model.onnx").unlink(missing_ok=True)
    if roll:
        state = load_file(str(folder / "model.safetensors"))
        last = sorted(key for key in state if key.startswith("head.") and key.endswith(".weight"))[-1]
        for key in (last, last.replace(".weight", ".bias")):
            state[key] = torch.roll(state[key], shifts=1, dims=0).contiguous()
        save_file(state, str(folder / "model.safetensors"))
    if val_accuracy is not None:
        config = json.loads((folder / "config.json").read_text())
        config["training"]["val_metrics"]["accuracy"] = val_accuracy
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_missing_teacher_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DistillationError, match="train the teacher first"):
        load_teacher(DistillConfig(teacher=str(tmp_path / "none")), Preprocessing(image_size=32), [])


def test_a_teacher_that_trained_on_the_students_validation_images_is_refused(trained_run, tmp_path: Path) -> None:
    teacher = read_bundle_config(trained_run.bundle_dir)
    every = set(map(str, Path(teacher.training.data_root).rglob("*.jpg")))
    trained_on = sorted(every - set(teacher.training.val_paths))
    prep = teacher.preprocessing
    with pytest.raises(DistillationError, match="trained on 1 of the student's validation images"):
        load_teacher(DistillConfig(teacher=str(trained_run.bundle_dir)), prep, trained_on[:1])
    other = prep.model_copy(update={"crop": "head"})
    with pytest.raises(DistillationError, match="crop"):
        load_teacher(DistillConfig(teacher=str(trained_run.bundle_dir)), other, teacher.training.val_paths)


@pytest.mark.slow
def test_a_student_learns_the_teachers_answers_and_records_its_teacher(
    trained_run, synthetic_root: Path, tmp_path: Path
) -> None:
    weaker = _teacher_copy(trained_run.bundle_dir, tmp_path / "weaker", roll=False, val_accuracy=0.1)
    rolled = _teacher_copy(trained_run.bundle_dir, tmp_path / "rolled", roll=True)
    # The better validation accuracy picks the rolled teacher; with only the teacher's term (weight 1) the student
    # never sees a label, so it answers as the rolled teacher.
    distill = {"teacher": [str(weaker), str(rolled)], "weight": 1.0, "temperature": 1.0}
    recipe = tiny_recipe(train={"max_epochs": 15, "distill": distill})
    run = train_recipe(recipe, synthetic_root, tmp_path / "student", show_progress=False)
    config = read_bundle_config(run.bundle_dir)
    record = config.training.distillation
    assert record["bundle"] == str(rolled.resolve())
    assert record["val_metrics"]["accuracy"] == trained_run.val_metrics["accuracy"]
    assert [c["recipe"] for c in record["candidates"]] == ["tiny-cnn", "tiny-cnn"] and record["loss"] == "soft"
    # The validation loss (true labels) keeps the first epoch's weights; the history shows what training did:
    # the teacher's term falls while the answers move away from the labels, towards the rolled teacher's.
    first, last = run.history[0], run.history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["train_acc"] <= 0.3 and last["val_acc"] <= 0.3


def _token_recipe(teacher: str, **train: object) -> Recipe:
    """The tests' tiny ViT with a distillation token, taught by ``teacher`` through it."""
    model = {
        **TINY_VIT["model"],
        "backbone": "deit_tiny_distilled_patch16_224",
        "dropout": 0.0,
        "head_standardize": False,
    }
    distill = {"teacher": teacher, "token": True, "loss": "hard", "weight": 0.5}
    # The teacher's validation split (the tiny CNN's val_fraction), which the student must share.
    data = {**TINY_VIT["data"], "val_fraction": 0.25}
    return Recipe.model_validate(
        {**TINY_VIT, "name": "tiny-deit", "data": data, "model": model, "train": {"distill": distill, **train}}
    )


def test_the_distillation_token_needs_a_distilled_vit_and_a_linear_head() -> None:
    assert _token_recipe("t").train.distill.token
    with pytest.raises(ValueError, match="deit_tiny_distilled_patch16_224"):
        Recipe.model_validate({**TINY_VIT, "train": {"distill": {"teacher": "t", "token": True}}})
    raw = _token_recipe("t").model_dump()
    with pytest.raises(ValueError, match=r"model\.head: linear"):
        Recipe.model_validate({**raw, "model": {**raw["model"], "head": "seed"}})


def test_the_class_token_learns_the_labels_and_the_distillation_token_the_teacher() -> None:
    recipe = _token_recipe("t")
    model = create_model(recipe).train()
    teacher_network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4)).eval()
    teacher = Teacher(teacher_network, recipe.train.distill, "32-true", {})  # type: ignore[arg-type]
    module = ClassifierModule(model, recipe.train, 4, teacher=teacher)
    inputs, targets = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        tokens = model.backbone.forward_features(inputs)
        class_logits, distillation_logits = model.head(tokens[:, 0]), model.head(tokens[:, 1])
        expected = 0.5 * F.cross_entropy(class_logits, targets) + 0.5 * F.cross_entropy(
            distillation_logits, teacher_network(inputs).argmax(dim=1)
        )
        loss = module.training_step((inputs, targets), 0)
    assert torch.allclose(loss, expected)
    # Prediction averages the two tokens: the one linear head of their average is the average of their logits.
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(inputs), (class_logits + distillation_logits) / 2, atol=1e-5)


@pytest.mark.slow
def test_a_vit_trains_with_a_distillation_token_and_records_it(
    trained_run, synthetic_root: Path, tmp_path: Path
) -> None:
    recipe = _token_recipe(str(trained_run.bundle_dir), max_epochs=2)
    run = train_recipe(recipe, synthetic_root, tmp_path / "deit", show_progress=False)
    record = read_bundle_config(run.bundle_dir).training.distillation
    assert record["token"] is True and record["loss"] == "hard"
    assert len(run.history) == 2 and all(row["train_loss"] > 0 for row in run.history)
