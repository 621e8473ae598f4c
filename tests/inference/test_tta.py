"""Test-time augmentation: the views, a model invariant to them, and a real tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from typer.testing import CliRunner

from braintumor.bundle import Bundle, BundleConfig, load_bundle
from braintumor.classes import CLASS_NAMES
from braintumor.cli import app
from braintumor.data.dataset import load_images
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, eval_transform
from braintumor.evaluation.evaluate import evaluate_bundle
from braintumor.inference.predictor import Predictor
from braintumor.inference.tta import tta_views
from tests.conftest import tiny_recipe


def _centred_images(count: int, size: int = 32, margin: int = 6) -> torch.Tensor:
    """Random content inside a black border wider than the TTA shift (5% of 32 px = 2 px)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(count, 3, size, size, dtype=torch.uint8)
    images[:, :, margin:-margin, margin:-margin] = torch.randint(
        0, 256, (count, 3, size - 2 * margin, size - 2 * margin), generator=generator, dtype=torch.uint8
    )
    return images


def test_views_are_a_mirror_and_whole_pixel_shifts() -> None:
    images = _centred_images(2)
    views = tta_views(images)
    assert len(views) == 6
    assert all(view.shape == images.shape and view.dtype == torch.uint8 for view in views)
    assert torch.equal(views[0], images)
    assert torch.equal(views[1], images.flip(-1))
    shift = 2  # round(0.05 * 32)
    assert torch.equal(views[2][..., shift:], images[..., :-shift])  # right
    assert torch.equal(views[3][..., :-shift], images[..., shift:])  # left
    assert torch.equal(views[4][..., shift:, :], images[..., :-shift, :])  # down
    assert torch.equal(views[5][..., :-shift, :], images[..., shift:, :])  # up
    # Only black border pixels move out of the frame, so no content is lost.
    assert all(int(view.sum()) == int(images.sum()) for view in views)


def test_tta_changes_nothing_for_a_model_invariant_to_the_views(tmp_path: Path) -> None:
    # Mean pooling then a linear layer: flips and shifts of black borders leave the pixel means unchanged.
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, len(CLASS_NAMES))).eval()
    prep = Preprocessing(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    recipe = tiny_recipe()
    config = BundleConfig(name=recipe.name, class_names=list(CLASS_NAMES), recipe=recipe, preprocessing=prep)
    bundle = Bundle(tmp_path, model, config)  # type: ignore[arg-type]
    images = _centred_images(5)
    plain = Predictor(bundle).predict_uint8(images)
    augmented = Predictor(bundle, tta=True).predict_uint8(images)
    np.testing.assert_allclose(augmented, plain, atol=1e-6)
    assert not np.allclose(plain, plain[0])  # the model does tell the images apart


def test_tta_on_a_trained_model_averages_the_logits_of_the_views(trained_run, synthetic_root: Path) -> None:
    bundle = load_bundle(trained_run.bundle_dir)
    images = load_images(discover_split(synthetic_root, "Testing"), bundle.preprocessing, show_progress=False).images
    # fp32, to compare with the plain fp32 forward passes below (the tiny recipe runs in bf16 by default).
    predictor = Predictor(bundle, tta=True, batch_size=7, precision="32")
    probabilities = predictor.predict_uint8(images)
    assert probabilities.shape == (len(images), len(CLASS_NAMES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()

    transform = eval_transform(bundle.preprocessing)
    with torch.inference_mode():
        expected = torch.stack([bundle.model(transform(view)) for view in tta_views(images)]).mean(dim=0)
    np.testing.assert_allclose(predictor.predict_logits_uint8(images), expected.numpy(), atol=1e-4)
    assert not np.allclose(probabilities, Predictor(bundle, precision="32").predict_uint8(images), atol=1e-4)


def test_evaluate_and_predict_accept_tta(trained_run, synthetic_root: Path, tmp_path: Path) -> None:
    result = evaluate_bundle(
        trained_run.bundle_dir,
        synthetic_root,
        "Testing",
        tmp_path / "eval",
        show_progress=False,
        tta=True,
        n_bootstrap=50,
    )
    assert result.metrics["tta"] is True
    stored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert stored["tta"] is True and stored["accuracy"] == result.metrics["accuracy"]

    image = next((synthetic_root / "Testing" / "glioma_tumor").iterdir())
    out = tmp_path / "p.json"
    run = CliRunner().invoke(app, ["predict", str(trained_run.bundle_dir), str(image), "--tta", "--json", str(out)])
    assert run.exit_code == 0, run.output
    (prediction,) = json.loads(out.read_text())["predictions"]
    expected = Predictor(load_bundle(trained_run.bundle_dir), tta=True).predict_paths([image])[0][0]
    assert prediction["probabilities"] == expected.probabilities
