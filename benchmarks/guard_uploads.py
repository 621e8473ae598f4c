"""The issue's four uploads (a colour gradient photo, colour noise, a blank white image, 16-bit grey noise) and one
Testing slice, sent to ``/v1/predict`` of a bundle's service; prints what the API answers as a Markdown table.

    python benchmarks/guard_uploads.py runs/lite2-probe/bundle --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from braintumor.serving.app import create_app


def uploads(size: int = 256) -> dict[str, tuple[bytes, str]]:
    """Name -> (encoded bytes, content type) of the four non-MRI uploads."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 255, size)
    gradient = np.stack([*np.meshgrid(x, x[::-1]), np.full((size, size), 128.0)], axis=-1).astype(np.uint8)
    images = {
        "colour gradient photo (JPEG)": (Image.fromarray(gradient), "JPEG"),
        "colour noise (PNG)": (Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), "PNG"),
        "blank white image (PNG)": (Image.new("RGB", (size, size), (255, 255, 255)), "PNG"),
        "16-bit grey noise (PNG)": (Image.fromarray(rng.integers(0, 65535, (size, size)).astype(np.uint16)), "PNG"),
    }
    encoded = {}
    for name, (image, image_format) in images.items():
        buffer = io.BytesIO()
        image.save(buffer, format=image_format)
        encoded[name] = (buffer.getvalue(), f"image/{image_format.lower()}")
    return encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="Data root (one Testing glioma slice is sent too).")
    args = parser.parse_args()
    client = TestClient(create_app(args.bundle))
    sent = uploads()
    sent["Testing/glioma_tumor/image(1).jpg"] = (
        (args.data / "Testing/glioma_tumor/image(1).jpg").read_bytes(),
        "image/jpeg",
    )
    print("| upload | class (probability) | out_of_distribution | ood_score |\n|---|---|---|---:|")
    for name, (content, mime) in sent.items():
        body = client.post("/v1/predict", files={"file": ("upload", content, mime)}).json()
        verdict, score = body["out_of_distribution"], body["ood_score"]
        print(f"| {name} | {body['class_name']} ({body['confidence']:.2f}) | {verdict} | {score:.2f} |")


if __name__ == "__main__":
    main()
