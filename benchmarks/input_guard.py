"""Input guard benchmark: how often a bundle's guard flags inputs that are not brain MRIs, and brain MRIs.

The non-MRI set is built from what ships with the installed packages or is generated here, nothing is
downloaded: ``DEFAULT_PER_KIND`` images of each kind in :data:`NON_MRI_KINDS` (12 kinds, 240 images), each
encoded as a PNG or JPEG file and decoded by braintumor's own decoder, as an upload would be. The brain MRIs
are the bundle's validation split (rebuilt from Training with ``training_split``), the official Testing split
and its deduplicated subset (the data audit's clean manifest: ``--audit``, default ``audits/<data root name>``;
skipped with a note when there is none).

The near set (``--near-per-kind``, default 20 of each kind) is what :mod:`lib.near_ood` renders: other
modalities and body parts as header-less grey PNG and JPEG exports (head CT in brain and bone windows, pseudo-CT
of validation slices' heads, abdominal and chest CT, chest and skull radiographs, abdominal and knee MR), which
should be flagged, and brain MRIs unlike the training slices (validation slices with other contrast, windowing,
skull stripping or resolution, and the brain MRIs matplotlib and nibabel ship), which should rarely be flagged and
never be called "not an MRI slice". CT and radiographs are rendered from CT numbers and attenuation coefficients,
MR from spin-echo relaxation times: the module's docstring says how.

    python benchmarks/input_guard.py runs/lite2-probe/bundle --data ../shared/data/brain-tumor-mri
    python benchmarks/input_guard.py runs/lite2-probe/bundle --quick  # a smoke run into runs/, never the results

Measured: the share flagged (``ood_score > 1``) of every set and of each non-MRI and near kind, the AUROC of
``ood_score`` (non-MRI or near kind against each MRI set), the reasons given, the images that look like a head CT
(the bone-ring rule: the Sartaj data's Training and Testing splits hold head CT slices), the guard's cost per
image, how long fitting the guard takes beside the bundle's training time, the guard refitted without the
bone-ring rule beside it, and, for every registered detector, a guard refitted on the same model outputs
(computed once). Thresholds and detectors are judged on validation and the non-MRI set only; Testing is
reported, never used to choose.
"""

from __future__ import annotations

import io
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import torch
from common import (
    command_line,
    data_parser,
    latencies_ms,
    markdown_header,
    markdown_row,
    option,
    produced_by,
    timed,
    write_json,
)
from lib.near_ood import NEAR_MRI_KINDS, NEAR_OOD_KINDS, render_kind
from matplotlib import cbook
from PIL import Image, ImageDraw, ImageFont
from sklearn.datasets import load_digits, load_sample_images
from sklearn.metrics import roc_auc_score

from braintumor.guard.defaults import BONE_RING_RULE

DEFAULT_OUT = Path("benchmarks/results/input_guard.md")
# --quick: a smoke run with a few images per kind, written where the committed results cannot be overwritten.
QUICK_OUT = Path("runs/input_guard_quick.md")
QUICK_PER_KIND = 4
DEFAULT_PER_KIND = 20
DEFAULT_SIZE = 256
TIMING_IMAGES = 256
QUANTILES = (0.95, 0.98, 0.99, 0.995, 0.999)
# Targets of the guard's issue: share of non-MRI inputs flagged, share of brain MRIs flagged.
TARGET_NON_MRI = 0.99
TARGET_TESTING = 0.05
TARGET_VALIDATION = 0.02
TARGET_MS_PER_IMAGE = 1.0

NON_MRI_KINDS = {
    "photo": "random crops, rotations and flips of scikit-learn's sample photos (china.jpg, flower.jpg), JPEG",
    "photo_grey": "the same crops in greyscale, JPEG",
    "colour_noise": "uniform or Gaussian RGB noise, some blurred, PNG",
    "grey_noise_8bit": "uniform or Gaussian grey noise, some blurred, 8-bit PNG",
    "grey_noise_16bit": "uniform or Gaussian grey noise over a random part of the 16-bit range, 16-bit PNG",
    "gradient": "linear and radial gradients, grey or between two random colours, PNG",
    "text_on_white": "dark rendered text (matplotlib's DejaVu Sans) on a white page, PNG",
    "text_on_black": "light rendered text on a black page, PNG",
    "blank": "white, black and mid-grey pages, half of them with a little noise (sigma 1-4), PNG",
    "matplotlib_image": "matplotlib's sample images grace_hopper.jpg, logo2.png, Minduka_Present_Blue_Pack.png, "
    "as shipped then cropped and flipped",
    "dem_grey": "matplotlib's elevation arrays (jacksboro_fault_dem, topobathy, bivariate_normal) as grey images",
    "digits": "scikit-learn's 8x8 handwritten digits upsampled (nearest or bilinear), PNG",
}
WORDS = [
    "patient", "report", "scan", "date", "radiology", "department", "findings", "impression", "normal", "the",
    "of", "and", "to", "in", "is", "for", "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "2024", "0.5",
    "mm", "slice", "axial", "contrast",
]  # fmt: skip


