"""The input guard in the service: flagged uploads carry a warning, in-distribution ones do not, bundles
without a guard say so with null fields.

The guard is fitted on synthetic brain-like slices (grey head on black) of a tiny random CNN and tested on
held-out synthetic slices against colour noise and a blank white image. :func:`save_guarded_bundle` is shared
with the ONNX and browser tests.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from braintumor.bundle import load_bundle, save_bundle
from braintumor.classes import CLASS_NAMES
from braintumor.config import Recipe
from braintumor.data.preprocessing import Preprocessing, eval_transform, resize_to_uint8_tensor
from braintumor.data.synthetic import synthetic_image
from braintumor.guard import fit_guard, model_outputs
from braintumor.inference import Predictor
from braintumor.models import create_model, resolve_preprocessing
from braintumor.serving.schemas import OOD_WARNING

# Fit and validation slices come from other seeds than the held-out slices the tests upload.
FIT_SEED, VAL_SEED, HELD_OUT_SEED = 11, 12, 13


def synthetic_slices(count: int, seed: int, size: int = 64) -> list[Image.Image]:
    """``count`` synthetic MRI-like slices, the four classes in turn."""
    rng = np.random.default_rng(seed)
    return [synthetic_image(CLASS_NAMES[index % 4], size, rng) for index in range(count)]


def colour_noise(size: int = 64, seed: int = 0) -> Image.Image:
    """An RGB noise image: nothing like a grey MRI slice."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def blank_white(size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (255, 255, 255))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _uint8(images: list[Image.Image], preprocessing: Preprocessing) -> torch.Tensor:
    return torch.stack([resize_to_uint8_tensor(image, preprocessing) for image in images])


def save_guarded_bundle(
    folder: Path,
    *,
    name: str = "guarded",
    size: int = 32,
    channels: tuple[int, ...] = (4, 8),
    extras: dict | None = None,
    n_fit: int = 160,
    n_val: int = 80,
) -> Path:
    """A tiny random custom CNN whose input guard is fitted on synthetic slices; returns the bundle folder."""
    torch.manual_seed(0)
    recipe = Recipe.model_validate(
        {
            "name": name,
            "data": {"image_size": size},
            "model": {"architecture": "custom_cnn", "conv_channels": list(channels), "head_hidden": 16},
            # fp32, so that the ONNX graph (fp32) and PyTorch agree to the parity tolerances in test_onnx.py.
            "train": {"precision": "32"},
        }
    )
    model = create_model(recipe, load_pretrained=False)
    preprocessing = resolve_preprocessing(recipe, model)
    normalise = eval_transform(preprocessing)
    fit = model_outputs(model, normalise, _uint8(synthetic_slices(n_fit, FIT_SEED), preprocessing))
    val = model_outputs(model, normalise, _uint8(synthetic_slices(n_val, VAL_SEED), preprocessing))
    guard = fit_guard(fit, torch.arange(n_fit) % 4, val)
    return save_bundle(folder, model, recipe, preprocessing, extras=extras, guard=guard)


def make_client(folder: Path, **settings: Any) -> Any:
    """A FastAPI test client of the service for ``folder`` (skips without the serve extra)."""
    testclient = pytest.importorskip("fastapi.testclient")
    from braintumor.serving.app import create_app
    from braintumor.serving.settings import ServeSettings

    # The PyTorch backend unless asked: these tests compare with the PyTorch predictor.
    return testclient.TestClient(create_app(folder, ServeSettings(**{"backend": "torch", **settings})))


@pytest.fixture(scope="module")
def guarded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_guarded_bundle(tmp_path_factory.mktemp("guard") / "bundle", extras={"refer_threshold": 0.5})


@pytest.fixture(scope="module")
def client(guarded_dir: Path) -> Any:
    return make_client(guarded_dir)


