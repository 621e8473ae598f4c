"""The web page in headless Chromium: upload a synthetic scan, see the result, save a screenshot; with an
input guard, a colour photo gets a "no diagnosis" warning instead of a result.

Uses Playwright driving the system Chromium (``/usr/bin/chromium``, Debian's ``chromium``), so no
browser is downloaded. Skips cleanly when either is missing. Set ``BRAINTUMOR_SCREENSHOT_DIR`` to
keep the screenshots somewhere to look at.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("BRAINTUMOR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
uvicorn = pytest.importorskip("uvicorn")
pydicom = pytest.importorskip("pydicom")

from braintumor.bundle import load_bundle, save_bundle  # noqa: E402
from braintumor.config import Recipe  # noqa: E402
from braintumor.data.synthetic import synthetic_image  # noqa: E402
from braintumor.inference import Predictor  # noqa: E402
from braintumor.models import create_model, resolve_preprocessing  # noqa: E402
from braintumor.serving.app import create_app  # noqa: E402
from tests.serving.test_serving_guard import HELD_OUT_SEED, save_guarded_bundle, synthetic_slices  # noqa: E402

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _serving(folder: Path) -> Iterator[str]:
    """The service for ``folder`` on a free local port, in a background thread; yields its URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(folder), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    recipe = Recipe.model_validate(
        {
            "name": "browser-demo",
            "data": {"image_size": 64},
            "model": {"architecture": "custom_cnn", "conv_channels": [8, 16]},
        }
    )
    model = create_model(recipe)
    # A refer threshold above any confidence a 4-class random model reaches: the warning must show.
    folder = save_bundle(
        tmp_path_factory.mktemp("browser") / "bundle",
        model,
        recipe,
        resolve_preprocessing(recipe, model),
        extras={"temperature": 1.3, "refer_threshold": 0.95},
    )
    with _serving(folder) as url:
        yield url


