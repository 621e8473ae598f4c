"""Near inputs for the input guard: other modalities and body parts as header-less PNG exports, and brain MRIs
unlike the training slices.

Nothing here is downloaded. Images of other modalities are rendered from documented physics, because no
installed package ships CT, radiographs or MR of other body parts outside pydicom's test files (which are kept
out of the guard's development on purpose):

- **CT** is a map of CT numbers (Hounsfield units) shown through a display window, ``grey = (HU - level) / width
  + 0.5``: air -1000, fat -100, CSF 5-10, white matter 25-30, grey matter 35-45, muscle and liver 50-65, bone
  400-1800 HU. The head phantom follows Shepp and Logan's design (an ellipse of skull around the brain, with
  ventricles and smaller ellipses) with those tissues' CT numbers, a scalp, sulci, a falx, a head rest and
  quantum noise of 3-7 HU; the body phantoms are cross-sections of the abdomen and the chest drawn the same way.
  The head CTs "from MR outlines" are segmentation-based pseudo-CTs (as PET/MR attenuation maps are made): the
  head of a brain MR slice split by depth into scalp, skull and brain, each given its CT number, the brain's
  texture kept within 20 HU.
- **Radiographs** are line integrals of linear attenuation at 50 keV (water 0.23/cm, bone 0.80/cm, lung
  0.06/cm) through
  3D ellipsoid phantoms of the chest and the skull, computed exactly per ray, with quantum noise, shown
  inverted as radiographs are (bone white, the unattenuated background black).
- **MR of other regions** (axial abdomen, sagittal knee) are spin-echo signals ``PD (1 - exp(-TR/T1))
  exp(-TE/T2)`` of tissue maps with published 1.5 T relaxation times, a smooth coil-sensitivity field and
  Rician noise, at T1 (TR 500 ms, TE 15 ms) or T2 (TR 4000 ms, TE 90 ms) weighting.

Brain MRIs unlike the training slices must not be called "not an MRI": they are the validation slices with
plausible changes of contrast, windowing, skull stripping, resolution and noise, and brain MRIs from other
sources that packages ship (matplotlib's sagittal head MRI ``s1045.ima``, nibabel's EPI volume
``example4d.nii.gz``).
"""

from __future__ import annotations

import gzip
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

Grid = tuple[np.ndarray, np.ndarray]

NEAR_OOD_KINDS = {
    "ct_head_brain_window": "head CT phantom (skull, scalp, grey and white matter, sulci, ventricles, falx), "
    "brain window (W 80-150, L 35-50)",
    "ct_head_bone_window": "the same phantom in a bone window (W 1500-3000, L 300-600)",
    "ct_head_from_mr": "pseudo-CT of validation brain MR slices' heads (scalp, skull, brain by depth), brain window",
    "ct_abdomen": "abdominal CT phantom (fat, muscle, liver, spleen, kidneys, vertebra, aorta, bowel, table), "
    "soft-tissue window (W 400, L 40)",
    "ct_chest_lung_window": "chest CT phantom (lungs with vessels, mediastinum, ribs, spine, table), lung window",
    "xray_chest": "chest radiograph: line integrals through an ellipsoid torso (lungs, heart, spine, ribs, "
    "clavicles), inverted",
    "xray_skull": "lateral skull radiograph: line integrals through an ellipsoid skull shell, face and spine",
    "mr_abdomen": "axial abdominal MR (T1 or T2 spin echo) of the abdomen phantom's tissues",
    "mr_knee": "sagittal knee MR (T1 or T2 spin echo): femur, tibia, patella, cartilage, muscle, fat",
}
NEAR_MRI_KINDS = {
    "brain_mr_contrast": "validation slices with gamma 0.6-1.6 and contrast 0.7-1.3",
    "brain_mr_window": "validation slices windowed to other percentiles of the head (saturated or washed out)",
    "brain_mr_skull_stripped": "validation slices with the outer 8-14% of the head (scalp, skull) removed",
    "brain_mr_low_res": "validation slices at a third to a half of their resolution, with noise",
    "brain_mr_other_source": "brain MRIs shipped by packages: matplotlib's s1045.ima, nibabel's example4d.nii.gz",
}

