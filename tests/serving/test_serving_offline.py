"""The service works without internet and leaves its bundle alone.

``/docs`` and ``/redoc`` load every script, stylesheet and icon from the app itself (no CDN). Serving a bundle,
with or without ``model.onnx``, through :func:`create_app` or ``braintumor serve``, changes no byte and adds
no file in the bundle folder; a bundle without ONNX is served with PyTorch and a one-line note says how to add
the graph.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from braintumor.bundle import ONNX_FILE, load_bundle, save_bundle
from braintumor.cli import app as cli_app
from braintumor.config import Recipe
from braintumor.models import create_model, resolve_preprocessing
from braintumor.serving.app import create_app
from braintumor.serving.settings import ServeSettings
from tests.serving.test_serving_guard import (
    HELD_OUT_SEED,
    colour_noise,
    png_bytes,
    save_guarded_bundle,
    synthetic_slices,
)

# src="..." and href="..." in a page, and the Swagger UI / ReDoc scripts' own references to other files.
_ASSET_ATTRIBUTE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_SERVICE_LOGGER = "braintumor.serving.service"


def _plain_bundle(folder: Path) -> Path:
    """A tiny custom CNN bundle without an input guard or ONNX graph."""
    recipe = Recipe.model_validate(
        {"name": "offline", "data": {"image_size": 32}, "model": {"architecture": "custom_cnn", "conv_channels": [4]}}
    )
    model = create_model(recipe, load_pretrained=False)
    return save_bundle(folder, model, recipe, resolve_preprocessing(recipe, model))


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones included), by path relative to it."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _predict_a_few(client: TestClient) -> None:
    for image in [*synthetic_slices(3, HELD_OUT_SEED), colour_noise()]:
        response = client.post("/v1/predict", files={"file": ("scan.png", png_bytes(image), "image/png")})
        assert response.status_code == 200, response.text


# --- /docs and /redoc without internet --------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    folder = _plain_bundle(tmp_path_factory.mktemp("docs") / "bundle")
    return TestClient(create_app(folder, ServeSettings(backend="torch")))


def _asset_urls(html: str) -> list[str]:
    return [url for url in _ASSET_ATTRIBUTE.findall(html) if not url.startswith("#")]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_app(docs_client: TestClient, page: str) -> None:
    response = docs_client.get(page)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    urls = _asset_urls(response.text)
    scripts = [url for url in urls if url.endswith(".js")]
    assert scripts, f"{page} names no script: {urls}"
    assert not [url for url in urls if "://" in url or url.startswith("//")], urls
    # No CDN anywhere in the page (fonts, stylesheets or scripts added from inline code).
    assert "cdn." not in response.text and "fonts.googleapis" not in response.text
    for url in urls:
        asset = docs_client.get(url)
        assert asset.status_code == 200 and asset.content, url
    # The page reads the schema from the same app.
    assert "/openapi.json" in response.text and docs_client.get("/openapi.json").status_code == 200


def test_swagger_ui_assets_are_the_real_files(docs_client: TestClient) -> None:
    urls = _asset_urls(docs_client.get("/docs").text)
    kinds = {url.rsplit(".", 1)[-1]: docs_client.get(url) for url in urls}
    assert {"js", "css"} <= set(kinds)
    assert "javascript" in kinds["js"].headers["content-type"] and len(kinds["js"].content) > 100_000
    assert "text/css" in kinds["css"].headers["content-type"]
    # The OAuth2 redirect page of Swagger UI needs nothing from outside either.
    redirect = docs_client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and not _asset_urls(redirect.text)


def test_docs_stay_out_of_the_schema(docs_client: TestClient) -> None:
    paths = docs_client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith(("/docs", "/redoc", "/static"))]


# --- the bundle is only read ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A guarded bundle without ONNX; tests copy it so that each starts from the same files."""
    return save_guarded_bundle(tmp_path_factory.mktemp("readonly") / "guarded", extras={"refer_threshold": 0.5})


def _copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


def test_a_bundle_without_onnx_is_served_with_pytorch_and_left_unchanged(
    guarded_source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _copy(guarded_source, tmp_path / "bundle")
    before = folder_digest(folder)
    with caplog.at_level(logging.WARNING, logger=_SERVICE_LOGGER):
        client = TestClient(create_app(folder))  # the default backend, auto
    assert client.get("/v1/health").json()["model"]["backend"] == "pytorch"
    _predict_a_few(client)
    assert folder_digest(folder) == before and not (folder / ONNX_FILE).exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["bundle"]  # nothing staged next to it either
    notes = [record.getMessage() for record in caplog.records if record.name == _SERVICE_LOGGER]
    assert len(notes) == 1 and "\n" not in notes[0], notes
    assert "PyTorch" in notes[0] and f"braintumor export {folder}" in notes[0]


def test_a_bundle_with_onnx_is_served_with_onnxruntime_and_left_unchanged(
    guarded_source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from braintumor.inference.onnx_export import export_onnx

    folder = _copy(guarded_source, tmp_path / "bundle")
    export_onnx(load_bundle(folder))
    before = folder_digest(folder)
    assert ONNX_FILE in before
    with caplog.at_level(logging.WARNING, logger=_SERVICE_LOGGER):
        client = TestClient(create_app(folder))
    assert client.get("/v1/health").json()["model"]["backend"] == "onnxruntime"
    _predict_a_few(client)
    assert folder_digest(folder) == before
    assert not [record for record in caplog.records if record.name == _SERVICE_LOGGER]


def test_cli_serve_leaves_the_bundle_unchanged(
    guarded_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    folder = _copy(guarded_source, tmp_path / "bundle")
    before = folder_digest(folder)
    started: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:  # instead of listening on a port
        started.update(app=app, **options)

    monkeypatch.setattr(uvicorn, "run", run)
    result = CliRunner().invoke(cli_app, ["serve", str(folder), "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert started["port"] == 8123
    client = TestClient(started["app"])
    assert client.get("/v1/health").json()["model"]["backend"] == "pytorch"
    _predict_a_few(client)
    assert folder_digest(folder) == before
