"""The input guard benchmark's non-MRI and near sets: the documented kinds and counts, decodable, seeded, no
network; the near section's rows and the quick mode's output path."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from braintumor.data.images import decode_image_bytes
from tests.conftest import load_benchmark

benchmark = load_benchmark("input_guard")


def test_builder_makes_the_documented_number_of_each_kind() -> None:
    images = benchmark.build_non_mri_set(per_kind=2, size=32)
    assert Counter(image.kind for image in images) == dict.fromkeys(benchmark.NON_MRI_KINDS, 2)
    assert set(benchmark.BUILDERS) == set(benchmark.NON_MRI_KINDS)
    assert len({image.name for image in images}) == len(images)
    # The default set is the documented size: at least 200 images.
    assert len(benchmark.NON_MRI_KINDS) * benchmark.DEFAULT_PER_KIND >= 200


def test_every_image_decodes_and_small_sizes_stay_small() -> None:
    images = benchmark.build_non_mri_set(per_kind=4, size=32)
    for image in images:
        decoded = decode_image_bytes(image.data, image.name)
        assert decoded.mode == "RGB"
        if image.kind != "matplotlib_image":  # the shipped files are kept once at their own size
            assert max(decoded.size) <= 32, image.name


def test_set_is_seeded_and_has_16_bit_files_and_no_mri() -> None:
    first, again = benchmark.build_non_mri_set(per_kind=2, size=24), benchmark.build_non_mri_set(per_kind=2, size=24)
    assert [image.data for image in first] == [image.data for image in again]
    modes = {Image.open(io.BytesIO(image.data)).mode for image in first if image.kind == "grey_noise_16bit"}
    assert modes == {"I;16"}
    # matplotlib's s1045.ima is a brain MRI: it must never be in the non-MRI set.
    assert not any("s1045" in description for description in benchmark.NON_MRI_KINDS.values())


def _grey_sources(count: int = 3, size: int = 48) -> list[np.ndarray]:
    """Synthetic grey head slices (an ellipse with a brighter rim, a darker core) as near-set anatomy."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    radius = np.hypot(xx / 0.7, yy / 0.85)
    slices = []
    for index in range(count):
        grey = np.where(radius < 1, 90 + 20 * index, 0) + np.where((radius > 0.85) & (radius < 1), 60, 0)
        slices.append(grey.astype(np.uint8))
    return slices


def test_near_set_has_every_kind_decodes_and_is_seeded() -> None:
    near = benchmark.build_near_set(_grey_sources(), per_kind=2, size=48)
    kinds = Counter(image.kind for image in near)
    assert set(kinds) == set(benchmark.NEAR_OOD_KINDS) | set(benchmark.NEAR_MRI_KINDS)
    assert all(count == 2 for count in kinds.values())
    assert len({image.name for image in near}) == len(near)
    for image in near:
        assert decode_image_bytes(image.data, image.name).mode == "RGB"
    again = benchmark.build_near_set(_grey_sources(), per_kind=2, size=48)
    assert [image.data for image in near] == [image.data for image in again]


def test_rendered_modalities_follow_their_physics() -> None:
    from lib import near_ood

    rng = np.random.default_rng(0)
    hu = near_ood.head_ct_hu(rng, 96)
    assert hu.min() < -900 and hu.max() > 1000  # air and cortical bone
    brain = near_ood.window(hu, 40.0, 80.0)
    assert (brain == 255).mean() > 0.03 and (brain == 0).mean() > 0.2  # a saturated skull ring, black air
    bone = near_ood.window(hu, 500.0, 2000.0)
    assert np.median(bone[bone > 30]) < 120  # brain tissue is a flat dark grey in a bone window
    radiograph = near_ood.chest_xray(rng, 64)
    assert radiograph[32, 32] > radiograph[32, 20]  # the spine attenuates more than the lung beside it
    assert near_ood.spin_echo({"fat": np.ones((16, 16), bool)}, rng, 16).max() == 255


