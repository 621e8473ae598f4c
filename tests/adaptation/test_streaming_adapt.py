"""Site adaptation from streamed images: the same BatchNorm statistics, features, guard verdicts, fitted head and
record as from the images decoded into memory, without ever holding the site's pixels whole."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import braintumor.data.dataset as dataset_module
import braintumor.workflows.adapt as run
from braintumor.adaptation.network import adabn, backbone_features, head_state
from braintumor.bundle import load_bundle, save_bundle
from braintumor.config import Recipe
from braintumor.data.dataset import DECODE_WORKERS_ENV, ImageSet, load_images, scan_images
from braintumor.data.layout import Sample, discover_split
from braintumor.data.preprocessing import Preprocessing, eval_transform
from braintumor.data.synthetic import make_synthetic_dataset
from braintumor.guard import fit_guard, model_outputs
from braintumor.guard.guard import head_outputs, images_evidence
from braintumor.models import create_model, resolve_preprocessing
from braintumor.models.ensemble import EnsembleNet
from braintumor.workflows.export import OnnxStatus

PREP = Preprocessing(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic Training and Testing splits; Testing (the site) also holds a broken file and a noise image."""
    root = make_synthetic_dataset(tmp_path_factory.mktemp("streamed-site"), per_class=4, test_per_class=10, size=40)
    (root / "Testing" / "broken.jpg").write_bytes(b"not an image at all")
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "Testing" / "noise.png")
    return root


def _site_files(root: Path) -> list[Sample]:
    return [Sample(path, 0) for path in sorted(p for p in (root / "Testing").rglob("*") if p.is_file())]


def _batchnorm_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=2, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
    )


@pytest.mark.parametrize("workers", ["0", "1"])
def test_adabn_and_features_of_an_image_set_match_those_of_the_tensor(
    root: Path, workers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DECODE_WORKERS_ENV, workers)
    samples = _site_files(root)
    loaded, scanned = load_images(samples, PREP, show_progress=False), scan_images(samples, PREP, show_progress=False)
    assert scanned.streaming and loaded.images is not None
    # A reordered subset, as the guard's accepted images are: the permutation applies to the subset's order.
    picked = np.array([5, 2, *range(7, len(scanned))])
    streamed, in_memory = scanned.subset(picked), loaded.subset(picked).images
    assert in_memory is not None
    transform = eval_transform(PREP)
    from_tensor, from_set = _batchnorm_backbone(), _batchnorm_backbone()
    assert adabn(from_tensor, in_memory, transform, batch_size=7) == 1
    assert adabn(from_set, streamed, transform, batch_size=7) == 1
    for name, value in from_tensor.state_dict().items():
        assert torch.equal(from_set.state_dict()[name], value), name
    # A different seed is a different shuffle, so different batches: the seed reaches the streamed path too.
    reseeded = _batchnorm_backbone()
    adabn(reseeded, streamed, transform, batch_size=7, seed=1)
    assert not torch.equal(reseeded[1].running_var, from_set[1].running_var)
    features = backbone_features(from_tensor, in_memory, transform, batch_size=7)
    assert features.shape == (len(picked), 16)
    assert torch.equal(backbone_features(from_set, streamed, transform, batch_size=7), features)
    assert backbone_features(from_set, scanned.subset([]), transform).shape == (0, 0)


def test_an_ensembles_guard_inputs_of_a_streamed_set_match_the_in_memory_ones(root: Path) -> None:
    recipe = Recipe.model_validate(
        {"name": "tiny", "data": {"image_size": 32}, "model": {"architecture": "custom_cnn", "conv_channels": [4]}}
    )
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(create_model(recipe).eval())
    bundle: Any = SimpleNamespace(model=EnsembleNet(members))
    samples = _site_files(root)
    loaded, scanned = load_images(samples, PREP, show_progress=False), scan_images(samples, PREP, show_progress=False)
    assert loaded.images is not None
    transform = eval_transform(PREP)
    features = [backbone_features(member.backbone, scanned, transform) for member in members]
    streamed = run.guard_inputs(bundle, features, scanned)
    # What the guard read before: each member's head outputs of the tensor, side by side.
    parts = [head_outputs(member, part, loaded.images) for member, part in zip(members, features, strict=True)]
    assert torch.equal(streamed.features, torch.cat([part.features for part in parts], dim=1))
    assert torch.equal(streamed.logits, bundle.model.combine([part.logits for part in parts]))
    assert torch.equal(streamed.evidence, parts[0].evidence)
    assert torch.equal(run.guard_inputs(bundle, features, loaded.images).evidence, streamed.evidence)