class NonMriImage(NamedTuple):
    """One generated input: its kind (a key of :data:`NON_MRI_KINDS`), a name and the encoded file's bytes."""

    kind: str
    name: str
    data: bytes


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _random_view(image: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """A random square-ish crop (40-100% of the short side), rotated, maybe flipped, resized to ``size``."""
    width, height = image.size
    side = int(min(width, height) * rng.uniform(0.4, 1.0))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    view = image.crop((left, top, left + side, top + side))
    angle = float(rng.choice([0.0, 90.0, 180.0, 270.0])) + float(rng.uniform(-30, 30))
    fill = (0, 0, 0) if view.mode == "RGB" else 0
    view = view.rotate(angle, resample=Image.BILINEAR, fillcolor=fill)
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return view.resize((size, int(size * rng.uniform(0.7, 1.0))), Image.BILINEAR)


def _photos(count: int, rng: np.random.Generator, size: int, grey: bool) -> list[bytes]:
    photos = [Image.fromarray(array) for array in load_sample_images().images]
    views = [_random_view(photos[i % len(photos)], rng, size) for i in range(count)]
    return [_encode(view.convert("L") if grey else view, "JPEG") for view in views]


def _noise_array(rng: np.random.Generator, shape: tuple[int, ...], high: float) -> np.ndarray:
    if rng.random() < 0.5:
        array = rng.uniform(0, high, shape)
    else:
        array = rng.normal(high / 2, high * rng.uniform(0.05, 0.3), shape)
    if rng.random() < 0.3:  # smoothed noise: blobs rather than pixels
        for axis in (0, 1):
            array = (array + np.roll(array, 1, axis) + np.roll(array, -1, axis)) / 3
    return np.clip(array, 0, high)


def _colour_noise(count: int, rng: np.random.Generator, size: int) -> list[bytes]:
    arrays = [_noise_array(rng, (size, size, 3), 255) for _ in range(count)]
    return [_encode(Image.fromarray(a.astype(np.uint8), "RGB")) for a in arrays]


def _grey_noise(count: int, rng: np.random.Generator, size: int) -> list[bytes]:
    arrays = [_noise_array(rng, (size, size), 255) for _ in range(count)]
    return [_encode(Image.fromarray(a.astype(np.uint8), "L")) for a in arrays]


def _grey_noise_16bit(count: int, rng: np.random.Generator, size: int) -> list[bytes]:
    files = []
    for _ in range(count):
        high = float(rng.choice([1023, 4095, 65535]))  # 10-, 12- and 16-bit scanners' ranges
        array = _noise_array(rng, (size, size), high).astype(np.uint16)
        files.append(_encode(Image.fromarray(array)))  # mode I;16
    return files


def _gradient(rng: np.random.Generator, size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        ramp = np.hypot(x - cx, y - cy)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    if rng.random() < 0.5:
        return Image.fromarray((ramp * 255).astype(np.uint8), "L")
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    rgb = start + ramp[..., None] * (end - start)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _font_path() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def _text_page(rng: np.random.Generator, size: int, on_black: bool) -> Image.Image:
    page = Image.new("L", (size, size), 0 if on_black else 255)
    draw = ImageDraw.Draw(page)
    font_size = max(6, int(size * rng.uniform(0.04, 0.12)))
    font = ImageFont.truetype(str(_font_path()), font_size)
    ink = int(rng.uniform(200, 255)) if on_black else int(rng.uniform(0, 60))
    y = int(rng.uniform(0, 2 * font_size))
    while y < size - font_size:
        line = " ".join(rng.choice(WORDS, int(rng.integers(2, 8))))
        draw.text((int(rng.uniform(0, font_size)), y), line, fill=ink, font=font)
        y += int(font_size * rng.uniform(1.2, 2.0))
    return page


def _blank(index: int, rng: np.random.Generator, size: int) -> Image.Image:
    level = (255, 0, 128)[index % 3]
    sigma = 0.0 if (index // 3) % 2 == 0 else rng.uniform(1, 4)
    array = np.clip(level + rng.normal(0, sigma, (size, size)) if sigma else np.full((size, size), level), 0, 255)
    return Image.fromarray(array.astype(np.uint8), "L")


def _matplotlib_images(count: int, rng: np.random.Generator, size: int) -> list[bytes]:
    names = ("grace_hopper.jpg", "logo2.png", "Minduka_Present_Blue_Pack.png")
    files = []
    for index in range(count):
        path = cbook.get_sample_data(names[index % len(names)], asfileobj=False)
        if index < len(names):  # each file once as shipped (decoded by braintumor: RGBA over black)
            files.append(Path(path).read_bytes())
            continue
        image = Image.open(path).convert("RGB")
        files.append(_encode(_random_view(image, rng, size)))
    return files


def _elevation_arrays() -> list[np.ndarray]:
    dem = cbook.get_sample_data("jacksboro_fault_dem.npz")
    topo = cbook.get_sample_data("topobathy.npz")
    bivariate = np.load(cbook.get_sample_data("axes_grid/bivariate_normal.npy", asfileobj=False))
    return [np.asarray(dem["elevation"], float), np.asarray(topo["topo"], float), np.asarray(bivariate, float)]


def _dem_grey(count: int, rng: np.random.Generator, size: int) -> list[bytes]:
    arrays, files = _elevation_arrays(), []
    for index in range(count):
        array = arrays[index % len(arrays)]
        grey = (array - array.min()) / max(float(np.ptp(array)), 1e-9) * 255
        image = Image.fromarray(grey.astype(np.uint8), "L").resize((size, size), Image.BILINEAR)
        files.append(_encode(image if index < len(arrays) else _random_view(image, rng, size)))
    return files


def _digits(count: int, rng: np.random.Generator, size: int) -> list[bytes]:
    digits = load_digits().images
    files = []
    for index in rng.choice(len(digits), count, replace=False):
        image = Image.fromarray((digits[index] * (255 / 16)).astype(np.uint8), "L")
        resample = Image.NEAREST if rng.random() < 0.5 else Image.BILINEAR
        files.append(_encode(image.resize((size, size), resample)))
    return files


Builder = Callable[[int, np.random.Generator, int], list[bytes]]
BUILDERS: dict[str, Builder] = {
    "photo": lambda n, rng, s: _photos(n, rng, s, grey=False),
    "photo_grey": lambda n, rng, s: _photos(n, rng, s, grey=True),
    "colour_noise": _colour_noise,
    "grey_noise_8bit": _grey_noise,
    "grey_noise_16bit": _grey_noise_16bit,
    "gradient": lambda n, rng, s: [_encode(_gradient(rng, s)) for _ in range(n)],
    "text_on_white": lambda n, rng, s: [_encode(_text_page(rng, s, on_black=False)) for _ in range(n)],
    "text_on_black": lambda n, rng, s: [_encode(_text_page(rng, s, on_black=True)) for _ in range(n)],
    "blank": lambda n, rng, s: [_encode(_blank(i, rng, s)) for i in range(n)],
    "matplotlib_image": _matplotlib_images,
    "dem_grey": _dem_grey,
    "digits": _digits,
}


def build_non_mri_set(per_kind: int = DEFAULT_PER_KIND, size: int = DEFAULT_SIZE, seed: int = 0) -> list[NonMriImage]:
    """``per_kind`` encoded images of every kind of :data:`NON_MRI_KINDS`, at most ``size`` pixels a side
    (the shipped matplotlib files keep their own size), seeded: the same set on every run."""
    images = []
    for offset, kind in enumerate(NON_MRI_KINDS):
        files = BUILDERS[kind](per_kind, np.random.default_rng(seed + offset), size)
        images += [NonMriImage(kind, f"{kind}-{index:03d}", data) for index, data in enumerate(files)]
    return images


# --- near inputs: other modalities and body parts, and brain MRIs unlike the training slices ---------------------

DEFAULT_NEAR_PER_KIND = 20
# Anatomy of the kinds made from brain MR slices: this many validation files, spread over the split (seeded).
NEAR_SOURCES = 60


def near_sources(paths: list[Path], count: int = NEAR_SOURCES, seed: int = 0) -> list[np.ndarray]:
    """Grey arrays of ``count`` of the files at ``paths`` (seeded choice), as the files store them."""
    from braintumor.data.images import decode_image_bytes, read_file_bytes

    chosen = np.random.default_rng(seed).choice(len(paths), min(count, len(paths)), replace=False)
    return [np.asarray(decode_image_bytes(read_file_bytes(paths[i]), paths[i]).convert("L")) for i in sorted(chosen)]


def build_near_set(
    sources: list[np.ndarray], per_kind: int = DEFAULT_NEAR_PER_KIND, size: int = DEFAULT_SIZE, seed: int = 0
) -> list[NonMriImage]:
    """``per_kind`` encoded grey exports of every kind in :data:`NEAR_OOD_KINDS` (other modalities and body
    parts: should be flagged) and :data:`NEAR_MRI_KINDS` (brain MRIs unlike the training slices: should not be
    called "not an MRI"), seeded. ``sources`` are the brain MR slices the kinds made from MR start from; the brain
    MRIs shipped by packages are as many as there are (at most ``per_kind``)."""
    images = []
    for offset, kind in enumerate([*NEAR_OOD_KINDS, *NEAR_MRI_KINDS]):
        files = render_kind(kind, per_kind, np.random.default_rng(seed + 100 + offset), size, sources)
        images += [NonMriImage(kind, f"{kind}-{index:03d}", data) for index, data in enumerate(files)]
    return images


# --- measuring ---------------------------------------------------------------------------------------------------


def _decode_non_mri(items: list[NonMriImage], prep: Any) -> torch.Tensor:
    from braintumor.data.images import decode_image_bytes
    from braintumor.data.preprocessing import resize_to_uint8_tensor

    return torch.stack([resize_to_uint8_tensor(decode_image_bytes(item.data, item.name), prep) for item in items])


def _subset(inputs: Any, index: torch.Tensor) -> Any:
    from braintumor.guard import GuardInputs

    return GuardInputs(inputs.features[index], inputs.logits[index], inputs.evidence[index])


class Sets(NamedTuple):
    """The images and model outputs (computed once) of every set, and what was left out and why."""

    images: dict[str, torch.Tensor]
    outputs: dict[str, Any]
    train_labels: torch.Tensor
    kinds: np.ndarray
    seconds: dict[str, float]
    note: str = ""
    near_kinds: np.ndarray | None = None
    testing_paths: tuple[Path, ...] = ()


def _clean_testing_index(
    test_paths: list[Path], data_root: Path, audit: Path | None
) -> tuple[torch.Tensor | None, str]:
    from braintumor.auditing.audit_file import default_audit_dir, load_clean_test_paths

    clean = load_clean_test_paths(data_root, audit)
    if clean is None:
        where = audit or default_audit_dir(data_root)
        return None, f"Deduplicated Testing skipped: no audit with a near-copy search at {where}."
    wanted = {path.resolve() for path in clean}
    keep = [i for i, path in enumerate(test_paths) if Path(path).resolve() in wanted]
    return torch.tensor(keep, dtype=torch.long), ""


def _in_memory(image_set: Any) -> torch.Tensor:
    """The set's uint8 images as one tensor (a streaming set is decoded here, batch by batch)."""
    return image_set.images if image_set.images is not None else torch.cat(list(image_set.batches(256)))


def build_sets(
    bundle: Any, data_root: Path, per_kind: int, seed: int, audit: Path | None = None, near_per_kind: int = 0
) -> Sets:
    """Decode validation, Testing, the non-MRI set and (``near_per_kind`` > 0) the near set made from the
    validation files; run the model once over them and the training split."""
    from braintumor.data.dataset import load_images
    from braintumor.data.layout import discover_split
    from braintumor.data.preprocessing import eval_transform
    from braintumor.guard import model_outputs
    from braintumor.workflows.guard import training_split

    prep, seconds = bundle.preprocessing, {}
    (train_set, val_set), seconds["decode_training_s"], _ = timed(
        lambda: training_split(bundle, data_root, show_progress=False), 2
    )
    test_set = load_images(discover_split(data_root, "Testing"), prep, show_progress=False)
    non_mri = build_non_mri_set(per_kind, seed=seed)
    images = {"train": _in_memory(train_set), "validation": _in_memory(val_set), "testing": _in_memory(test_set)}
    images["non_mri"] = _decode_non_mri(non_mri, prep)
    near = build_near_set(near_sources(val_set.paths, seed=seed), near_per_kind, seed=seed) if near_per_kind else []
    if near:
        images["near"] = _decode_non_mri(near, prep)
    normalise, outputs = eval_transform(prep), {}
    for name, batch in images.items():
        outputs[name], seconds[f"model_{name}_s"], _ = timed(
            lambda b=batch: model_outputs(bundle.model, normalise, b), 2
        )
        print(f"model outputs of {name}: {len(batch)} images in {seconds[f'model_{name}_s']} s", flush=True)
    clean_index, note = _clean_testing_index(test_set.paths, data_root, audit)
    if clean_index is not None:
        outputs["testing_dedup"] = _subset(outputs["testing"], clean_index)
    kinds = np.array([item.kind for item in non_mri])
    near_kinds = np.array([item.kind for item in near]) if near else None
    return Sets(images, outputs, train_set.labels, kinds, seconds, note, near_kinds, tuple(test_set.paths))


MRI_SETS = ("validation", "testing", "testing_dedup")


def _auroc(non_mri: torch.Tensor, mri: torch.Tensor) -> float:
    """AUROC of a score separating non-MRI (positive) from brain MRI: 1 means every non-MRI scores higher."""
    labels = np.r_[np.ones(len(non_mri)), np.zeros(len(mri))]
    return float(roc_auc_score(labels, np.r_[non_mri.numpy(), mri.numpy()]))


def _set_row(scores: Any) -> dict[str, Any]:
    return {
        "n": len(scores.ood_score),
        "flagged": float(scores.flagged.float().mean()),
        "flagged_by_feature": float((scores.feature > 1).float().mean()),
        "flagged_by_evidence": float((scores.evidence > 1).float().mean()),
    }


def _aurocs(non_mri: torch.Tensor, scored: dict[str, Any], attribute: str = "ood_score") -> dict[str, float]:
    return {name: _auroc(non_mri, getattr(scored[name], attribute)) for name in MRI_SETS if name in scored}


def _kind_scores(scores: Any, index: torch.Tensor) -> Any:
    fields = ("ood_score", "feature", "evidence", "reason_index", "bone_ring")
    return type(scores)(*(getattr(scores, f)[index] if len(getattr(scores, f)) else getattr(scores, f) for f in fields))


def _reason_counts(scores: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in scores.reasons:
        if reason is not None:
            counts[reason.code] = counts.get(reason.code, 0) + 1
    return dict(sorted(counts.items()))


def _ct_like_count(scores: Any) -> int:
    return _reason_counts(scores).get("ct_like", 0)


def score_near(scored: dict[str, Any], near: Any, kinds: np.ndarray) -> dict[str, Any]:
    """Per near kind: flag rates (all, per component), reasons, how many say "not an MRI slice", and the AUROC
    of ood_score against validation and Testing."""
    rows = {}
    for kind in dict.fromkeys(kinds.tolist()):
        part = _kind_scores(near, torch.from_numpy(np.flatnonzero(kinds == kind)))
        reasons = _reason_counts(part)
        rows[kind] = {
            **_set_row(part),
            "flagged_by_bone_ring": float((part.bone_ring > 1).float().mean()) if len(part.bone_ring) else 0.0,
            "group": "near_ood" if kind in NEAR_OOD_KINDS else "brain_mri",
            "reasons": reasons,
            "said_not_an_mri": sum(n for code, n in reasons.items() if code.startswith("not_mri")),
            "auroc": {name: _auroc(part.ood_score, scored[name].ood_score) for name in ("validation", "testing")},
        }
    return rows


def score_sets(guard: Any, sets: Sets) -> dict[str, Any]:
    """Flag rates of every set, AUROCs of ood_score (and of each component), the per-kind breakdown and, with a
    near set, its per-kind breakdown; images flagged as looking like a head CT are counted apart."""
    names = (*MRI_SETS, "non_mri", "near")
    scored = {name: guard.score(sets.outputs[name]) for name in names if name in sets.outputs}
    non_mri = scored["non_mri"]
    per_kind = {}
    for kind in NON_MRI_KINDS:
        index = torch.from_numpy(np.flatnonzero(sets.kinds == kind))
        kind_scores = _kind_scores(non_mri, index)
        per_kind[kind] = {
            **_set_row(kind_scores),
            "min_ood_score": float(kind_scores.ood_score.min()),
            "auroc": _aurocs(kind_scores.ood_score, scored),
        }
    set_rows = {name: _set_row(scores) for name, scores in scored.items() if name != "near"}
    for name in MRI_SETS:
        if name in scored:
            ct_like = _ct_like_count(scored[name])
            row = set_rows[name]
            row["ct_like"] = ct_like
            row["flagged_other_than_ct_like"] = (row["flagged"] * row["n"] - ct_like) / max(row["n"] - ct_like, 1)
            row["reasons"] = _reason_counts(scored[name])
    result = {
        "sets": set_rows,
        "auroc": _aurocs(non_mri.ood_score, scored),
        "auroc_feature": _aurocs(non_mri.feature, scored, "feature"),
        "auroc_evidence": _aurocs(non_mri.evidence, scored, "evidence"),
        "per_kind": per_kind,
    }
    if "near" in scored and sets.near_kinds is not None:
        result["near"] = score_near(scored, scored["near"], sets.near_kinds)
    return result


def near_before_after(sets: Sets, detector: str, quantile: float) -> dict[str, Any]:
    """The guard refitted on the same model outputs without and with the bone-ring rule: per near kind and for
    validation and Testing, the share flagged and the AUROC against validation."""
    from braintumor.guard import fit_guard
    from braintumor.guard.defaults import BONE_RING_RULE

    rows = {}
    for label, rule in (("without_bone_ring", None), ("with_bone_ring", BONE_RING_RULE)):
        outputs = sets.outputs
        guard = fit_guard(
            outputs["train"],
            sets.train_labels,
            outputs["validation"],
            detector=detector,
            quantile=quantile,
            bone_ring=rule,
        )
        result = score_sets(guard, sets)
        rows[label] = {
            "validation_flagged": result["sets"]["validation"]["flagged"],
            "validation_flagged_held_out": held_out_validation_rate(sets, detector, quantile, bone_ring=rule),
            "testing_flagged": result["sets"]["testing"]["flagged"],
            "testing_ct_like": result["sets"]["testing"]["ct_like"],
            "near": {k: {"flagged": r["flagged"], "auroc": r["auroc"]} for k, r in result.get("near", {}).items()},
        }
    return rows


def _best_ms(function: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls, in ms: other jobs on a shared machine only ever add time."""
    return min(latencies_ms(function, repeats))


GUARD_CHUNKS = {"single image (serving)": 1, "predict batch (32)": 32, f"one batch of {TIMING_IMAGES}": TIMING_IMAGES}


def _guard_alone_ms(guard: Any, images: torch.Tensor, inputs: Any, chunk: int) -> dict[str, float]:
    """Milliseconds per image of the guard's own work (image evidence, then detector and thresholds) over
    ``images`` in batches of ``chunk``, as the predictor or the service runs it; fastest of repeated passes."""
    from braintumor.guard.evidence import image_evidence

    starts = range(0, len(images), chunk)
    parts = [_subset(inputs, torch.arange(i, min(i + chunk, len(images)))) for i in starts]
    repeats = 3 if chunk == 1 else 7
    evidence = _best_ms(lambda: [image_evidence(images[i : i + chunk]) for i in starts], repeats) / len(images)
    score = _best_ms(lambda: [guard.score(part) for part in parts], repeats) / len(images)
    return {"evidence_ms": evidence, "score_ms": score, "total_ms": evidence + score}


PREDICT_CHUNK = 32


def _paired_predict_ms(bundle: Any, images: torch.Tensor) -> dict[str, Any]:
    """``run_uint8`` with and without the guard on the same chunks of ``images``, in alternating order so both see
    the same machine load: per mode the median over chunks of (wall, CPU) ms per image, and of the paired
    differences."""
    from braintumor.inference.predictor import Predictor

    predictors = {"with": Predictor(bundle), "without": Predictor(bundle)}
    predictors["without"].guard = None
    for predictor in predictors.values():
        predictor.run_uint8(images[:8])  # warm-up: first-call allocations are not the guard's cost
    samples: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
    for index, start in enumerate(range(0, len(images), PREDICT_CHUNK)):
        chunk = images[start : start + PREDICT_CHUNK]
        for mode in ("without", "with") if index % 2 == 0 else ("with", "without"):
            _, wall, cpu = timed(lambda m=mode, c=chunk: predictors[m].run_uint8(c))
            samples[mode].append((wall * 1000 / len(chunk), cpu * 1000 / len(chunk)))

    def median(values: list[tuple[float, float]]) -> list[float]:
        return [statistics.median(v[i] for v in values) for i in (0, 1)]

    differences = [(w[0] - o[0], w[1] - o[1]) for w, o in zip(samples["with"], samples["without"], strict=True)]
    return {
        "predict_without_guard_ms_per_image": median(samples["without"]),
        "predict_with_guard_ms_per_image": median(samples["with"]),
        "predict_guard_extra_ms_per_image": median(differences),
        "predict_samples_ms_per_image": samples,
    }


def time_guard(bundle: Any, sets: Sets, count: int = TIMING_IMAGES) -> dict[str, Any]:
    """The guard's cost per image: its own work alone (evidence and scoring), and predict with against without it."""
    images = sets.images["validation"][:count].contiguous()
    inputs = _subset(sets.outputs["validation"], torch.arange(len(images)))
    load_before, threads = os.getloadavg()[0], torch.get_num_threads()
    alone = {}
    for count_threads in sorted({1, threads}):  # small ops: one thread avoids OpenMP stalls on a busy machine
        torch.set_num_threads(count_threads)
        for name, chunk in GUARD_CHUNKS.items():
            alone[f"{name}, {count_threads} thread(s)"] = _guard_alone_ms(bundle.guard, images, inputs, chunk)
    torch.set_num_threads(threads)
    return {
        "images": len(images),
        "torch_threads": threads,
        "guard_alone_ms_per_image": alone,
        **_paired_predict_ms(bundle, images),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def time_fit(bundle: Any, sets: Sets) -> dict[str, Any]:
    """How long fitting the default guard takes (image evidence and fit_guard; the model outputs are reused as in
    training, where only the head runs on cached features), beside the bundle's recorded training time."""
    from braintumor.guard import fit_guard
    from braintumor.guard.evidence import image_evidence

    _, evidence_s, _ = timed(lambda: (image_evidence(sets.images["train"]), image_evidence(sets.images["validation"])))
    _, fit_s, _ = timed(lambda: fit_guard(sets.outputs["train"], sets.train_labels, sets.outputs["validation"]))
    record = bundle.config.training
    training_s = record.duration_s if record is not None else None
    total = evidence_s + fit_s
    return {
        "evidence_s": round(evidence_s, 3),
        "fit_guard_s": round(fit_s, 3),
        "guard_fit_s": round(total, 3),
        "training_duration_s": training_s,
        "training_timing": dict(record.timing) if record is not None and record.timing else None,
        "share_of_training": round(total / training_s, 4) if training_s else None,
    }


def _short(result: dict[str, Any]) -> dict[str, Any]:
    """A refitted guard's summary: the flag rates and AUROCs the comparison tables show."""
    sets = result["sets"]
    return {
        "validation_flagged": sets["validation"]["flagged"],
        "non_mri_flagged": sets["non_mri"]["flagged"],
        "testing_flagged": sets["testing"]["flagged"],
        "auroc_validation": result["auroc"]["validation"],
        "auroc_feature_validation": result["auroc_feature"]["validation"],
        "kinds_below_target": sorted(k for k, r in result["per_kind"].items() if r["flagged"] < TARGET_NON_MRI),
        "per_kind_flagged": {k: r["flagged"] for k, r in result["per_kind"].items()},
    }


def held_out_validation_rate(
    sets: Sets, detector: str, quantile: float, seed: int = 0, bone_ring: tuple[float, ...] | None = BONE_RING_RULE
) -> float:
    """Share of validation images flagged by thresholds set on the other half of validation (2-fold, seeded):
    the validation flag rate without the in-sample bias of thresholds set on the same images."""
    from braintumor.guard import fit_guard

    val = sets.outputs["validation"]
    order = torch.randperm(len(val.features), generator=torch.Generator().manual_seed(seed))
    halves, flagged = (order[: len(order) // 2], order[len(order) // 2 :]), 0
    for fit_on, held_out in (halves, halves[::-1]):
        guard = fit_guard(
            sets.outputs["train"],
            sets.train_labels,
            _subset(val, fit_on),
            detector=detector,
            quantile=quantile,
            bone_ring=bone_ring,
        )
        flagged += int(guard.score(_subset(val, held_out)).flagged.sum())
    return flagged / len(order)


def compare_detectors(sets: Sets) -> list[dict[str, Any]]:
    """Every registered detector refitted on the same model outputs (default quantile)."""
    from braintumor.guard import fit_guard
    from braintumor.guard.detectors import detector_names

    rows = []
    for name in detector_names():
        guard, fit_s, _ = timed(
            lambda n=name: fit_guard(sets.outputs["train"], sets.train_labels, sets.outputs["validation"], detector=n)
        )
        held_out = held_out_validation_rate(sets, name, guard.spec.quantile)
        rows.append({"detector": name, "fit_s": round(fit_s, 3), **_short(score_sets(guard, sets))})
        rows[-1]["validation_flagged_held_out"] = held_out
        print(f"detector {name}: {rows[-1]['validation_flagged']:.2%} of validation flagged", flush=True)
    return rows


def sweep_quantiles(sets: Sets, detector: str) -> list[dict[str, Any]]:
    """The default detector at other threshold quantiles: validation and non-MRI flag rates only (no Testing)."""
    from braintumor.guard import fit_guard

    rows = []
    for quantile in QUANTILES:
        guard = fit_guard(
            sets.outputs["train"], sets.train_labels, sets.outputs["validation"], detector=detector, quantile=quantile
        )
        short = _short(score_sets(guard, sets))
        rows.append({"quantile": quantile, **{k: v for k, v in short.items() if not k.startswith("testing")}})
        rows[-1]["validation_flagged_held_out"] = held_out_validation_rate(sets, detector, quantile)
    return rows


# --- reporting ---------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _auc(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


SET_TITLES = {
    "validation": "validation (from Training)",
    "testing": "Testing (reported only)",
    "testing_dedup": "Testing, deduplicated (reported only)",
    "non_mri": "non-MRI (all kinds)",
}


def _sets_table(result: dict[str, Any]) -> list[str]:
    columns = ["set", "images", "flagged", "by feature", "by evidence", "looks like a head CT"]
    columns += ["flagged, head CTs aside", "AUROC non-MRI vs set"]
    lines = markdown_header(columns, "lrrrrrrr")
    for name, row in result["sets"].items():
        cells = [SET_TITLES[name], str(row["n"]), _pct(row["flagged"]), _pct(row["flagged_by_feature"])]
        cells += [_pct(row["flagged_by_evidence"])]
        cells += [str(row["ct_like"]), _pct(row["flagged_other_than_ct_like"])] if "ct_like" in row else ["—", "—"]
        lines.append(markdown_row([*cells, _auc(result["auroc"].get(name))]))
    lines.append("")
    for name, row in result["sets"].items():
        if "reasons" in row:
            lines.append(f"- Reasons given, {SET_TITLES[name]}: {_reasons_text(row['reasons'])}.")
    return lines


def _reasons_text(reasons: dict[str, int]) -> str:
    return ", ".join(f"{code} {count}" for code, count in reasons.items()) or "none flagged"


def _near_table(near: dict[str, Any], group: str) -> list[str]:
    columns = ["kind", "images", "flagged", "by feature", "by evidence", "by bone ring", "AUROC vs val"]
    columns += ["AUROC vs Testing", "said not an MRI", "reasons"]
    lines = markdown_header(columns, "lrrrrrrrrl")
    for kind, row in near.items():
        if row["group"] != group:
            continue
        cells = [kind, str(row["n"]), _pct(row["flagged"]), _pct(row["flagged_by_feature"])]
        cells += [_pct(row["flagged_by_evidence"]), _pct(row["flagged_by_bone_ring"])]
        cells += [_auc(row["auroc"]["validation"]), _auc(row["auroc"]["testing"]), str(row["said_not_an_mri"])]
        lines.append(markdown_row([*cells, _reasons_text(row["reasons"])]))
    return lines


def _before_after_table(rows: dict[str, Any]) -> list[str]:
    before, after = rows["without_bone_ring"], rows["with_bone_ring"]
    columns = ["kind", "flagged without", "flagged with", "AUROC vs val without", "AUROC vs val with"]
    lines = markdown_header(columns, "lrrrr")
    for kind in after["near"]:
        old, new = before["near"][kind], after["near"][kind]
        cells = [kind, _pct(old["flagged"]), _pct(new["flagged"])]
        lines.append(markdown_row([*cells, _auc(old["auroc"]["validation"]), _auc(new["auroc"]["validation"])]))
    for name in ("validation_flagged", "validation_flagged_held_out", "testing_flagged"):
        lines.append(markdown_row([name.replace("_", " "), _pct(before[name]), _pct(after[name]), "", ""]))
    counts = [str(before["testing_ct_like"]), str(after["testing_ct_like"])]
    lines.append(markdown_row(["Testing images flagged as a head CT", *counts, "", ""]))
    return lines


def near_markdown(report: dict[str, Any]) -> list[str]:
    """The near section: per kind of other modality or body part, and of brain MRI unlike the training slices."""
    near = report["guard"].get("near")
    if not near:
        return []
    lines = [
        "Near inputs: other modalities and body parts as header-less grey exports (should be flagged), rendered "
        "as `benchmarks/lib/near_ood.py` describes; AUROC of ood_score against validation and Testing "
        '(Testing reported only). "said not an MRI": flagged with a reason that says "not an MRI slice".',
        "",
        *_near_table(near, "near_ood"),
        "",
        'Brain MRIs unlike the training slices (should rarely be flagged, never called "not an MRI slice"):',
        "",
        *_near_table(near, "brain_mri"),
        "",
    ]
    if report.get("near_before_after"):
        lines += [
            "The same model outputs with the guard refitted without the bone-ring rule (the guard before it) and "
            "with it (the default):",
            "",
            *_before_after_table(report["near_before_after"]),
            "",
        ]
    return lines


def _kinds_table(result: dict[str, Any]) -> list[str]:
    columns = ["non-MRI kind", "images", "flagged", "by feature", "by evidence", "min ood_score", "AUROC vs val"]
    columns += ["AUROC vs Testing", "AUROC vs dedup Testing"]
    lines = markdown_header(columns, "lrrrrrrrr")
    for kind, row in result["per_kind"].items():
        cells = [kind, str(row["n"]), _pct(row["flagged"]), _pct(row["flagged_by_feature"])]
        cells += [_pct(row["flagged_by_evidence"]), f"{row['min_ood_score']:.2f}"]
        cells += [_auc(row["auroc"].get(name)) for name in MRI_SETS]
        lines.append(markdown_row(cells))
    return lines


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it is met. The Testing target is on its MRI slices: the
    split holds head CT slices (filed under tumour classes), which the guard should and does refuse; the share of
    all of Testing is given beside it, and ``ct_like_sheet`` shows those images for a reader to check by eye."""
    sets, timing = report["guard"]["sets"], report.get("timing")
    non_mri = report["guard"]["sets"]["non_mri"]["flagged"]
    rows = [
        {"target": f"non-MRI flagged >= {TARGET_NON_MRI:.0%}", "value": non_mri, "met": non_mri >= TARGET_NON_MRI},
        {
            "target": f"validation flagged <= {TARGET_VALIDATION:.0%}",
            "value": sets["validation"]["flagged"],
            "met": sets["validation"]["flagged"] <= TARGET_VALIDATION,
        },
        {
            "target": f"Testing MRI slices flagged <= {TARGET_TESTING:.0%} (head CT slices aside; all of Testing: "
            f"{sets['testing']['flagged']:.1%})",
            "value": sets["testing"]["flagged_other_than_ct_like"],
            "met": sets["testing"]["flagged_other_than_ct_like"] <= TARGET_TESTING,
        },
    ]
    if timing is not None:
        cost = timing["guard_alone_ms_per_image"][f"predict batch ({PREDICT_CHUNK}), 1 thread(s)"]["total_ms"]
        rows.append(
            {
                "target": f"guard <= {TARGET_MS_PER_IMAGE:g} ms per image (predict batches, 1 thread)",
                "value": cost,
                "met": cost <= TARGET_MS_PER_IMAGE,
            }
        )
    return rows


def _targets_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = markdown_header(["target", "measured", "met"], "lrl")
    for row in rows:
        value = f"{row['value']:.3f} ms" if "ms" in row["target"] else f"{row['value']:.1%}"
        lines.append(markdown_row([row["target"], value, "yes" if row["met"] else "no"]))
    return lines


def ct_like_sheet(guard: Any, sets: Sets, out: Path) -> Path | None:
    """A contact sheet of the Testing and validation images the guard says look like a head CT, with their file
    names, so that anyone can check that they are CT slices and not MRIs; None when there is none."""
    import matplotlib.pyplot as plt

    shown: list[tuple[torch.Tensor, str]] = []
    for name in ("testing", "validation"):
        reasons = guard.score(sets.outputs[name]).reasons
        paths = sets.testing_paths if name == "testing" else ()
        for index, reason in enumerate(reasons):
            if reason is not None and reason.code == "ct_like":
                label = (
                    f"{Path(paths[index]).parent.name}/{Path(paths[index]).name}" if paths else f"validation {index}"
                )
                shown.append((sets.images[name][index], label))
    if not shown:
        return None
    columns = 8
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, label) in zip(axes.flat, shown, strict=False):
        axis.imshow(image.permute(1, 2, 0).numpy())
        axis.set_title(label, fontsize=5)
    figure.suptitle(f"{len(shown)} images the input guard refuses as looking like a head CT", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _timing_lines(timing: dict[str, Any], fit: dict[str, Any]) -> list[str]:
    lines = markdown_header(["measurement", "value"], "lr")
    for name, cost in timing["guard_alone_ms_per_image"].items():
        value = f"{cost['total_ms']:.3f} ms/image ({cost['evidence_ms']:.3f} evidence + {cost['score_ms']:.3f} scoring)"
        lines.append(markdown_row([f"guard alone, {name}", value]))
    for mode in ("without", "with"):
        wall, cpu = timing[f"predict_{mode}_guard_ms_per_image"]
        label = f"predict (run_uint8, median of {PREDICT_CHUNK}-image chunks) {mode} the guard: wall (CPU)"
        lines.append(markdown_row([label, f"{wall:.2f} ({cpu:.2f}) ms/image"]))
    wall, cpu = timing["predict_guard_extra_ms_per_image"]
    label = "the guard's extra cost in predict, median paired difference: wall (CPU)"
    lines.append(markdown_row([label, f"{wall:+.2f} ({cpu:+.2f}) ms/image"]))
    before, after = timing["load_average_1min"]
    lines.append(markdown_row(["machine load (1-min load average) before and after timing", f"{before} / {after}"]))
    share = fit["share_of_training"]
    lines.append(markdown_row(["guard fit (image evidence + fit_guard)", f"{fit['guard_fit_s']:.2f} s"]))
    lines.append(markdown_row(["bundle's training (config.json duration_s)", f"{fit['training_duration_s']} s"]))
    lines.append(markdown_row(["guard fit / training", "—" if share is None else f"{share:.2%}"]))
    return lines


def _detector_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = ["detector", "fit s", "validation flagged", "validation flagged, held out", "non-MRI flagged"]
    columns += ["AUROC vs val", "AUROC vs val (feature)", "Testing flagged (reported only)", "kinds below 99%"]
    lines = markdown_header(columns, "lrrrrrrrl")
    for row in rows:
        cells = [row["detector"], f"{row['fit_s']:.2f}", _pct(row["validation_flagged"])]
        cells += [_pct(row["validation_flagged_held_out"]), _pct(row["non_mri_flagged"])]
        cells += [_auc(row["auroc_validation"]), _auc(row["auroc_feature_validation"]), _pct(row["testing_flagged"])]
        lines.append(markdown_row([*cells, ", ".join(row["kinds_below_target"]) or "none"]))
    return lines


def _quantile_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = ["quantile", "validation flagged", "validation flagged, held out", "non-MRI flagged", "kinds below 99%"]
    lines = markdown_header(columns, "rrrrl")
    for row in rows:
        cells = [f"{row['quantile']:g}", _pct(row["validation_flagged"]), _pct(row["validation_flagged_held_out"])]
        cells.append(_pct(row["non_mri_flagged"]))
        lines.append(markdown_row([*cells, ", ".join(row["kinds_below_target"]) or "none"]))
    return lines


def markdown(report: dict[str, Any], command: str) -> str:
    """The results file: every table, the targets and the provenance line."""
    guard, spec = report["guard"], report["spec"]
    lines = [
        f"Input guard of `{report['bundle']}`: {spec['detector']} + image evidence, thresholds at the "
        f"{spec['quantile']:g} quantile of {spec['n_val']} validation images. Targets: non-MRI flagged "
        f">= {TARGET_NON_MRI:.0%}, brain MRIs flagged <= {TARGET_TESTING:.0%} of Testing and "
        f"<= {TARGET_VALIDATION:.0%} of validation, <= {TARGET_MS_PER_IMAGE:g} ms per image.",
        "",
        *_targets_lines(report.get("targets") or targets(report)),
        "",
        *_sets_table(guard),
        "",
        *(
            [f"The images judged to look like a head CT: `{report['ct_like_sheet']}`.", ""]
            if report.get("ct_like_sheet")
            else []
        ),
        *_kinds_table(guard),
        "",
        *near_markdown(report),
    ]
    if report.get("timing") is None:  # --quick: no timing, detectors or quantiles
        lines += [report["note"], ""] if report["note"] else []
        lines.append(produced_by(command))
        return "\n".join(lines) + "\n"
    lines += [
        *_timing_lines(report["timing"], report["fit"]),
        "",
        "Every registered detector refitted on the same model outputs (image evidence unchanged, quantile "
        f'{spec["quantile"]:g}); chosen on validation and the non-MRI set, Testing only reported. "validation '
        'flagged" is in-sample (thresholds set on those images); "held out": each half of validation judged by '
        "thresholds set on the other half (seeded 2-fold).",
        "",
        *_detector_table(report["detectors"]),
        "",
        f"The default detector ({spec['detector']}) at other quantiles, validation and non-MRI only:",
        "",
        *_quantile_table(report["quantiles"]),
        "",
    ]
    lines += [report["note"], ""] if report["note"] else []
    lines.append(produced_by(command))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("bundle", type=Path, help="A model bundle with an input guard.")
    parser.add_argument("--per-kind", type=int, default=DEFAULT_PER_KIND, help="Non-MRI images of each kind.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the non-MRI set.")
    parser.add_argument("--audit", type=Path, default=None, help="audit.json or its folder (default: audits/<root>).")
    parser.add_argument("--near-per-kind", type=int, default=DEFAULT_NEAR_PER_KIND, help="Near images of each kind.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_PER_KIND} images per kind, no timing, detector or quantile tables; writes {QUICK_OUT} unless "
        "--out names another file, never the committed results.",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"Results file (default {DEFAULT_OUT}).")
    args = parser.parse_args()
    if args.quick:
        if args.out is not None and args.out.resolve() == DEFAULT_OUT.resolve():
            parser.error(f"--quick never writes the committed results {DEFAULT_OUT}: name another --out")
        args.per_kind, args.near_per_kind = min(args.per_kind, QUICK_PER_KIND), min(args.near_per_kind, QUICK_PER_KIND)
    args.out = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    from braintumor.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if bundle.guard is None:
        parser.error(f"{args.bundle} has no input guard: add one with `braintumor guard {args.bundle} --data ROOT`")
    command = command_line(
        "input_guard.py",
        str(args.bundle),
        option("--data", args.data),
        option("--per-kind", args.per_kind, DEFAULT_PER_KIND),
        option("--seed", args.seed, 0),
        option("--audit", args.audit),
        option("--near-per-kind", args.near_per_kind, DEFAULT_NEAR_PER_KIND),
        option("--quick", args.quick, False),
        option("--out", args.out, QUICK_OUT if args.quick else DEFAULT_OUT),
    )
    torch.manual_seed(0)
    sets = build_sets(bundle, args.data, args.per_kind, args.seed, args.audit, args.near_per_kind)
    spec = bundle.guard.spec
    report = {
        "bundle": str(args.bundle),
        "command": command,
        "spec": spec.model_dump(mode="json"),
        "kinds": NON_MRI_KINDS,
        "near_kinds": {**NEAR_OOD_KINDS, **NEAR_MRI_KINDS},
        "guard": score_sets(bundle.guard, sets),
        "near_before_after": near_before_after(sets, spec.detector, spec.quantile) if args.near_per_kind else None,
        "timing": None if args.quick else time_guard(bundle, sets),
        "fit": None if args.quick else time_fit(bundle, sets),
        "detectors": None if args.quick else compare_detectors(sets),
        "quantiles": None if args.quick else sweep_quantiles(sets, spec.detector),
        "seconds": sets.seconds,
        "note": sets.note,
    }
    report["targets"] = targets(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet = ct_like_sheet(bundle.guard, sets, args.out.with_name(f"{args.out.stem}_ct_like.png"))
    report["ct_like_sheet"] = str(sheet) if sheet else None
    write_json(args.out.with_suffix(".json"), report)
    args.out.write_text(markdown(report, command), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
