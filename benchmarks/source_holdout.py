"""Source hold-out: a validation proxy for Testing's shift, built from Training only, and a probe sweep judged on it.

Every Training glioma is a 512x512 slice from one source (dim, low-contrast post-contrast T1), while most
Training meningiomas, nearly all no-tumour slices and most Testing images come from other sources (other sizes,
brighter, other sequences). A model can therefore learn "this source's look means glioma", and Testing's gliomas,
which mostly come from the other sources, get called meningioma. The proxy re-creates that situation inside
Training: for a class that Training has from both kinds of source (meningioma, pituitary), its images from the
other sources are held out, the probe is trained on the rest, and the held-out images' recall says whether the
model recognises a class in a source it only saw for other classes. The image's source is read from its file
header (512x512 or not), never from Testing.

For each variant, frozen backbone features are computed once, a logistic regression's C is chosen by the usual
stratified validation split's log loss, and the table shows: validation (in-distribution), the source hold-out
recalls, and Testing (reported only, after the fact; never used to choose).

    python benchmarks/source_holdout.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights \\
        --variant tf_efficientnet_lite0:224:none --variant tf_efficientnet_lite0:224:window

A variant is ``BACKBONE:SIZE:INTENSITY[:styleB|POOLpool|multilevel][:swapV][:augV][:debiasK]`` (head-cropped
slices); INTENSITY is one of the stored preprocessing's ``data.intensity`` values. ``debiasK`` removes K source
directions from the standardised features before the probe (iterative nullspace projection): each is the weight
vector of a logistic regression that tells the two kinds of source apart within a class (class means subtracted;
only classes with at least 10 images of each kind), fitted on the probe's own training images, so that in the
hold-out the held-out images never shape the directions.

``styleB`` removes each image's "style" after the backbone's block B (timm EfficientNet ``blocks[B]``): every
channel's per-image mean and standard deviation are replaced by their averages over the Training images (instance
normalisation to one fixed style, as in AdaIN), before the frozen layers above run. ``POOLpool`` pools the last
feature map by ``avg`` (timm's default), ``max`` (the most activated place: a lesion is local, a source's look is
global) or ``avgmax`` (both, concatenated). ``multilevel`` concatenates the average-pooled outputs of the last
three blocks to the usual features (mid-level features, less tied to ImageNet's classes). ``augV`` adds V
augmented views of every training image (:data:`SOURCE_AUGMENT`: strong intensity and framing changes) to the
probe's training set; validation, the hold-out and Testing use the clean view. ``swapV`` adds V views in which
each training image has the style (channel means and deviations after ``blocks[1]``) of a random Training image
from the other kind of source: a main-source glioma seen in another source's style.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_args import data_parser, produced_by, use_weights_dir
from PIL import Image
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, log_loss
from sklearn.preprocessing import StandardScaler

from braintumor.config import AugmentConfig
from braintumor.data.dataset import ImageSet, drop_exact_duplicates, load_images, stratified_split
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, augmentation_transform, eval_transform
from braintumor.layout_constants import CLASS_NAMES
from braintumor.models.pretrained import create_backbone

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)
HELD_OUT_CLASSES = ("meningioma", "pituitary")
DEFAULT_OUT = Path("benchmarks/results/source_holdout.md")


POOLS = {
    "avg": lambda maps: maps.mean(dim=(2, 3)),
    "max": lambda maps: maps.amax(dim=(2, 3)),
    "avgmax": lambda maps: torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1),
}


@torch.inference_mode()
def _multilevel_features(backbone: torch.nn.Module, images: torch.Tensor, prep: Preprocessing) -> np.ndarray:
    """Average-pooled outputs of the last three blocks and of the head conv, concatenated (mid-level beside top)."""
    transform = eval_transform(prep)
    taps = list(range(len(backbone.blocks) - 3, len(backbone.blocks)))
    outputs: list[np.ndarray] = []
    for i in range(0, len(images), 64):
        pooled = []
        x = backbone.bn1(backbone.conv_stem(transform(images[i : i + 64])))
        for index, block in enumerate(backbone.blocks):
            x = block(x)
            if index in taps:
                pooled.append(x.mean(dim=(2, 3)))
        pooled.append(backbone.bn2(backbone.conv_head(x)).mean(dim=(2, 3)))
        outputs.append(torch.cat(pooled, dim=1).numpy())
    return np.concatenate(outputs)


@torch.inference_mode()
def _features(backbone: torch.nn.Module, images: torch.Tensor, prep: Preprocessing, pool: str = "avg") -> np.ndarray:
    transform = eval_transform(prep)
    return torch.cat(
        [POOLS[pool](backbone.forward_features(transform(images[i : i + 64]))) for i in range(0, len(images), 64)]
    ).numpy()


class _StyleRemoval:
    """Forward hook: per-image channel statistics of a block's output replaced by fixed ones."""

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        mean = output.mean(dim=(2, 3), keepdim=True)
        std = output.std(dim=(2, 3), keepdim=True) + 1e-5
        if self.mean is None:  # recording pass
            self.recorded.append((mean.mean(0), std.mean(0)))
            return output
        return (output - mean) / std * self.std + self.mean