def _predict(client: Any, image: Image.Image) -> dict:
    response = client.post("/v1/predict", files={"file": ("upload.png", png_bytes(image), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "image", [colour_noise(), colour_noise(200, seed=1), blank_white()], ids=["noise", "big", "white"]
)
def test_unlike_uploads_are_flagged_with_a_warning(client: Any, image: Image.Image) -> None:
    body = _predict(client, image)
    assert body["out_of_distribution"] is True and body["ood_score"] > 1.0
    assert body["warning"] == OOD_WARNING and "not a diagnosis" in body["warning"]
    # No diagnosis: no class, the verdict and its reason; the probabilities are still returned (not a diagnosis).
    assert body["class_name"] is None and body["flagged"] is True and body["flag_reason"].startswith("not an MRI")
    assert set(body["probabilities"]) == set(CLASS_NAMES) and sum(body["probabilities"].values()) == pytest.approx(1)
    assert body["refer_threshold"] == 0.5 and "disclaimer" in body


def test_held_out_slices_pass_and_match_the_predictor(client: Any, guarded_dir: Path) -> None:
    slices = synthetic_slices(12, HELD_OUT_SEED)
    bodies = [_predict(client, image) for image in slices]
    flags = [body["out_of_distribution"] for body in bodies]
    # The thresholds sit at the 0.99 validation quantile: a held-out slice is flagged only now and then.
    assert all(flag in (True, False) for flag in flags) and flags.count(True) <= 2, flags
    for body in bodies:
        assert (body["warning"] is None) is (body["out_of_distribution"] is False)
        assert body["flagged"] is body["out_of_distribution"] and (body["class_name"] is None) is body["flagged"]
        assert (body["flag_reason"] is None) is (body["flagged"] is False)
    _, scores = Predictor(load_bundle(guarded_dir)).predict_images_guarded(slices)
    assert scores is not None
    np.testing.assert_allclose([body["ood_score"] for body in bodies], scores, rtol=1e-5, atol=1e-5)
    # Far from the noise: the held-out slices' scores are typical validation scores.
    assert float(np.median(scores)) < 0.5


def test_model_card_health_and_schema_describe_the_guard(client: Any) -> None:
    card = client.get("/v1/model").json()
    guard = card["guard"]
    assert guard["detector"] == "mahalanobis" and guard["quantile"] == 0.99 and guard["flag_above"] == 1.0
    assert 0.0 <= guard["validation_flag_rate"] <= 0.1 and guard["n_train"] == 160 and guard["n_val"] == 80
    assert "ood_score" in guard["definition"] and card["guard_note"] is None
    assert client.get("/v1/health").json()["guard_available"] is True
    openapi = client.get("/openapi.json").json()
    fields = openapi["components"]["schemas"]["PredictionResponse"]["properties"]
    assert {"flagged", "flag_reason", "out_of_distribution", "ood_score", "warning"} <= set(fields)
    assert "not a diagnosis" in fields["probabilities"]["description"]
    explain_headers = openapi["paths"]["/v1/explain"]["post"]["responses"]["200"]["headers"]
    assert "X-Out-Of-Distribution" in explain_headers


def test_explain_carries_the_verdict_in_headers(client: Any) -> None:
    files = {"file": ("n.png", png_bytes(colour_noise()), "image/png")}
    # A flagged image has no diagnosis to explain: no heat map unless asked for one.
    refused = client.post("/v1/explain", files=files)
    assert refused.status_code == 409 and refused.json()["error"] == "flagged_input"
    reason = refused.headers["x-flag-reason"]
    assert reason in refused.json()["detail"] and refused.headers["x-flagged"] == "true"
    assert reason.startswith("not an MRI") and refused.headers["x-out-of-distribution"] == "true"
    noise = client.post("/v1/explain?explain_flagged=true", files=files)
    assert noise.status_code == 200 and noise.headers["content-type"] == "image/png"
    assert noise.headers["x-out-of-distribution"] == "true" and float(noise.headers["x-ood-score"]) > 1.0
    assert noise.headers["x-input-warning"] == OOD_WARNING and noise.headers["x-flagged"] == "true"
    scores = {}
    for index, image in enumerate(synthetic_slices(4, HELD_OUT_SEED)):
        response = client.post(
            "/v1/explain?explain_flagged=true", files={"file": ("s.png", png_bytes(image), "image/png")}
        )
        assert response.status_code == 200
        scores[index] = (response.headers["x-out-of-distribution"], float(response.headers["x-ood-score"]))
        assert ("x-input-warning" in response.headers) is (scores[index][0] == "true")
    assert [flag for flag, _ in scores.values()].count("false") >= 3, scores


def test_bundle_without_guard_has_null_fields(tmp_path: Path) -> None:
    recipe = Recipe.model_validate(
        {"name": "old", "data": {"image_size": 32}, "model": {"architecture": "custom_cnn", "conv_channels": [4]}}
    )
    model = create_model(recipe, load_pretrained=False)
    folder = save_bundle(tmp_path / "old", model, recipe, resolve_preprocessing(recipe, model))
    client = make_client(folder)
    body = _predict(client, colour_noise())
    assert body["out_of_distribution"] is None and body["ood_score"] is None and body["warning"] is None
    assert body["flagged"] is None and body["flag_reason"] is None and body["class_name"] in CLASS_NAMES
    card = client.get("/v1/model").json()
    assert card["guard"] is None and "braintumor guard" in card["guard_note"]
    assert str(tmp_path) not in card["guard_note"]  # no server paths
    assert client.get("/v1/health").json()["guard_available"] is False
    explained = client.post("/v1/explain", files={"file": ("n.png", png_bytes(colour_noise()), "image/png")})
    assert explained.headers["x-out-of-distribution"] == "none" and "x-ood-score" not in explained.headers