# Relaxation at 1.5 T (PD relative, T1 ms, T2 ms): Bottomley et al. 1984, Stanisz et al. 2005, de Bazelaire 2004.
TISSUE_MR = {
    "air": (0.0, 1000.0, 1.0),
    "fat": (0.9, 260.0, 85.0),
    "muscle": (0.75, 870.0, 47.0),
    "liver": (0.7, 490.0, 43.0),
    "spleen": (0.8, 780.0, 62.0),
    "kidney": (0.8, 650.0, 58.0),
    "fluid": (1.0, 2500.0, 1400.0),
    "marrow": (0.85, 365.0, 75.0),
    "cortical_bone": (0.05, 1000.0, 1.0),
    "cartilage": (0.75, 1000.0, 40.0),
    "meniscus": (0.4, 1000.0, 10.0),
    "vessel": (0.0, 1000.0, 1.0),  # flowing blood: a flow void in spin echo
}
T1_WEIGHTED, T2_WEIGHTED = (500.0, 15.0), (4000.0, 90.0)
# Linear attenuation at 50 keV, per cm (NIST XCOM: water, cortical bone; lung at a quarter of water's density).
WATER_MU, BONE_MU, LUNG_MU = 0.23, 0.80, 0.06


def grid(size: int) -> Grid:
    """``(x, y)`` in [-1, 1], x to the right and y downwards."""
    axis = np.linspace(-1.0, 1.0, size)
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def ellipse(xy: Grid, centre: tuple[float, float], axes: tuple[float, float], angle: float = 0.0) -> np.ndarray:
    """The elliptical radius of every pixel (< 1 inside the ellipse)."""
    x, y = xy[0] - centre[0], xy[1] - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = x * cos + y * sin, -x * sin + y * cos
    return np.sqrt((u / axes[0]) ** 2 + (v / axes[1]) ** 2)


def smooth_field(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma)
    return field / max(float(field.std()), 1e-9)


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """A CT display window: CT numbers to uint8 grey."""
    return (np.clip((hu - level) / width + 0.5, 0.0, 1.0) * 255).astype(np.uint8)