def _style_free_features(
    backbone: torch.nn.Module,
    block: int,
    fit_images: torch.Tensor,
    sets: list[torch.Tensor],
    prep: Preprocessing,
    pool: str,
) -> list[np.ndarray]:
    hook = _StyleRemoval()
    handle = backbone.blocks[block].register_forward_hook(hook)
    _features(backbone, fit_images, prep)
    hook.mean = torch.stack([m for m, _ in hook.recorded]).mean(0)
    hook.std = torch.stack([s for _, s in hook.recorded]).mean(0)
    features = [_features(backbone, images, prep, pool) for images in sets]
    handle.remove()
    return features


def _is_main_source(path: Path) -> bool:
    with Image.open(path) as image:  # the header only
        return image.size == (512, 512)


def _predict(model: tuple, features: np.ndarray) -> np.ndarray:
    transform, classifier = model
    return classifier.predict_proba(transform.transform(features))


def source_directions(
    features: np.ndarray, labels: np.ndarray, main_source: np.ndarray, count: int, min_per_source: int = 10
) -> np.ndarray:
    """``[count, D]`` orthonormal directions along which the two kinds of source differ within a class."""
    centred = features.astype(np.float64).copy()
    usable = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = labels == label
        centred[members] -= centred[members].mean(axis=0)
        if min(main_source[members].sum(), (~main_source[members]).sum()) >= min_per_source:
            usable |= members
    x, y = centred[usable], main_source[usable]
    directions = np.zeros((0, features.shape[1]))
    for _ in range(count):
        projected = x - (x @ directions.T) @ directions
        w = LogisticRegression(C=0.1, class_weight="balanced", max_iter=5000).fit(projected, y).coef_[0]
        w = w - directions.T @ (directions @ w)
        directions = np.vstack([directions, w / np.linalg.norm(w)])
    return directions


class _Debiased:
    """Standardise, then remove ``count`` source directions learnt from the fitting images."""

    def __init__(self, count: int, main_source: np.ndarray) -> None:
        self.count, self.main_source = count, main_source

    def fit(self, features: np.ndarray, labels: np.ndarray, index: np.ndarray) -> _Debiased:
        self.scaler = StandardScaler().fit(features[index])
        standard = self.scaler.transform(features[index])
        self.directions = source_directions(standard, labels[index], self.main_source[index], self.count)
        return self

    def transform(self, features: np.ndarray) -> np.ndarray:
        standard = self.scaler.transform(features)
        return standard - (standard @ self.directions.T) @ self.directions