@pytest.fixture(scope="module")
def guarded_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle whose input guard was fitted on synthetic slices (grey heads on black)."""
    return save_guarded_bundle(tmp_path_factory.mktemp("browser-guard") / "bundle", name="guarded-demo", size=64)


@pytest.fixture(scope="module")
def guarded_url(guarded_bundle: Path) -> Iterator[str]:
    with _serving(guarded_bundle) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        try:
            instance = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        except playwright_api.Error as error:
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {str(error).splitlines()[0]}")
        yield instance
        instance.close()


def _screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("BRAINTUMOR_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_upload_shows_prediction_overlay_and_refer_warning(server_url: str, browser, tmp_path: Path) -> None:
    scan = tmp_path / "scan.png"
    synthetic_image("pituitary", 256, np.random.default_rng(3)).save(scan)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server_url)
    playwright_api.expect(page.locator("#model")).to_contain_text("browser-demo")
    playwright_api.expect(page.locator("#disclaimer")).to_contain_text("Research use only")
    page.set_input_files("#file", str(scan))
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    playwright_api.expect(page.locator("#bars .bar")).to_have_count(4)
    verdict = page.inner_text("#verdict")
    assert verdict in {"Glioma", "Meningioma", "No tumour", "Pituitary tumour"}
    assert page.locator("#bars .bar.top").count() == 1
    assert "Model confidence" in page.inner_text("#confidence")
    playwright_api.expect(page.locator("#refer")).to_be_visible()
    assert "refer" in page.inner_text("#refer").lower()
    assert page.get_attribute("#overlay", "data-loaded") == "true"
    assert page.evaluate("document.getElementById('overlay').naturalWidth") == 256
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 256
    assert not page.locator("#error").is_visible()
    # This bundle has no input guard: the page says so and shows no out-of-distribution warning.
    assert not page.locator("#ood").is_visible() and "input guard: none" in page.inner_text("#meta")
    page.screenshot(path=str(_screenshot_path(tmp_path, "serve-page-result.png")), full_page=True)
    page.close()


def test_dicom_upload_and_plain_word_errors(server_url: str, browser, tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    grey = np.asarray(synthetic_image("glioma", 128, np.random.default_rng(4)).convert("L"), dtype=np.uint16) * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 128, 128, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    ds.PixelData = grey.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    dicom = tmp_path / "slice.dcm"
    dicom.write_bytes(buffer.getvalue())

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(server_url)
    playwright_api.expect(page.locator("#model")).to_contain_text("browser-demo")
    page.set_input_files("#file", str(dicom))
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    # The browser cannot draw DICOM: the page says so and still shows the result and the overlay.
    playwright_api.expect(page.locator("#preview-none")).to_be_visible()
    assert "DICOM 128×128" in page.inner_text("#meta")
    assert page.get_attribute("#overlay", "data-loaded") == "true"
    page.screenshot(path=str(_screenshot_path(tmp_path, "serve-page-dicom.png")), full_page=True)

    fake = tmp_path / "report.png"
    fake.write_text("this is a text file with an image name", encoding="utf-8")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("body[data-state=error]", timeout=30_000)
    message = page.inner_text("#error")
    assert "not an image" in message and "JPEG, PNG or DICOM" in message
    assert not page.locator("#result").is_visible()
    page.screenshot(path=str(_screenshot_path(tmp_path, "serve-page-error.png")), full_page=True)
    page.close()


def _holiday_photo(size: int = 256) -> Image.Image:
    """A colour picture (blue sky, green field, yellow sun): nothing like a grey MRI slice."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[: size // 2] = (70, 140, 230)
    pixels[size // 2 :] = (60, 170, 70)
    yy, xx = np.mgrid[0:size, 0:size]
    pixels[(yy - size // 4) ** 2 + (xx - 3 * size // 4) ** 2 < (size // 10) ** 2] = (250, 220, 40)
    return Image.fromarray(pixels)


def test_a_colour_photo_gets_a_warning_not_a_diagnosis(guarded_url: str, browser, tmp_path: Path) -> None:
    photo = tmp_path / "holiday.png"
    _holiday_photo().save(photo)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(guarded_url)
    playwright_api.expect(page.locator("#model")).to_contain_text("input guard on")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    assert page.get_attribute("body", "data-ood") == "flagged"
    playwright_api.expect(page.locator("#ood")).to_be_visible()
    assert "Not a brain MRI like the training images" in page.inner_text("#ood")
    assert "no diagnosis" in page.inner_text("#ood").lower()
    assert page.inner_text("#verdict") == "No diagnosis"
    # The class scores are still there, greyed and labelled, with no class presented as the result.
    playwright_api.expect(page.locator("#bars .bar")).to_have_count(4)
    assert page.locator("#bars.not-diagnosis").count() == 1 and page.locator("#bars .bar.top").count() == 0
    playwright_api.expect(page.locator("#bars-note")).to_be_visible()
    assert "not a diagnosis" in page.inner_text("#bars-note").lower()
    assert page.get_attribute("#overlay", "data-loaded") == "false" and "No Grad-CAM" in page.inner_text(
        "#overlay-none"
    )
    assert not page.locator("#refer").is_visible()
    page.screenshot(path=str(_screenshot_path(tmp_path, "serve-page-ood.png")), full_page=True)
    page.close()


def test_an_mri_like_slice_gets_a_result(guarded_url: str, guarded_bundle: Path, browser, tmp_path: Path) -> None:
    # Of a few held-out slices, the one the guard finds most typical (each is typically unflagged).
    slices = synthetic_slices(4, HELD_OUT_SEED, size=256)
    _, scores = Predictor(load_bundle(guarded_bundle)).predict_images_guarded(slices)
    assert scores is not None and float(scores.min()) <= 1.0
    scan = tmp_path / "slice.png"
    slices[int(scores.argmin())].save(scan)
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(guarded_url)
    playwright_api.expect(page.locator("#model")).to_contain_text("guarded-demo")
    page.set_input_files("#file", str(scan))
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    assert page.get_attribute("body", "data-ood") == "passed"
    assert not page.locator("#ood").is_visible() and not page.locator("#bars-note").is_visible()
    assert page.inner_text("#verdict") in {"Glioma", "Meningioma", "No tumour", "Pituitary tumour"}
    assert page.locator("#bars .bar.top").count() == 1 and page.locator("#bars.not-diagnosis").count() == 0
    assert "input guard: passed" in page.inner_text("#meta")
    assert page.get_attribute("#overlay", "data-loaded") == "true"
    page.close()