def test_near_rows_count_not_an_mri_reasons_and_auroc() -> None:
    from braintumor.guard.guard import GuardScores

    scores = GuardScores(
        torch.tensor([2.0, 0.5, 3.0, 0.2]),
        torch.tensor([2.0, 0.5, 0.1, 0.2]),
        torch.tensor([0.0, 0.0, 3.0, 0.0]),
        torch.tensor([7, -1, 0, -1]),
        torch.zeros(4),
    )
    validation = GuardScores(torch.tensor([0.1, 0.3]), torch.zeros(2), torch.zeros(2))
    kinds = np.array(["ct_head_brain_window", "ct_head_brain_window", "brain_mr_contrast", "brain_mr_contrast"])
    rows = benchmark.score_near({"validation": validation, "testing": validation}, scores, kinds)
    assert rows["ct_head_brain_window"]["flagged"] == 0.5 and rows["ct_head_brain_window"]["group"] == "near_ood"
    assert rows["ct_head_brain_window"]["reasons"] == {"unlike_training": 1}
    assert rows["brain_mr_contrast"]["said_not_an_mri"] == 1 and rows["brain_mr_contrast"]["group"] == "brain_mri"
    assert (
        rows["ct_head_brain_window"]["auroc"]["validation"] == 1.0
        and rows["brain_mr_contrast"]["auroc"]["testing"] == 0.75
    )
    lines = benchmark._near_table(rows, "near_ood")
    assert len(lines) == 3 and "unlike_training 1" in lines[-1]


def test_quick_mode_never_writes_the_committed_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["input_guard.py", "bundle", "--quick", "--out", str(benchmark.DEFAULT_OUT)])
    with pytest.raises(SystemExit):
        benchmark.main()
    assert benchmark.QUICK_OUT != benchmark.DEFAULT_OUT and benchmark.QUICK_OUT.parts[0] == "runs"


def test_quick_report_scores_every_set_and_writes_the_near_tables() -> None:
    from braintumor.guard import GuardInputs, fit_guard
    from braintumor.guard.evidence import image_evidence

    generator = torch.Generator().manual_seed(0)

    def outputs(count: int, shift: float, level: int) -> GuardInputs:
        features = torch.randn(count, 8, generator=generator) + shift
        images = torch.full((count, 3, 16, 16), level, dtype=torch.uint8)
        return GuardInputs(features, features[:, :4], image_evidence(images))

    kinds = np.array([kind for kind in benchmark.NON_MRI_KINDS for _ in range(2)])
    near_kinds = np.array(["ct_head_brain_window"] * 3 + ["brain_mr_contrast"] * 3)
    sets = benchmark.Sets(
        images={},
        outputs={
            "train": outputs(80, 0.0, 40),
            "validation": outputs(40, 0.0, 40),
            "testing": outputs(20, 0.2, 40),
            "non_mri": outputs(len(kinds), 6.0, 200),
            "near": outputs(6, 3.0, 40),
        },
        train_labels=torch.arange(80) % 4,
        kinds=kinds,
        seconds={},
        near_kinds=near_kinds,
    )
    guard = fit_guard(sets.outputs["train"], sets.train_labels, sets.outputs["validation"])
    result = benchmark.score_sets(guard, sets)
    assert set(result["near"]) == {"ct_head_brain_window", "brain_mr_contrast"}
    assert result["sets"]["testing"]["ct_like"] == 0 and "reasons" in result["sets"]["validation"]
    report = {
        "bundle": "bundle",
        "spec": guard.spec.model_dump(),
        "guard": result,
        "near_before_after": benchmark.near_before_after(sets, "mahalanobis", 0.99),
        "timing": None,
        "note": "",
    }
    text = benchmark.markdown(report, "python benchmarks/input_guard.py bundle --quick")
    assert "| ct_head_brain_window | 3 |" in text and "flagged without" in text and "--quick" in text


def _report(testing_other: float, ms: float | None) -> dict:
    sets = {
        "non_mri": {"flagged": 1.0},
        "validation": {"flagged": 0.019},
        "testing": {"flagged": 0.114, "flagged_other_than_ct_like": testing_other},
    }
    timing = None
    if ms is not None:
        key = f"predict batch ({benchmark.PREDICT_CHUNK}), 1 thread(s)"
        timing = {"guard_alone_ms_per_image": {key: {"total_ms": ms}}}
    return {"guard": {"sets": sets}, "timing": timing}


def test_targets_judge_testing_on_its_mri_slices_and_name_the_whole_split() -> None:
    rows = benchmark.targets(_report(0.028, 0.8))
    assert [row["met"] for row in rows] == [True, True, True, True]
    testing = rows[2]
    assert "11.4%" in testing["target"] and testing["value"] == 0.028
    assert not benchmark.targets(_report(0.06, 1.5))[2]["met"]
    assert not benchmark.targets(_report(0.06, 1.5))[3]["met"]
    assert len(benchmark.targets(_report(0.01, None))) == 3  # --quick: no timing target
    assert "| yes |" in "\n".join(benchmark._targets_lines(rows))