def _fit(
    features: np.ndarray,
    labels: np.ndarray,
    c: float,
    index: np.ndarray,
    debias: int,
    main: np.ndarray | None,
    augmented: np.ndarray | None = None,
):
    """A probe on ``features[index]`` (plus their ``augmented`` views, ``[V, N, D]``); with ``debias``, its own
    source directions come from the same clean images."""
    transform = (
        _Debiased(debias, main).fit(features, labels, index)
        if main is not None
        else StandardScaler().fit(features[index])
    )
    x, y = features[index], labels[index]
    if augmented is not None:
        x = np.concatenate([x, *(view[index] for view in augmented)])
        y = np.tile(y, len(augmented) + 1)
    return transform, LogisticRegression(C=c, max_iter=5000).fit(transform.transform(x), y)


def _load(base: str, data: Path, cache_dir: Path | None) -> tuple:
    cached = cache_dir / f"{base.replace(':', '_')}.npz" if cache_dir else None
    if cached and cached.is_file():
        arrays = np.load(cached)
        return tuple(arrays[key] for key in ("features", "test_features", "labels", "test_labels", "main_source"))
    parts = base.split(":")
    extra = parts[3:]  # after BACKBONE:SIZE:INTENSITY
    style = [part for part in extra if part.startswith("style")]
    pool = next((part.removesuffix("pool") for part in extra if part.endswith("pool")), "avg")
    prep, training, backbone = _training_images(":".join(parts[:3]), data)
    testing = load_images(discover_split(data, "Testing"), prep, show_progress=False)
    if style:
        # The fixed style is the average over Training (a subset is enough for channel averages).
        fit_images = training.images[torch.randperm(len(training), generator=torch.Generator().manual_seed(0))[:512]]
        block = int(style[0].removeprefix("style"))
        features, test_features = _style_free_features(
            backbone, block, fit_images, [training.images, testing.images], prep, pool
        )
    elif "multilevel" in extra:
        features = _multilevel_features(backbone, training.images, prep)
        test_features = _multilevel_features(backbone, testing.images, prep)
    else:
        features = _features(backbone, training.images, prep, pool)
        test_features = _features(backbone, testing.images, prep, pool)
    main_source = np.array([_is_main_source(path) for path in training.paths])
    loaded = (features, test_features, training.labels.numpy(), testing.labels.numpy(), main_source)
    if cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
        keys = ("features", "test_features", "labels", "test_labels", "main_source")
        np.savez(cached, **dict(zip(keys, loaded, strict=True)))
    return loaded


# Strong intensity and framing augmentation: what the sources' looks differ by (gamma, contrast, equalisation,
# CLAHE, blur, framing), on top of the seed's geometry.
SOURCE_AUGMENT = AugmentConfig(
    rotation_degrees=10,
    zoom=0.1,
    translate=0.05,
    crop_scale=0.7,
    gamma=(0.5, 2.0),
    brightness=0.3,
    contrast=0.4,
    equalize_p=0.25,
    clahe_p=0.25,
    blur_p=0.25,
)


