"""The HTTP service: every endpoint, every refused input, DICOM decoding, and the CLI wrappers."""

from __future__ import annotations

import builtins
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pydicom = pytest.importorskip("pydicom")

from fastapi.testclient import TestClient  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from braintumor.bundle import load_bundle, save_bundle  # noqa: E402
from braintumor.cli import app as cli_app  # noqa: E402
from braintumor.config import Recipe  # noqa: E402
from braintumor.data.dicom import decode_dicom_bytes, dicom_frames  # noqa: E402
from braintumor.data.images import decode_image_bytes  # noqa: E402
from braintumor.data.synthetic import synthetic_image  # noqa: E402
from braintumor.errors import BrainTumorError, ImageDecodeError  # noqa: E402
from braintumor.inference import Predictor  # noqa: E402
from braintumor.models import create_model, resolve_preprocessing  # noqa: E402
from braintumor.serving import service as service_module  # noqa: E402
from braintumor.serving.app import create_app  # noqa: E402
from braintumor.serving.settings import API_KEY_ENV, ServeSettings, ServeSettingsError  # noqa: E402

TEMPERATURE = 1.7
REFER_THRESHOLD = 0.6
# These tests are about the API; the PyTorch backend keeps them independent of ONNX export
# (tests/test_fast_path.py and tests/test_onnx.py cover the onnxruntime default).
TORCH = ServeSettings(backend="torch")


def _bundle(folder: Path, extras: dict | None) -> Path:
    recipe = Recipe.model_validate(
        {
            "name": "tiny-serve",
            "data": {"image_size": 32},
            "model": {"architecture": "custom_cnn", "conv_channels": [4, 8]},
        }
    )
    model = create_model(recipe)
    return save_bundle(folder, model, recipe, resolve_preprocessing(recipe, model), extras=extras)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    extras = {"temperature": TEMPERATURE, "refer_threshold": REFER_THRESHOLD}
    return _bundle(tmp_path_factory.mktemp("serve") / "bundle", extras)


