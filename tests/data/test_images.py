"""Every bad-input case: a clear error naming the file and the reason; runs go on without it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintumor.data.dataset import load_images
from braintumor.data.images import decode_image_bytes, load_image_rgb
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing
from braintumor.data.synthetic import make_synthetic_dataset
from braintumor.errors import DatasetLayoutError, ImageDecodeError


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is a text file, not a picture\n", "not an image"),
        (_jpeg_bytes()[:300], "truncated|corrupt|image file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot read image header|not an image|truncated|corrupt"),
    ],
    ids=["zero-bytes", "text", "truncated-jpeg", "broken-png"],
)
def test_bad_files_name_the_file_and_the_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "scan.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as caught:
        load_image_rgb(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)


def test_png_named_jpg_loads(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(_png_bytes(Image.new("L", (20, 10), 200)))
    image = load_image_rgb(path)
    assert image.mode == "RGB" and image.size == (20, 10)


def test_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (9000, 7000)).save(path)  # 63 Mpx but a tiny file: a decompression bomb
    with pytest.raises(ImageDecodeError, match="over the limit"):
        load_image_rgb(path)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg_bytes())
    with pytest.raises(ImageDecodeError, match="over the limit"):
        load_image_rgb(path, max_file_bytes=100)


@pytest.mark.parametrize("mode", ["I;16", "RGBA", "P", "LA", "CMYK", "F"])
def test_any_mode_becomes_rgb(mode: str) -> None:
    if mode == "I;16":
        image = Image.fromarray(np.linspace(0, 4000, 64, dtype=np.uint16).reshape(8, 8))
    elif mode == "F":
        image = Image.fromarray(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8))
    else:
        image = Image.new(mode, (8, 8))
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    decoded = decode_image_bytes(buffer.getvalue(), f"{mode}.tiff")
    assert decoded.mode == "RGB" and decoded.size == (8, 8)
    if mode in {"I;16", "F"}:  # high bit depth is stretched to the full 8-bit range, not clipped
        pixels = np.asarray(decoded)
        assert pixels.min() == 0 and pixels.max() == 255


def test_loading_a_split_skips_bad_files_and_reports_them(tmp_path: Path) -> None:
    root = make_synthetic_dataset(tmp_path, per_class=3, size=24)
    glioma = root / "Training" / "glioma_tumor"
    (glioma / "empty.jpg").write_bytes(b"")
    (glioma / "notes.txt").write_text("not an image")
    (glioma / "cut.jpg").write_bytes(_jpeg_bytes()[:200])
    (glioma / "png_named.jpg").write_bytes(_png_bytes(Image.new("RGB", (30, 30), (50, 60, 70))))
    image_set = load_images(discover_split(root, "Training"), Preprocessing(image_size=16), show_progress=False)
    assert len(image_set) == 13  # 12 synthetic + the PNG named .jpg
    assert image_set.images.shape == (13, 3, 16, 16)
    reasons = {Path(s.path).name: s.reason for s in image_set.skipped}
    assert set(reasons) == {"empty.jpg", "notes.txt", "cut.jpg"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["notes.txt"]


def test_a_split_with_no_decodable_file_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "Training" / "glioma"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetLayoutError, match="none of the 1 files"):
        load_images(discover_split(tmp_path, "Training"), Preprocessing(image_size=16), show_progress=False)


def test_head_crop_removes_borders_and_framing() -> None:
    from braintumor.data.preprocessing import crop_to_head, head_bounding_box
    from braintumor.data.synthetic import synthetic_image

    head = np.asarray(synthetic_image("glioma", 64, np.random.default_rng(0)))
    canvas = np.zeros((200, 300, 3), dtype=np.uint8)
    canvas[120:184, 20:84] = head  # a small head in a corner of a wide black frame
    canvas[5:8, 250:290] = 255  # burnt-in text: too thin to count as head
    top, bottom, left, right = head_bounding_box(np.asarray(Image.fromarray(canvas).convert("L")), margin=0.0)
    assert 118 <= top <= 132 and 172 <= bottom <= 186 and 18 <= left <= 36 and 68 <= right <= 86
    cropped = crop_to_head(Image.fromarray(canvas))
    assert cropped.width == cropped.height and 55 <= cropped.width <= 80
    black = Image.new("RGB", (50, 40))
    assert crop_to_head(black) is black  # nothing stands out: left as it is


def test_head_crop_is_part_of_the_stored_preprocessing() -> None:
    from braintumor.data.preprocessing import resize_to_uint8_tensor

    canvas = np.zeros((100, 100, 3), dtype=np.uint8)
    canvas[60:100, 60:100] = 200
    plain = resize_to_uint8_tensor(Image.fromarray(canvas), Preprocessing(image_size=20))
    cropped = resize_to_uint8_tensor(Image.fromarray(canvas), Preprocessing(image_size=20, crop="head"))
    assert plain.float().mean() < 100 < cropped.float().mean()


@pytest.mark.parametrize("crop", ["none", "head"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_grey_slices_resized_on_one_band_match_the_rgb_path(crop: str, interpolation: str) -> None:
    """A grey slice stored as RGB is cropped and resized on its one band: bitwise what the RGB path gives."""
    from PIL import ImageOps

    from braintumor.data.preprocessing import crop_to_head, grey_band, resize_to_uint8_tensor

    rng = np.random.default_rng(3)
    grey = np.zeros((300, 420), dtype=np.uint8)
    grey[40:260, 90:330] = rng.integers(30, 255, (220, 240), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1))
    prep = Preprocessing(image_size=97, interpolation=interpolation, crop=crop)
    assert grey_band(rgb) is not None
    framed = crop_to_head(rgb) if crop == "head" else rgb  # the RGB path, step by step
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[interpolation]
    expected = np.asarray(framed.resize((97, 97), resample=resample, reducing_gap=3.0)).transpose(2, 0, 1)
    np.testing.assert_array_equal(resize_to_uint8_tensor(rgb, prep).numpy(), expected)
    # A colour image keeps the RGB path.
    coloured = ImageOps.colorize(Image.fromarray(grey), "black", "orange")
    assert grey_band(coloured) is None
    assert resize_to_uint8_tensor(coloured, prep).shape == (3, 97, 97)