def _training_images(base: str, data: Path) -> tuple[Preprocessing, ImageSet, torch.nn.Module]:
    """The variant's preprocessing, Training's head-cropped images (copies dropped) and its frozen backbone."""
    backbone_name, size, intensity = base.split(":")
    prep = Preprocessing(
        image_size=int(size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop="head", intensity=intensity
    )
    training, _ = drop_exact_duplicates(load_images(discover_split(data, "Training"), prep, show_progress=False))
    return prep, training, create_backbone(backbone_name, pretrained=True, weights=None).eval()


def _augmented_views(base: str, count: int, data: Path, cache_dir: Path | None) -> np.ndarray:
    """``[count, N, D]`` features of Training under :data:`SOURCE_AUGMENT` (seeded), in Training's order."""
    cached = cache_dir / f"{base.replace(':', '_')}_aug{count}.npz" if cache_dir else None
    if cached and cached.is_file():
        return np.load(cached)["views"]
    prep, training, backbone = _training_images(base, data)
    augment = augmentation_transform(SOURCE_AUGMENT, prep)
    torch.manual_seed(0)
    views = np.stack(
        [_features(backbone, torch.stack([augment(image) for image in training.images]), prep) for _ in range(count)]
    )
    if cached:
        np.savez(cached, views=views)
    return views


SWAP_BLOCK = 1


@torch.inference_mode()
def _style_swapped_views(base: str, count: int, data: Path, cache_dir: Path | None) -> np.ndarray:
    """``[count, N, D]`` features of Training with each image's style taken from an image of the other source.

    Style is every channel's mean and standard deviation after ``blocks[SWAP_BLOCK]`` (as in MixStyle and
    AdaIN); a view replaces an image's with those of a random Training image of the other kind of source,
    so a main-source glioma is seen in another source's style (seeded). Donors come only from classes that the
    hold-out never holds out (here glioma and no_tumor).
    """
    cached = cache_dir / f"{base.replace(':', '_')}_swap{count}.npz" if cache_dir else None
    if cached and cached.is_file():
        return np.load(cached)["views"]
    prep, training, backbone = _training_images(base, data)
    main_source = torch.tensor([_is_main_source(path) for path in training.paths])
    transform = eval_transform(prep)
    target: list[tuple[torch.Tensor, torch.Tensor]] = []
    styles: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        mean, std = output.mean(dim=(2, 3), keepdim=True), output.std(dim=(2, 3), keepdim=True) + 1e-5
        if not target:  # recording pass
            styles.append((mean, std))
            return output
        return (output - mean) / std * target[0][1] + target[0][0]

    handle = backbone.blocks[SWAP_BLOCK].register_forward_hook(hook)
    batches = [torch.arange(i, min(i + 64, len(training))) for i in range(0, len(training), 64)]
    for batch in batches:
        backbone(transform(training.images[batch]))
    style_mean, style_std = torch.cat([m for m, _ in styles]), torch.cat([s for _, s in styles])
    generator = torch.Generator().manual_seed(0)
    # Donors never include a class the hold-out holds out, so no held-out image lends its style to training.
    donor = torch.tensor([CLASS_NAMES[label] not in HELD_OUT_CLASSES for label in training.labels.tolist()])
    main_index = torch.nonzero(main_source & donor).flatten()
    other_index = torch.nonzero(~main_source & donor).flatten()
    views = []
    for _ in range(count):
        donors = torch.empty(len(training), dtype=torch.long)
        donors[main_source] = other_index[
            torch.randint(len(other_index), (int(main_source.sum()),), generator=generator)
        ]
        donors[~main_source] = main_index[
            torch.randint(len(main_index), (int((~main_source).sum()),), generator=generator)
        ]
        view = []
        for batch in batches:
            target[:] = [(style_mean[donors[batch]], style_std[donors[batch]])]
            view.append(backbone(transform(training.images[batch])))
        target.clear()
        views.append(torch.cat(view).numpy())
    handle.remove()
    stacked = np.stack(views)
    if cached:
        np.savez(cached, views=stacked)
    return stacked


def _probe(variant: str, data: Path, cache_dir: Path | None) -> dict:
    parts = variant.split(":")
    debias = int(parts.pop().removeprefix("debias")) if parts[-1].startswith("debias") else 0
    views = int(parts.pop().removeprefix("aug")) if parts[-1].startswith("aug") else 0
    swaps = int(parts.pop().removeprefix("swap")) if parts[-1].startswith("swap") else 0
    started = time.perf_counter()
    features, test_features, labels, test_labels, main_source = _load(":".join(parts), data, cache_dir)
    augmented = _augmented_views(":".join(parts), views, data, cache_dir) if views else None
    if swaps:
        swapped = _style_swapped_views(":".join(parts), swaps, data, cache_dir)
        augmented = swapped if augmented is None else np.concatenate([swapped, augmented])
    train_idx, val_idx = stratified_split(torch.from_numpy(labels), 0.15, 42)
    main = main_source if debias else None

    best: dict | None = None
    for c in C_GRID:
        model = _fit(features, labels, c, train_idx, debias, main, augmented)
        val_p = _predict(model, features[val_idx])
        val_loss = log_loss(labels[val_idx], val_p, labels=[0, 1, 2, 3])
        if best is None or val_loss < best["val_loss"]:
            best = {"variant": variant, "C": c, "val_loss": float(val_loss), "model": model}
            best["val_accuracy"] = float(np.mean(val_p.argmax(1) == labels[val_idx]))
    assert best is not None
    c, model = best["C"], best.pop("model")

    held_out_recalls = {}
    for name in HELD_OUT_CLASSES:
        label = CLASS_NAMES.index(name)
        held = (labels == label) & ~main_source
        keep = np.setdiff1d(train_idx, np.flatnonzero(held))
        probabilities = _predict(_fit(features, labels, c, keep, debias, main, augmented), features[held])
        held_out_recalls[name] = float(np.mean(probabilities.argmax(1) == label))
        predicted = np.bincount(probabilities.argmax(1), minlength=len(CLASS_NAMES))
        held_out_recalls[f"{name}_predicted_as"] = dict(zip(CLASS_NAMES, predicted.tolist(), strict=True))
        held_out_recalls[f"{name}_n"] = int(held.sum())
    best["source_holdout"] = held_out_recalls
    best["source_holdout_mean_recall"] = float(np.mean([held_out_recalls[name] for name in HELD_OUT_CLASSES]))

    test_p = _predict(model, test_features)
    best["test_accuracy"] = float(np.mean(test_p.argmax(1) == test_labels))
    best["test_confusion"] = confusion_matrix(test_labels, test_p.argmax(1), labels=range(len(CLASS_NAMES))).tolist()
    best["test_glioma_recall"] = float(np.mean(test_p.argmax(1)[test_labels == 0] == 0))
    best["seconds"] = round(time.perf_counter() - started, 1)
    return best


def _markdown(rows: list[dict], command: str) -> str:
    lines = [
        "| variant | C (by val loss) | val loss | val acc | hold-out meningioma recall (n) | "
        "hold-out pituitary recall (n) | test acc | test glioma recall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        held = row["source_holdout"]
        lines.append(
            f"| {row['variant']} | {row['C']:g} | {row['val_loss']:.3f} | {row['val_accuracy']:.2%} | "
            f"{held['meningioma']:.2f} ({held['meningioma_n']}) | {held['pituitary']:.2f} ({held['pituitary_n']}) | "
            f"{row['test_accuracy']:.2%} | {row['test_glioma_recall']:.2f} |"
        )
    if len(rows) >= 4:
        # After the fact: which Training-only signal ranks the variants as Testing's glioma recall does?
        glioma = [row["test_glioma_recall"] for row in rows]
        by_holdout = spearmanr([row["source_holdout"]["meningioma"] for row in rows], glioma).statistic
        by_val = spearmanr([-row["val_loss"] for row in rows], glioma).statistic
        lines += [
            "",
            f"Rank correlation (Spearman, {len(rows)} variants) with Testing's glioma recall: hold-out meningioma "
            f"recall {by_holdout:+.2f}, validation (lower loss is better) {by_val:+.2f}.",
        ]
    lines += ["", produced_by(command)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="BACKBONE:SIZE:INTENSITY[:styleB|POOLpool|multilevel][:swapV][:augV][:debiasK]",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="Keep each variant's features here (npz).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    use_weights_dir(args)
    command = "python benchmarks/source_holdout.py " + " ".join(
        [f"--data {args.data}"]
        + ([f"--weights-dir {args.weights_dir}"] if args.weights_dir else [])
        + [f"--variant {variant}" for variant in args.variant]
        + ([f"--out {args.out}"] if args.out != DEFAULT_OUT else [])
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variant:
        rows.append(_probe(variant, args.data, args.cache_dir))
        args.out.write_text(_markdown(rows, command), encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
        print(_markdown(rows, command).splitlines()[len(rows) + 1], flush=True)
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
