"""The picture of a volume prediction: the most tumour-like slices with Grad-CAM, and the per-slice curve.

The top row(s) show the ``count`` slices with the highest tumour-class probability (the peak slice always
among them), each with the Grad-CAM map of the study finding's class (of the slice's own most probable
tumour class when the finding is ``no_tumor`` or ``indeterminate``) and a caption: slice index, position,
class and probability, and "flagged" when the input guard flags the slice. Below, every tumour class's
probability over the slices, the threshold and the peak slice.

Example:
    >>> layout(6)
    (2, 3)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from braintumor.bundle import Bundle
from braintumor.explain.explainer import explainer_for
from braintumor.explain.overlay import overlay_heatmap
from braintumor.inference.volume import NO_TUMOUR_CLASS, VolumeResult, most_tumour_like
from braintumor.inference.volume_defaults import DEFAULT_MONTAGE_SLICES


def layout(count: int) -> tuple[int, int]:
    """Rows and columns of the tile grid: one row up to 4 tiles, then two or more rows of at most 4."""
    columns = count if count <= 4 else min(4, math.ceil(count / 2))
    return math.ceil(count / max(columns, 1)), max(columns, 1)


def _targets(result: VolumeResult, indices: list[int]) -> list[str]:
    finding = result.study.finding
    if finding in result.class_names and finding != NO_TUMOUR_CLASS:
        return [finding] * len(indices)
    tumours = [name for name in result.class_names if name != NO_TUMOUR_CLASS]
    return [max(tumours, key=lambda name: result.slices[i].probabilities[name]) for i in indices]


def explained_slices(
    bundle: Bundle, result: VolumeResult, count: int = DEFAULT_MONTAGE_SLICES, method: str = "gradcam"
) -> list[dict[str, Any]]:
    """The chosen slices with their Grad-CAM overlay (PIL image), the class explained and its probability."""
    indices = most_tumour_like(result, count)
    targets = _targets(result, indices)
    explainer = explainer_for(bundle)
    images = [result.volume.slices[i] for i in indices]
    inputs = explainer.to_inputs(images)
    maps = explainer.maps(inputs, [explainer.class_index(name) for name in targets], method)
    tiles = []
    for index, target, image, heatmap in zip(indices, targets, images, maps, strict=True):
        item = result.slices[index]
        tiles.append(
            {
                "index": index,
                "position_mm": item.position_mm,
                "target": target,
                "probability": item.probabilities[target],
                "out_of_distribution": item.out_of_distribution,
                "overlay": overlay_heatmap(image, heatmap.numpy()),
            }
        )
    return tiles


def _caption(tile: dict[str, Any], peak: int | None) -> str:
    where = "" if tile["position_mm"] is None else f" @ {tile['position_mm']:.1f} mm"
    marks = (" PEAK" if tile["index"] == peak else "") + (" (flagged)" if tile["out_of_distribution"] else "")
    return f"slice {tile['index']}{where}{marks}\n{tile['target']} {tile['probability']:.2f}"


def _curve(axis: Any, result: VolumeResult, chosen: list[int]) -> None:
    indices = np.arange(len(result.slices))
    for name in result.class_names:
        if name != NO_TUMOUR_CLASS:
            axis.plot(indices, [s.probabilities[name] for s in result.slices], label=name, linewidth=1.5)
    axis.axhline(result.study.threshold, color="grey", linestyle="--", linewidth=1, label="threshold")
    flagged = [s.index for s in result.slices if s.out_of_distribution]
    if flagged:
        axis.scatter(flagged, [0.02] * len(flagged), marker="x", color="black", label="flagged by guard")
    if result.study.peak_slice is not None:
        axis.axvline(result.study.peak_slice, color="red", linewidth=1, label="peak slice")
    axis.scatter(chosen, [0.98] * len(chosen), marker="v", color="black", s=18)
    axis.set(
        xlim=(-0.5, len(indices) - 0.5), ylim=(0, 1), xlabel="axial slice (inferior to superior)", ylabel="probability"
    )
    axis.legend(loc="upper left", fontsize=7, ncol=3)


def save_volume_montage(
    bundle: Bundle, result: VolumeResult, path: Path, count: int = DEFAULT_MONTAGE_SLICES, method: str = "gradcam"
) -> list[dict[str, Any]]:
    """Write the montage PNG to ``path``; returns the tiles (without their images) for a JSON summary."""
    tiles = explained_slices(bundle, result, count, method)
    rows, columns = layout(len(tiles))
    figure = plt.figure(figsize=(3.0 * columns, 3.1 * rows + 2.6))
    grid = figure.add_gridspec(rows + 1, columns, height_ratios=[3.1] * rows + [2.6])
    for number, tile in enumerate(tiles):
        axis = figure.add_subplot(grid[number // columns, number % columns])
        axis.imshow(tile["overlay"])
        axis.set_title(_caption(tile, result.study.peak_slice), fontsize=8)
        axis.axis("off")
    _curve(figure.add_subplot(grid[rows, :]), result, [t["index"] for t in tiles])
    study = result.study
    figure.suptitle(
        f"{Path(result.volume.source).name}: {study.finding} ({study.reason}); model {result.model_name} "
        f"{result.model_version}",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [{key: value for key, value in tile.items() if key != "overlay"} for tile in tiles]
