"""Heat maps over the input image: PIL overlays for the API and matplotlib figures with colour bars.

Maps come at the model's square input size; they are resized to the original image's size, which
undoes the squash of the preprocessing, so the colours sit on the anatomy the person sees.

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> image = Image.new("RGB", (40, 30), (90, 90, 90))
    >>> overlay_heatmap(image, np.linspace(0, 1, 64).reshape(8, 8)).size
    (40, 30)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from PIL import Image

CAM_COLORMAP = "jet"  # the Grad-CAM papers' convention: readers know red means "looked here"
SIGNED_COLORMAP = "bwr"  # SHAP: red supports the class, blue speaks against it
MAX_OVERLAY_SIDE = 1024


def _resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``size`` (width, height), keeping its values."""
    image = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size, resample=Image.Resampling.BILINEAR), dtype=np.float32)


def display_copy(image: Image.Image, max_side: int = MAX_OVERLAY_SIDE) -> Image.Image:
    """RGB copy of ``image`` no larger than ``max_side`` on its longest side."""
    image = image.convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return image


def colourise(heatmap: np.ndarray, *, signed: bool = False) -> np.ndarray:
    """RGB floats ``[H, W, 3]`` in [0, 1] for a map in [0, 1] (or [-1, 1] when ``signed``)."""
    colormap = colormaps[SIGNED_COLORMAP if signed else CAM_COLORMAP]
    norm = Normalize(vmin=-1.0 if signed else 0.0, vmax=1.0)
    return colormap(norm(heatmap))[..., :3]


def overlay_heatmap(
    image: Image.Image, heatmap: np.ndarray, *, signed: bool = False, alpha: float = 0.45
) -> Image.Image:
    """Blend a coloured map over ``image`` (resized to the image, capped at 1024 px); returns RGB.

    The blend weight follows the map's strength, so unimportant regions keep the original pixels.
    """
    base = display_copy(image)
    values = _resize_map(heatmap, base.size)
    colours = colourise(values, signed=signed)
    if signed:
        # Zero attribution keeps the original pixel; strong evidence either way is nearly opaque.
        weight = np.clip(2.0 * alpha * np.abs(values), 0.0, 0.9)[..., None]
    else:
        # Class-activation maps tint everything a little (blue = no evidence), as readers of Grad-CAM expect.
        weight = alpha * (0.35 + 0.65 * np.clip(values, 0.0, 1.0))[..., None]
    original = np.asarray(base, dtype=np.float32) / 255.0
    blended = (1.0 - weight) * original + weight * colours
    return Image.fromarray(np.clip(blended * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


@dataclass
class Panel:
    """One heat map to draw: which method, which class, the map and a caption."""

    method: str
    target: str
    heatmap: np.ndarray
    caption: str

    @property
    def signed(self) -> bool:
        return self.method == "shap"


def save_explanation_figure(
    path: Path, image: Image.Image, rows: Sequence[Sequence[Panel]], title: str, note: str | None = None
) -> Path:
    """One PNG: the original image first, then one row of overlays per method, each row with its colour bar."""
    base = display_copy(image, max_side=512)
    n_rows = len(rows)
    n_columns = 1 + max(len(row) for row in rows)
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(2.9 * n_columns + 0.6, 2.9 * n_rows + 0.5), squeeze=False)
    for row_index, row in enumerate(rows):
        axes[row_index][0].imshow(base)
        axes[row_index][0].set_title("original" if row_index == 0 else "", fontsize=9)
        for column in range(n_columns):
            axes[row_index][column].axis("off")
        for column, panel in enumerate(row, start=1):
            axis = axes[row_index][column]
            axis.imshow(overlay_heatmap(base, panel.heatmap, signed=panel.signed))
            axis.set_title(panel.caption, fontsize=9)
        if row:
            signed = row[0].signed
            mappable = plt.cm.ScalarMappable(
                norm=Normalize(vmin=-1.0 if signed else 0.0, vmax=1.0),
                cmap=SIGNED_COLORMAP if signed else CAM_COLORMAP,
            )
            label = "SHAP (scaled): against / for" if signed else f"{row[0].method} (relative)"
            figure.colorbar(mappable, ax=list(axes[row_index]), fraction=0.02, pad=0.01, label=label)
    figure.suptitle(title, fontsize=10)
    if note:
        figure.text(0.01, 0.005, note, fontsize=7, color="dimgray", wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path