def test_the_guard_evidence_is_read_in_the_features_pass(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoding in this process, so every decode is counted: the features and the evidence take one pass.
    monkeypatch.setenv(DECODE_WORKERS_ENV, "0")
    recipe = Recipe.model_validate(
        {"name": "tiny", "data": {"image_size": 32}, "model": {"architecture": "custom_cnn", "conv_channels": [4]}}
    )
    members = [create_model(recipe).eval() for _ in range(2)]
    samples = _site_files(root)
    loaded, scanned = load_images(samples, PREP, show_progress=False), scan_images(samples, PREP, show_progress=False)
    decoded: list[Path] = []
    decode = dataset_module.decode_path
    monkeypatch.setattr(dataset_module, "decode_path", lambda path, prep: decoded.append(path) or decode(path, prep))
    transform = eval_transform(PREP)
    features, evidence = run._features_and_evidence(members, scanned, transform, with_evidence=True)
    assert len(decoded) == 2 * len(scanned)  # one pass per member, none for the evidence
    assert evidence is not None and torch.equal(evidence, images_evidence(loaded.images))
    for member, part in zip(members, features, strict=True):
        assert torch.equal(part, backbone_features(member.backbone, loaded.images, transform))
    assert run._features_and_evidence(members[:1], scanned, transform, with_evidence=False)[1] is None


def _bundle(folder: Path, root: Path) -> Path:
    """A tiny MobileNetV3 probe (BatchNorm in the backbone, for AdaBN) with a guard fitted on the site's class
    folders (an untrained network's features of 16 Training images would flag every site image)."""
    model_spec = {"architecture": "transfer", "backbone": "mobilenetv3_small_050", "pretrained": False}
    recipe = Recipe.model_validate(
        {"name": "tiny-mobilenet", "data": {"image_size": 32}, "model": {**model_spec, "head": "linear"}}
    )
    torch.manual_seed(0)
    model = create_model(recipe)
    preprocessing = resolve_preprocessing(recipe, model)
    images = load_images(discover_split(root, "Testing"), preprocessing, show_progress=False)
    outputs = model_outputs(model, eval_transform(preprocessing), images.images)
    guard = fit_guard(outputs, images.labels, outputs)
    counts = {"glioma": 4, "meningioma": 4, "no_tumor": 4, "pituitary": 4}
    return save_bundle(folder, model, recipe, preprocessing, training={"train_class_counts": counts}, guard=guard)


def _tensor_of(images: torch.Tensor | ImageSet) -> torch.Tensor:
    """The decoded tensor of an in-memory image set, as the functions were called before they streamed."""
    assert isinstance(images, ImageSet) and images.images is not None
    return images.images


def _adapt(bundle: Path, root: Path, out: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    result = run.adapt_bundle(
        bundle, root / "Testing", out, method="adabn+standardize+em", force=True, show_progress=False
    )
    return result, load_bundle(result.out).model.state_dict()


def test_a_streamed_adaptation_is_the_in_memory_one(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle(tmp_path / "bundle", root)
    monkeypatch.setattr(run, "ensure_onnx", lambda out: OnnxStatus(False, False, "not exported in this test"))
    seen: list[bool] = []

    def spy(function: Any) -> Any:
        def wrapped(backbone: torch.nn.Module, images: ImageSet, *args: Any, **kwargs: Any) -> Any:
            seen.append(images.streaming)
            return function(backbone, images, *args, **kwargs)

        return wrapped

    with monkeypatch.context() as patch:
        patch.setattr(run, "adabn", spy(adabn))
        patch.setattr(run, "backbone_features", spy(backbone_features))
        streamed, streamed_state = _adapt(bundle, root, tmp_path / "streamed")
    assert seen == [True, True, True]  # features, AdaBN, features after AdaBN: all read from disk
    # The path before streaming: every image decoded into one tensor, which each step read.
    with monkeypatch.context() as patch:
        patch.setattr(run, "scan_images", load_images)
        patch.setattr(run, "adabn", lambda b, images, *a, **k: adabn(b, _tensor_of(images), *a, **k))
        patch.setattr(
            run, "backbone_features", lambda b, images, *a, **k: backbone_features(b, _tensor_of(images), *a, **k)
        )
        patch.setattr(run, "head_outputs", lambda m, f, images, *a: head_outputs(m, f, _tensor_of(images), *a))
        in_memory, in_memory_state = _adapt(bundle, root, tmp_path / "in-memory")
    assert streamed.applied == in_memory.applied == ("adabn", "standardize", "em")
    ignored = {"created_utc"}
    assert streamed.record.model_dump(exclude=ignored) == in_memory.record.model_dump(exclude=ignored)
    assert [Path(s["path"]).name for s in streamed.record.skipped_files] == ["broken.jpg"]
    assert streamed.record.n_images + len(streamed.record.rejected_by_guard) == 41
    assert str(root / "Testing" / "noise.png") in streamed.record.rejected_by_guard  # AdaBN ran on a subset
    assert streamed_state.keys() == in_memory_state.keys()
    for name, value in in_memory_state.items():
        assert torch.equal(streamed_state[name], value), name
    assert not torch.equal(
        head_state(load_bundle(streamed.out).model).weight, head_state(load_bundle(bundle).model).weight
    )