def ct_noise(hu: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Partial-volume blur and correlated quantum noise of ``sigma`` HU."""
    noise = ndimage.gaussian_filter(rng.normal(0.0, sigma * 1.6, hu.shape), 0.7)
    return ndimage.gaussian_filter(hu, 0.8) + noise


# --- head CT ------------------------------------------------------------------------------------------------


def _head_radius(xy: Grid, rng: np.random.Generator) -> tuple[np.ndarray, Grid, float]:
    """A head's elliptical radius with a slightly irregular outline, its rotated coordinates and its angle."""
    centre = tuple(rng.uniform(-0.05, 0.05, 2))
    angle = float(rng.uniform(-0.2, 0.2))
    axes = (float(rng.uniform(0.6, 0.72)), float(rng.uniform(0.78, 0.9)))
    radius = ellipse(xy, centre, axes, angle)
    theta = np.arctan2(xy[1] - centre[1], xy[0] - centre[0])
    for harmonic in (2, 3, 4):
        radius = radius * (1 + rng.uniform(0.0, 0.025) * np.cos(harmonic * theta + rng.uniform(0, 2 * math.pi)))
    x, y = xy[0] - centre[0], xy[1] - centre[1]
    cos, sin = math.cos(angle), math.sin(angle)
    return radius, (x * cos + y * sin, -x * sin + y * cos), angle


def head_ct_hu(rng: np.random.Generator, size: int) -> np.ndarray:
    """CT numbers of an axial head slice: scalp, skull (cortical bone and diploe), brain with sulci, ventricles."""
    xy = grid(size)
    radius, (u, v), _ = _head_radius(xy, rng)
    scalp, skull = rng.uniform(0.03, 0.05), rng.uniform(0.05, 0.08)
    inner = 1 - scalp - skull
    hu = np.full((size, size), -1000.0)
    hu[radius < 1] = rng.uniform(20, 50)
    hu[(radius < 1) & (radius > 1 - scalp * 0.4)] = -90.0  # subcutaneous fat
    bone = (radius < 1 - scalp) & (radius >= inner)
    hu[bone] = rng.uniform(1200, 1800)
    hu[bone & (np.abs(radius - (inner + skull / 2)) < skull / 5)] = rng.uniform(500, 800)  # diploe
    brain = radius < inner
    grey_matter, white_matter = rng.uniform(36, 44), rng.uniform(24, 30)
    field = smooth_field(rng, size, size / 40)
    hu[brain] = grey_matter
    hu[brain & (radius + 0.08 * field < inner * rng.uniform(0.65, 0.8))] = white_matter
    sulci = brain & (radius > inner * 0.7) & (np.abs(smooth_field(rng, size, size / 60)) < 0.15)
    hu[sulci | (brain & (radius > inner - 0.015))] = rng.uniform(4, 12)
    if rng.random() < 0.7:  # lateral ventricles
        for side in (-1, 1):
            shape = ellipse((u, v), (side * 0.1, -0.05), (0.06, rng.uniform(0.15, 0.3)), side * 0.25)
            hu[brain & (shape < 1)] = rng.uniform(4, 10)
    if rng.random() < 0.7:  # falx cerebri, often calcified
        hu[brain & (np.abs(u) < 0.006) & (np.abs(v) > 0.3)] = rng.uniform(60, 150)
    if rng.random() < 0.3:  # a haemorrhage or an infarct
        spot = ellipse((u, v), tuple(rng.uniform(-0.35, 0.35, 2)), tuple(rng.uniform(0.05, 0.15, 2)))
        hu[brain & (spot < 1)] = rng.choice([rng.uniform(60, 80), rng.uniform(10, 18)])
    if rng.random() < 0.5:  # the head rest under the head
        rest = ellipse(xy, (0.0, -0.1), (1.0, 1.02))
        hu[(rest > 1) & (rest < 1.03) & (xy[1] > 0.45)] = rng.uniform(50, 250)
    return ct_noise(hu, rng, rng.uniform(3, 7))


BRAIN_WINDOWS = ((40.0, 80.0), (40.0, 100.0), (35.0, 120.0), (50.0, 150.0))
BONE_WINDOWS = ((500.0, 2000.0), (300.0, 1500.0), (600.0, 3000.0))


def _pick(rng: np.random.Generator, options: tuple[tuple[float, float], ...]) -> tuple[float, float]:
    return options[int(rng.integers(len(options)))]


def head_ct(rng: np.random.Generator, size: int, bone_window: bool) -> np.ndarray:
    return window(head_ct_hu(rng, size), *_pick(rng, BONE_WINDOWS if bone_window else BRAIN_WINDOWS))


def head_mask(grey: np.ndarray) -> np.ndarray:
    """The head of a grey slice: above a tenth of its 99th percentile, largest region, holes filled."""
    foreground = grey > 0.1 * max(float(np.percentile(grey, 99)), 1.0)
    labels, count = ndimage.label(ndimage.binary_opening(foreground, iterations=2))
    if count == 0:
        return foreground
    largest = labels == 1 + int(np.argmax(ndimage.sum(foreground, labels, range(1, count + 1))))
    return ndimage.binary_fill_holes(ndimage.binary_closing(largest, iterations=3))


def pseudo_ct_from_mr(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A brain-window pseudo-CT of a brain MR slice: scalp, skull and brain by depth inside its head mask.

    The brain keeps the MR slice's texture compressed into grey and white matter's 20 HU, so the anatomy is a
    real head's while the contrast is CT's.
    """
    mask = head_mask(grey)
    depth = ndimage.distance_transform_edt(mask)
    radius = math.sqrt(max(float(mask.sum()), 1.0) / math.pi)
    scalp, skull = radius * rng.uniform(0.03, 0.05), radius * rng.uniform(0.05, 0.08)
    brain = depth > scalp + skull
    inside = grey[brain].astype(float)
    low, high = np.percentile(inside, (2, 98)) if inside.size else (0.0, 1.0)
    texture = np.clip((grey.astype(float) - low) / max(high - low, 1.0), 0, 1)
    hu = np.full(grey.shape, -1000.0)
    hu[mask] = rng.uniform(20, 50)
    hu[mask & (depth < scalp * 0.4)] = -90.0
    hu[mask & (depth >= scalp) & ~brain] = rng.uniform(1200, 1800)
    hu[brain] = (rng.uniform(8, 22) + 25 * texture)[brain]
    return window(ct_noise(hu, rng, rng.uniform(3, 7)), *_pick(rng, BRAIN_WINDOWS))


# --- body CT ------------------------------------------------------------------------------------------------


def _body(xy: Grid, rng: np.random.Generator, hu: np.ndarray) -> tuple[np.ndarray, float]:
    """Fill a trunk cross-section (skin fat and muscle wall) into ``hu``; its elliptical radius and its base."""
    half_width, half_depth = rng.uniform(0.82, 0.95), rng.uniform(0.52, 0.68)
    radius = ellipse(xy, (0.0, -0.05), (half_width, half_depth))
    fat = rng.uniform(0.06, 0.15)
    hu[radius < 1] = -100.0
    hu[radius < 1 - fat] = rng.uniform(45, 55)
    hu[radius < 1 - fat - 0.06] = -90.0  # visceral fat between the organs
    base = -0.05 + half_depth
    table = (xy[1] > base + 0.04) & (xy[1] < base + 0.09) & (np.abs(xy[0]) < 0.95)
    hu[table] = rng.uniform(50, 300)
    return radius, base


def _spine(xy: Grid, hu: np.ndarray, centre: tuple[float, float], rng: np.random.Generator) -> None:
    body = ellipse(xy, centre, (0.1, 0.09))
    hu[body < 1] = rng.uniform(700, 1000)  # cortical rim
    hu[body < 0.8] = rng.uniform(150, 300)  # cancellous bone
    hu[ellipse(xy, (centre[0], centre[1] + 0.15), (0.035, 0.06)) < 1] = rng.uniform(600, 900)
    for side in (-1, 1):  # paraspinal muscles
        hu[ellipse(xy, (centre[0] + side * 0.17, centre[1] + 0.1), (0.09, 0.08)) < 1] = 50.0


def abdomen_hu(rng: np.random.Generator, size: int) -> np.ndarray:
    """CT numbers of an axial abdominal slice at the kidneys, with or without contrast enhancement."""
    xy, hu = grid(size), np.full((size, size), -1000.0)
    _body(xy, rng, hu)
    enhanced = rng.random() < 0.5
    hu[ellipse(xy, (-0.4, -0.12), (0.36, 0.3), 0.3) < 1] = rng.uniform(100, 130) if enhanced else rng.uniform(55, 65)
    hu[ellipse(xy, (0.5, 0.05), (0.15, 0.22), -0.4) < 1] = rng.uniform(90, 120) if enhanced else 48.0
    for side in (-1, 1):
        kidney = ellipse(xy, (side * 0.3, 0.2), (0.1, 0.14), side * 0.3)
        hu[kidney < 1] = rng.uniform(150, 200) if enhanced else 32.0
        hu[kidney < 0.4] = -80.0  # renal sinus fat
    _spine(xy, hu, (0.0, 0.28), rng)
    hu[ellipse(xy, (0.06, 0.12), (0.045, 0.045)) < 1] = 250.0 if enhanced else 40.0  # aorta
    hu[ellipse(xy, (-0.1, 0.1), (0.05, 0.04)) < 1] = 150.0 if enhanced else 38.0  # vena cava
    for _ in range(int(rng.integers(4, 9))):  # bowel loops: gas, fluid or oral contrast
        loop = ellipse(xy, (rng.uniform(-0.3, 0.4), rng.uniform(-0.45, 0.0)), tuple(rng.uniform(0.05, 0.11, 2)))
        content = float(rng.choice([-1000.0, 15.0, 300.0]))
        hu[loop < 1] = 45.0
        hu[loop < 0.75] = content
    return ct_noise(hu, rng, rng.uniform(5, 12))


def chest_hu(rng: np.random.Generator, size: int) -> np.ndarray:
    """CT numbers of an axial chest slice: lungs with vessels, mediastinum, heart, ribs, spine."""
    xy, hu = grid(size), np.full((size, size), -1000.0)
    radius, _ = _body(xy, rng, hu)
    lungs = np.zeros((size, size), dtype=bool)
    for side in (-1, 1):
        lungs |= ellipse(xy, (side * 0.42, -0.05), (0.33, 0.45), side * 0.1) < 1
    hu[lungs] = rng.uniform(-880, -820)
    vessels = lungs & (smooth_field(rng, size, size / 120) > 2.0)
    hu[vessels] = 40.0
    hu[ellipse(xy, (0.08, -0.15), (0.28, 0.25), 0.4) < 1] = rng.uniform(35, 45)  # heart
    hu[ellipse(xy, (0.02, 0.1), (0.05, 0.05)) < 1] = 45.0  # descending aorta
    _spine(xy, hu, (0.0, 0.38), rng)
    for angle in np.linspace(0.3, math.pi - 0.3, 9):  # rib sections along the chest wall
        for side in (-1, 1):
            centre = (side * 0.8 * math.cos(angle) * 1.05, -0.05 + 0.52 * math.sin(angle) * side * -1)
            hu[(ellipse(xy, centre, (0.035, 0.025)) < 1) & (radius < 1)] = rng.uniform(600, 900)
    return ct_noise(hu, rng, rng.uniform(8, 15))


# --- radiographs --------------------------------------------------------------------------------------------

# (centre x, centre y, half-axes a, b, c (cm / 10), in-plane angle, attenuation added inside, per cm)
Ellipsoid = tuple[float, float, float, float, float, float, float]


def projection(xy: Grid, ellipsoids: list[Ellipsoid], depth_cm: float = 10.0) -> np.ndarray:
    """Line integrals of attenuation along the beam (through the page) through nested ellipsoids, exactly."""
    total = np.zeros_like(xy[0])
    for cx, cy, a, b, c, angle, mu in ellipsoids:
        radius = ellipse(xy, (cx, cy), (a, b), angle)
        total += mu * 2 * c * depth_cm * np.sqrt(np.clip(1 - radius**2, 0, None))
    return total


def radiograph(path_integral: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Detector counts with quantum noise, shown inverted (bone white) through a log and a film-like curve."""
    photons = rng.uniform(2e3, 2e4)
    counts = rng.poisson(photons * np.exp(-path_integral)).astype(float)
    density = -np.log(np.clip(counts, 1.0, None) / photons)
    density = ndimage.gaussian_filter(density, 0.8)
    scaled = density / max(float(np.percentile(density, 99.5)), 1e-6)
    curve = 1 / (1 + np.exp(-rng.uniform(4, 7) * (scaled - rng.uniform(0.45, 0.6))))
    curve = (curve - curve.min()) / max(float(np.ptp(curve)), 1e-9)
    return (curve * 255).astype(np.uint8)


def chest_xray(rng: np.random.Generator, size: int) -> np.ndarray:
    """A PA chest radiograph: torso, lungs, heart, spine, ribs, clavicles and shoulders."""
    jitter = rng.uniform(0.9, 1.1)
    parts: list[Ellipsoid] = [(0.0, 0.1, 0.85 * jitter, 1.1, 1.0, 0.0, WATER_MU)]
    for side in (-1, 1):
        parts.append((side * 0.34, 0.0, 0.3 * jitter, 0.6, 0.7, side * 0.08, LUNG_MU - WATER_MU))
        parts.append((side * 0.8, -0.72, 0.14, 0.16, 0.15, 0.0, BONE_MU - WATER_MU))  # humeral heads
        parts.append((side * 0.35, -0.62, 0.35, 0.035, 0.04, side * -0.25, BONE_MU - WATER_MU))  # clavicles
        for rib in range(9):
            y = -0.5 + rib * 0.12
            parts.append((side * 0.36, y, 0.38, 0.025, 0.05, side * 0.35, BONE_MU - WATER_MU))
    parts.append((0.1, 0.3, 0.3, 0.24, 0.4, 0.3, WATER_MU - LUNG_MU))  # heart over the lungs
    parts.append((0.0, 0.0, 0.055, 1.2, 0.06, 0.0, BONE_MU - WATER_MU))  # spine
    return radiograph(projection(grid(size), parts, depth_cm=rng.uniform(8, 12)), rng)


def skull_xray(rng: np.random.Generator, size: int) -> np.ndarray:
    """A lateral skull radiograph: a bone shell (bright where the beam grazes it), face bones, cervical spine."""
    a, b = rng.uniform(0.62, 0.72), rng.uniform(0.5, 0.58)
    shell = rng.uniform(0.035, 0.05)
    parts: list[Ellipsoid] = [
        (0.0, -0.1, a + 0.03, b + 0.03, 0.6, 0.0, WATER_MU),
        (0.0, -0.1, a, b, 0.55, 0.0, BONE_MU - WATER_MU),
        (0.0, -0.1, a - shell, b - shell, 0.55 - shell, 0.0, WATER_MU - BONE_MU),
        (-0.45, 0.45, 0.25, 0.22, 0.4, 0.3, WATER_MU + 0.1),  # face and maxilla
        (-0.35, 0.65, 0.3, 0.06, 0.3, -0.3, BONE_MU - WATER_MU),  # mandible
        (0.25, 0.8, 0.08, 0.4, 0.08, 0.1, BONE_MU - WATER_MU),  # cervical spine
        (0.25, 0.75, 0.3, 0.5, 0.3, 0.0, WATER_MU),  # neck
    ]
    return radiograph(projection(grid(size), parts, depth_cm=rng.uniform(12, 16)), rng)


# --- MR of other regions ------------------------------------------------------------------------------------


def spin_echo(labels: dict[str, np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """Spin-echo magnitude of tissue masks (later masks win), coil field, Rician noise, scaled to uint8."""
    repetition, echo = T1_WEIGHTED if rng.random() < 0.5 else T2_WEIGHTED
    signal = np.zeros((size, size))
    for tissue, mask in labels.items():
        density, t1, t2 = TISSUE_MR[tissue.split(":")[0]]
        signal[mask] = density * (1 - math.exp(-repetition / t1)) * math.exp(-echo / t2)
    signal = ndimage.gaussian_filter(signal, 0.7) * (1 + 0.25 * smooth_field(rng, size, size / 4))
    sigma = rng.uniform(0.01, 0.03) * float(signal.max())
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
    return (np.clip(noisy / max(float(np.percentile(noisy, 99.7)), 1e-9), 0, 1) * 255).astype(np.uint8)


def abdomen_mr(rng: np.random.Generator, size: int) -> np.ndarray:
    """An axial abdominal MR slice: the abdomen phantom's organs as MR tissues."""
    xy = grid(size)
    radius = ellipse(xy, (0.0, -0.05), (rng.uniform(0.82, 0.95), rng.uniform(0.52, 0.68)))
    fat = rng.uniform(0.06, 0.15)
    labels = {"fat": radius < 1, "muscle": radius < 1 - fat, "fat:visceral": radius < 1 - fat - 0.06}
    labels["liver"] = ellipse(xy, (-0.4, -0.12), (0.36, 0.3), 0.3) < 1
    labels["spleen"] = ellipse(xy, (0.5, 0.05), (0.15, 0.22), -0.4) < 1
    labels["kidney"] = np.logical_or(*[ellipse(xy, (s * 0.3, 0.2), (0.1, 0.14), s * 0.3) < 1 for s in (-1, 1)])
    labels["cortical_bone"] = ellipse(xy, (0.0, 0.28), (0.1, 0.09)) < 1
    labels["marrow"] = ellipse(xy, (0.0, 0.28), (0.08, 0.07)) < 1
    labels["muscle:psoas"] = np.logical_or(*[ellipse(xy, (s * 0.17, 0.38), (0.09, 0.08)) < 1 for s in (-1, 1)])
    labels["vessel"] = ellipse(xy, (0.06, 0.12), (0.045, 0.045)) < 1
    labels["fluid"] = ellipse(xy, (-0.2, -0.05), (0.06, 0.05)) < 1  # gallbladder
    return spin_echo(labels, rng, size)


def knee_mr(rng: np.random.Generator, size: int) -> np.ndarray:
    """A sagittal knee MR slice: the leg fills the field top to bottom; femur, tibia, patella, joint."""
    x, y = grid(size)
    shift = rng.uniform(-0.08, 0.08)
    leg = np.abs(x - shift) < rng.uniform(0.6, 0.8)
    joint = rng.uniform(-0.05, 0.1)
    femur_shaft = (np.abs(x - shift) < 0.22) & (y < joint - 0.2)
    condyle = ellipse((x, y), (shift, joint - 0.2), (0.34, 0.2)) < 1
    femur = femur_shaft | condyle
    tibia = ((np.abs(x - shift) < 0.36) & (y > joint + 0.04) & (y < joint + 0.25)) | (
        (np.abs(x - shift) < 0.2) & (y >= joint + 0.25)
    )
    labels = {"fat": leg, "muscle": leg & (np.abs(x - shift) < rng.uniform(0.45, 0.55))}
    labels["fluid"] = ellipse((x, y), (shift - 0.3, joint - 0.35), (0.08, 0.2)) < 1  # suprapatellar recess
    labels["cartilage"] = (ellipse((x, y), (shift, joint - 0.2), (0.37, 0.235)) < 1) | (
        (np.abs(x - shift) < 0.36) & (y > joint + 0.01) & (y < joint + 0.06)
    )
    for bone in (femur, tibia, ellipse((x, y), (shift - 0.46, joint - 0.2), (0.07, 0.16)) < 1):
        labels[f"cortical_bone:{len(labels)}"] = bone
        labels[f"marrow:{len(labels)}"] = ndimage.binary_erosion(bone, iterations=max(1, size // 100))
    labels["meniscus"] = (np.abs(np.abs(x - shift) - 0.3) < 0.06) & (np.abs(y - joint - 0.02) < 0.03)
    labels["vessel"] = ellipse((x, y), (shift + 0.42, joint), (0.025, 0.6)) < 1  # popliteal artery
    return spin_echo(labels, rng, size)


# --- brain MRIs unlike the training slices ------------------------------------------------------------------


def change_contrast(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    scaled = (grey.astype(float) / 255) ** rng.uniform(0.6, 1.6) * rng.uniform(0.7, 1.3)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def change_window(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    inside = grey[head_mask(grey)].astype(float)
    low = np.percentile(inside, rng.uniform(0, 20)) if inside.size else 0.0
    high = np.percentile(inside, rng.uniform(80, 99.9)) if inside.size else 255.0
    return (np.clip((grey.astype(float) - low) / max(high - low, 1.0), 0, 1) * 255).astype(np.uint8)


def strip_skull(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = head_mask(grey)
    depth = ndimage.distance_transform_edt(mask)
    radius = math.sqrt(max(float(mask.sum()), 1.0) / math.pi)
    return np.where(depth > radius * rng.uniform(0.08, 0.14), grey, 0).astype(np.uint8)


def lower_resolution(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = grey.shape
    factor = rng.uniform(2, 3)
    small = Image.fromarray(grey).resize((max(8, int(width / factor)), max(8, int(height / factor))), Image.BILINEAR)
    coarse = np.asarray(small.resize((width, height), Image.BILINEAR), dtype=float)
    noisy = np.hypot(coarse + rng.normal(0, rng.uniform(2, 6), coarse.shape), rng.normal(0, 2, coarse.shape))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    array = array.astype(float)
    return ((array - array.min()) / max(float(np.ptp(array)), 1e-9) * 255).astype(np.uint8)


def other_source_brain_mris() -> list[np.ndarray]:
    """Brain MR slices that installed packages ship: matplotlib's s1045.ima (sagittal, 256x256, 16-bit) and
    the axial slices of nibabel's example4d.nii.gz (EPI, 128x96) that hold enough brain; [] for a missing one."""
    from matplotlib import cbook

    slices = []
    with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)) as raw:
        slices.append(_to_uint8(np.frombuffer(raw.read(), np.uint16).reshape(256, 256)))
    try:
        import nibabel
    except ImportError:
        return slices
    volume = np.asanyarray(nibabel.load(Path(nibabel.__file__).parent / "tests/data/example4d.nii.gz").dataobj)[..., 0]
    for index in range(volume.shape[2]):
        axial = np.rot90(volume[:, :, index])
        if (axial > 0.2 * volume.max()).mean() > 0.15:
            slices.append(_to_uint8(axial))
    return slices


Renderer = Callable[[np.random.Generator, int], np.ndarray]
RENDERERS: dict[str, Renderer] = {
    "ct_head_brain_window": lambda rng, s: head_ct(rng, s, bone_window=False),
    "ct_head_bone_window": lambda rng, s: head_ct(rng, s, bone_window=True),
    "ct_abdomen": lambda rng, s: window(abdomen_hu(rng, s), 40.0, 400.0),
    "ct_chest_lung_window": lambda rng, s: window(chest_hu(rng, s), -600.0, 1500.0),
    "xray_chest": chest_xray,
    "xray_skull": skull_xray,
    "mr_abdomen": abdomen_mr,
    "mr_knee": knee_mr,
}
FROM_MR: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "ct_head_from_mr": pseudo_ct_from_mr,
    "brain_mr_contrast": change_contrast,
    "brain_mr_window": change_window,
    "brain_mr_skull_stripped": strip_skull,
    "brain_mr_low_res": lower_resolution,
}


def encode_grey(grey: np.ndarray, jpeg: bool = False) -> bytes:
    """A header-less export: 8-bit grey PNG (or JPEG at quality 90)."""
    buffer = io.BytesIO()
    Image.fromarray(grey, "L").save(buffer, format="JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))
    return buffer.getvalue()


def render_kind(kind: str, count: int, rng: np.random.Generator, size: int, sources: list[np.ndarray]) -> list[bytes]:
    """``count`` encoded images of ``kind`` (a key of :data:`NEAR_OOD_KINDS` or :data:`NEAR_MRI_KINDS`); the
    kinds made from brain MR slices take them from ``sources`` (grey uint8 arrays), in turn. Every third image is
    a JPEG, as exports often are."""
    if kind == "brain_mr_other_source":
        shipped = other_source_brain_mris()
        return [encode_grey(shipped[i % len(shipped)], jpeg=i % 3 == 2) for i in range(min(count, len(shipped)))]
    if kind in FROM_MR:
        if not sources:
            return []
        images = [FROM_MR[kind](sources[i % len(sources)], rng) for i in range(count)]
    else:
        images = [RENDERERS[kind](rng, size) for _ in range(count)]
    return [encode_grey(image, jpeg=i % 3 == 2) for i, image in enumerate(images)]
