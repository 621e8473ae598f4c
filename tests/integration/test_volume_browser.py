"""Issue 16, the web page with a volume: upload a .nii.gz, see the study finding, the per-slice curve and the peak
slice with Grad-CAM. Headless Chromium via Playwright, as tests/test_browser_serve.py (skips without either)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("nibabel")

from tests.integration.test_browser_serve import _screenshot_path, _serving, playwright_api
from tests.integration.test_browser_serve import browser as browser
from tests.serving.test_serving_guard import save_guarded_bundle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def volume_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = save_guarded_bundle(tmp_path_factory.mktemp("volume-browser") / "bundle", name="volume-demo", size=64)
    with _serving(bundle) as url:
        yield url


def test_volume_upload_shows_curve_and_peak_slice(volume_url: str, browser, tmp_path: Path) -> None:
    from braintumor.data.synthetic_volumes import nifti_bytes, stack_to_ras, tumour_stack

    voxels, affine = stack_to_ras(tumour_stack(24, 96, tumour_slices=range(8, 15), seed=4))
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(nifti_bytes(voxels, affine))
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(volume_url)
    playwright_api.expect(page.locator("#model")).to_contain_text("volume-demo")
    page.set_input_files("#file", str(scan))
    page.wait_for_selector("body[data-state=done]", timeout=30_000)
    playwright_api.expect(page.locator("#volume-result")).to_be_visible()
    assert page.inner_text("#volume-verdict").startswith(("Study finding", "Indeterminate"))
    assert page.locator("#curve polyline").count() == 3  # one line per tumour class
    assert page.locator("#peak-line").count() == 1
    assert page.evaluate("document.getElementById('peak-image').naturalWidth") == 96
    assert "Peak slice" in page.inner_text("#peak-caption") and "24 slices" in page.inner_text("#volume-meta")
    assert not page.locator("#error").is_visible()
    page.screenshot(path=str(_screenshot_path(tmp_path, "volume.png")), full_page=True)