@pytest.fixture(scope="module")
def client(bundle_dir: Path) -> TestClient:
    settings = ServeSettings(max_upload_bytes=3 * 1024 * 1024, max_pixels=1_000_000, backend="torch")
    return TestClient(create_app(bundle_dir, settings))


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _mri(size: int = 64, seed: int = 0, class_name: str = "glioma") -> Image.Image:
    return synthetic_image(class_name, size, np.random.default_rng(seed))


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _dicom(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    **attributes: object,
) -> bytes:
    """A DICOM file made with pydicom: unsigned 16-bit grey pixels (or none), plus any header attributes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _ramp(size: int = 32, high: int = 1000) -> np.ndarray:
    return np.tile(np.linspace(0, high, size).round().astype(np.uint16), (size, 1))


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.int32)


# --- endpoints ---------------------------------------------------------------------------------------


def test_health_model_page_and_docs(client: TestClient) -> None:
    health = client.get("/v1/health").json()
    assert health["status"] == "ok"
    assert health["model"]["name"] == "tiny-serve" and health["model"]["backend"] == "pytorch"
    assert len(health["model"]["version"]) == 12
    assert health["api_key_required"] is False and health["accepted_formats"] == ["JPEG", "PNG", "DICOM"]

    card = client.get("/v1/model").json()
    assert card["class_names"] == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert card["recipe"]["name"] == "tiny-serve"
    assert card["temperature"] == TEMPERATURE and card["refer_threshold"] == REFER_THRESHOLD
    assert "validation" in card["metrics"]
    # A bundle saved without an input guard says so: "guard": null and a note on how to add one.
    assert card["guard"] is None and "braintumor guard" in card["guard_note"]
    assert health["guard_available"] is False
    assert "val_paths" not in str(card) and "data_root" not in str(card)  # no server paths

    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Research use only" in page.text and 'type="file"' in page.text
    # Self-contained: no CDN (the SVG namespace is an identifier, never fetched).
    text = page.text.replace("http://www.w3.org/2000/svg", "")
    assert "http://" not in text and "https://" not in text

    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/explain", "/v1/health", "/v1/model"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]


def test_predict_multipart_matches_the_predictor(client: TestClient, bundle_dir: Path) -> None:
    image = _mri(64, seed=1)
    response = client.post("/v1/predict", files={"file": ("scan.png", _encode(image, "PNG"), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Predictor(load_bundle(bundle_dir)).predict_images([image])[0]
    got = np.array([body["probabilities"][name] for name in ["glioma", "meningioma", "no_tumor", "pituitary"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert body["class_name"] == ["glioma", "meningioma", "no_tumor", "pituitary"][int(expected.argmax())]
    assert body["confidence"] == pytest.approx(float(expected.max()), abs=1e-6)
    assert body["calibrated"] is True and body["temperature"] == TEMPERATURE
    assert body["refer_threshold"] == REFER_THRESHOLD
    assert body["refer"] is (body["confidence"] < REFER_THRESHOLD)
    assert body["image"] == {"format": "PNG", "width": 64, "height": 64}
    assert body["model"]["backend"] == "pytorch"
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0
    # No input guard in this bundle: nothing is known about the input (guard: none).
    assert body["out_of_distribution"] is None and body["ood_score"] is None and body["warning"] is None


def test_predict_raw_jpeg_body_and_content_not_name(client: TestClient) -> None:
    jpeg = _encode(_mri(48, seed=2), "JPEG", quality=90)
    raw = client.post("/v1/predict", content=jpeg, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200 and raw.json()["image"]["format"] == "JPEG"
    # A JPEG named .png and declared as DICOM is still a JPEG: the content decides.
    lying = client.post("/v1/predict", files={"file": ("scan.png", jpeg, "application/dicom")})
    assert lying.status_code == 200 and lying.json()["image"]["format"] == "JPEG"


def test_bundle_without_calibration_has_no_refer_flag(tmp_path: Path) -> None:
    client = TestClient(create_app(_bundle(tmp_path / "plain", extras=None), TORCH))
    body = client.post("/v1/predict", files={"file": ("a.png", _encode(_mri(32), "PNG"), "image/png")}).json()
    assert body["calibrated"] is False and body["temperature"] is None
    assert body["refer"] is None and body["refer_threshold"] is None


def test_refer_threshold_stored_as_a_record(tmp_path: Path) -> None:
    folder = _bundle(tmp_path / "record", extras={"refer_threshold": {"threshold": 0.99, "coverage": 0.8}})
    client = TestClient(create_app(folder, TORCH))
    body = client.post("/v1/predict", files={"file": ("a.png", _encode(_mri(32), "PNG"), "image/png")}).json()
    assert body["refer_threshold"] == 0.99 and body["refer"] is True  # a random 4-class model is never 99% sure


def test_explain_returns_a_png_overlay(client: TestClient) -> None:
    image = _mri(64, seed=3)
    data = _encode(image, "PNG")
    predicted = client.post("/v1/predict", files={"file": ("a.png", data, "image/png")}).json()["class_name"]
    response = client.post("/v1/explain", files={"file": ("a.png", data, "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-explained-class"] == predicted
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "PNG" and overlay.size == image.size

    named = client.post("/v1/explain?target=meningioma", files={"file": ("a.png", data, "image/png")})
    assert named.status_code == 200 and named.headers["x-explained-class"] == "meningioma"
    unknown = client.post("/v1/explain?target=banana", files={"file": ("a.png", data, "image/png")})
    assert unknown.status_code == 422 and "banana" in unknown.json()["detail"]
    method = client.post("/v1/explain?method=nonsense", files={"file": ("a.png", data, "image/png")})
    assert method.status_code == 422 and "nonsense" in method.json()["detail"]


def test_explain_without_the_explain_stage_is_a_clear_501(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "_gradcam_function", lambda: (None, "captum is not installed"))
    client = TestClient(create_app(bundle_dir, TORCH))
    assert client.get("/v1/health").json()["explain_available"] is False
    response = client.post("/v1/explain", files={"file": ("a.png", _encode(_mri(32), "PNG"), "image/png")})
    assert response.status_code == 501 and "captum is not installed" in response.json()["detail"]


# --- refused inputs ------------------------------------------------------------------------------------


def _bad_requests() -> list[tuple[str, dict, int, str]]:
    truncated_png = _encode(_mri(64, seed=4), "PNG")[:300]
    jpeg = _encode(_mri(64, seed=5), "JPEG")
    corrupt_jpeg = jpeg[:200] + bytes(len(jpeg) - 200)
    big = _encode(Image.new("L", (1200, 1000)), "PNG")  # 1.2 Mpx, small file: over max_pixels=1e6
    gif = _encode(Image.new("L", (8, 8)), "GIF")
    too_big = np.random.default_rng(0).integers(0, 255, 3 * 1024 * 1024 + 10, dtype=np.uint8).tobytes()

    def chunks():
        for start in range(0, len(too_big), 256 * 1024):
            yield too_big[start : start + 256 * 1024]

    def files(data: bytes, name: str = "x.png") -> dict:
        return {"files": {"file": (name, data, "image/png")}}

    return [
        ("plain text", files(b"this is not an image at all"), 415, "not an image"),
        ("GIF", files(gif, "x.gif"), 415, "GIF"),
        ("empty file", files(b""), 422, "empty"),
        ("truncated PNG", files(truncated_png), 422, "truncated"),
        ("corrupt JPEG", files(corrupt_jpeg, "x.jpg"), 422, "JPEG"),
        ("too many pixels", files(big), 422, "over the limit"),
        ("decompression bomb", files(_png_with_size(100_000, 100_000)), 422, "pixels"),
        ("over the size limit", files(too_big), 413, "larger than"),
        ("over the limit, no Content-Length", {"content": chunks(), "headers": {"content-type": "image/png"}}, 413, ""),
        ("DICOM without pixel data", files(_dicom(None), "x.dcm"), 422, "no pixel data"),
        ("multi-frame DICOM", files(_dicom(np.stack([_ramp()] * 3), frames=3), "x.dcm"), 422, "3 frames"),
        ("DICOM claiming huge size", files(_dicom(_ramp(4), Rows=5000, Columns=5000), "x.dcm"), 422, "pixels"),
        ("truncated DICOM", files(_dicom(_ramp(32))[:-500], "x.dcm"), 422, "pixel data"),
        ("DICM magic, garbage header", files(bytes(128) + b"DICM" + b"\xff" * 64, "x.dcm"), 422, "DICOM"),
        (
            "malformed multipart",
            {"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=y"}},
            400,
            "multipart",
        ),
        (
            "multipart without a file",
            {
                "content": b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n',
                "headers": {"content-type": "multipart/form-data; boundary=b"},
            },
            422,
            "no file",
        ),
    ]


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom on the garbage header
def test_every_bad_input_is_refused_clearly_and_the_service_keeps_answering(client: TestClient) -> None:
    good = _encode(_mri(32), "PNG")
    for label, request, status, words in _bad_requests():
        response = client.post("/v1/predict", **request)
        assert response.status_code == status, f"{label}: {response.status_code} {response.text}"
        body = response.json()
        assert set(body) == {"error", "detail"}, label
        assert words.lower() in body["detail"].lower(), f"{label}: {body['detail']}"
        assert "Traceback" not in body["detail"]
        # The explain endpoint goes through the same checks.
        if status != 413:
            assert client.post("/v1/explain", **request).status_code == status, label
        alive = client.post("/v1/predict", files={"file": ("ok.png", good, "image/png")})
        assert alive.status_code == 200, f"after {label}: {alive.text}"


def test_an_internal_failure_is_a_500_and_the_service_recovers(bundle_dir: Path) -> None:
    application = create_app(bundle_dir, TORCH)
    client = TestClient(application, raise_server_exceptions=False)
    service = application.state.service
    original = service.predict

    def broken(image: Image.Image) -> service_module.Outcome:
        raise RuntimeError("simulated failure")

    service.predict = broken
    response = client.post("/v1/predict", files={"file": ("a.png", _encode(_mri(32), "PNG"), "image/png")})
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert "simulated" not in response.text  # internals stay in the log
    service.predict = original
    again = client.post("/v1/predict", files={"file": ("a.png", _encode(_mri(32), "PNG"), "image/png")})
    assert again.status_code == 200


def test_uploads_are_never_written_to_disk(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # A noise image well over the 1 MiB that FastAPI's UploadFile would spool to a temporary file.
    noise = np.random.default_rng(1).integers(0, 255, (700, 700, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "PNG")
    assert len(data) > 1024 * 1024
    real_open = builtins.open

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a request tried to create a file: {args} {kwargs}")

    def guarded_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if any(flag in mode for flag in "wax+"):
            refuse(file, mode)
        return real_open(file, mode, *args, **kwargs)

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(builtins, "open", guarded_open)
    response = client.post("/v1/predict", files={"file": ("noise.png", data, "image/png")})
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"format": "PNG", "width": 700, "height": 700}


def test_api_key(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "s3cret-key")
    client = TestClient(create_app(bundle_dir, ServeSettings.from_env(backend="torch")))
    files = {"file": ("a.png", _encode(_mri(32), "PNG"), "image/png")}
    health = client.get("/v1/health").json()
    assert health["api_key_required"] is True and health["api_key_header"] == "X-API-Key"
    missing = client.post("/v1/predict", files=files)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    assert client.post("/v1/predict", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/model").status_code == 401
    assert client.post("/v1/explain", files=files).status_code == 401
    assert client.post("/v1/predict", files=files, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert client.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert "s3cret" not in client.get("/openapi.json").text


def test_settings_are_checked() -> None:
    with pytest.raises(ServeSettingsError, match="allowed_formats"):
        ServeSettings.from_env(allowed_formats=["PNG", "EXE"])
    with pytest.raises(ServeSettingsError, match="max_upload_bytes"):
        ServeSettings.from_env(max_upload_bytes=5)
    assert ServeSettings.from_env(allowed_formats=["png", "dicom"]).allowed_formats == ("PNG", "DICOM")


# --- DICOM decoding --------------------------------------------------------------------------------------


def test_dicom_window_and_rescale_are_applied() -> None:
    stored = _ramp(32, high=1000)
    # Rescale 2 * stored - 1000 gives -1000..1000; the window 0 +- 250 then covers stored 375..625.
    image = decode_dicom_bytes(
        _dicom(stored, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=500), "w.dcm"
    )
    grey = _grey(image)
    assert image.size == (32, 32) and image.mode == "RGB"
    assert (grey[stored <= 370] == 0).all() and (grey[stored >= 630] == 255).all()
    middle = grey[(stored > 450) & (stored < 550)]
    assert middle.size and 60 < middle.mean() < 195
    # Without a window the whole modality range is used: the ramp spans 0..255.
    plain = _grey(decode_dicom_bytes(_dicom(stored, RescaleSlope=2, RescaleIntercept=-1000), "p.dcm"))
    assert plain.min() == 0 and plain.max() == 255 and (np.diff(plain[0]) >= 0).all()


def test_dicom_voi_lut_and_monochrome1() -> None:
    stored = _ramp(16, high=255)
    lut_item = Dataset()
    lut_item.add_new("LUTDescriptor", "US", [256, 0, 8])
    lut_item.add_new("LUTData", "US", list(range(255, -1, -1)))  # an inverting LUT: the output must be inverted
    with_lut = _grey(decode_dicom_bytes(_dicom(stored, VOILUTSequence=Sequence([lut_item])), "lut.dcm"))
    direct = _grey(decode_dicom_bytes(_dicom(stored), "plain.dcm"))
    assert with_lut[0, 0] == 255 and with_lut[0, -1] == 0
    assert np.abs(with_lut - (255 - direct)).max() <= 1

    monochrome1 = _grey(decode_dicom_bytes(_dicom(stored, photometric="MONOCHROME1"), "m1.dcm"))
    assert np.abs(monochrome1 - (255 - direct)).max() <= 1


def test_dicom_multi_frame_gives_one_image_per_frame_or_a_clear_error() -> None:
    frames = np.stack([_ramp(16, high=100 * (index + 1)) for index in range(3)])
    data = _dicom(frames, frames=3)
    images = dicom_frames(data, "multi.dcm")
    assert len(images) == 3 and all(image.size == (16, 16) for image in images)
    with pytest.raises(ImageDecodeError, match="3 frames"):
        decode_dicom_bytes(data, "multi.dcm")
    with pytest.raises(ImageDecodeError, match="at most 2 frames"):
        dicom_frames(data, "multi.dcm", max_frames=2)
    # decode_image_bytes recognises DICOM by its content and passes the pixel limit on.
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image_bytes(_dicom(_ramp(32)), "x.bin", max_pixels=100)


def test_dicom_upload_is_predicted(client: TestClient) -> None:
    pixels = (np.asarray(_mri(64, seed=6).convert("L"), dtype=np.uint16) * 16).astype(np.uint16)
    data = _dicom(pixels, WindowCenter=2000, WindowWidth=4000)
    response = client.post("/v1/predict", files={"file": ("slice.dcm", data, "application/dicom")})
    assert response.status_code == 200, response.text
    assert response.json()["image"] == {"format": "DICOM", "width": 64, "height": 64}


# --- the CLI wrappers ---------------------------------------------------------------------------------------


def test_cli_serve_and_export_fail_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli_app, ["serve", str(tmp_path / "nope")])
    message = " ".join(missing.output.split())
    assert missing.exit_code == 2 and "does not exist" in message and "Traceback" not in message
    nothing = runner.invoke(cli_app, ["export", str(tmp_path / "nope")])
    assert nothing.exit_code == 2 and "--onnx" in nothing.output


def test_create_app_refuses_a_bad_refer_threshold(tmp_path: Path) -> None:
    folder = _bundle(tmp_path / "bad", extras=None)
    config = json.loads((folder / "config.json").read_text())
    config["extras"]["refer_threshold"] = "high"  # a hand-edited bundle
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(BrainTumorError, match="refer_threshold"):
        create_app(folder)
