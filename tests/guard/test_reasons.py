"""Why the input guard flagged an image: "not an MRI slice" only where the image evidence says so, a hedged
reason for MR-like slices that only the feature detector flags, and the reason on every prediction surface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

import braintumor
from braintumor.api import FLAG_REASON, _typed
from braintumor.bundle import load_bundle
from braintumor.guard.evidence import evidence_distance
from braintumor.guard.guard import GuardInputs, model_outputs
from braintumor.guard.reasons import FLAG_REASONS, NOT_AN_MRI, UNLIKE_TRAINING, reason_indices
from braintumor.inference.predictor import UNEXPLAINED_FLAG, Predictor
from tests.serving.test_serving_guard import blank_white, colour_noise, save_guarded_bundle, synthetic_slices

HELD_OUT_SEED = 21


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CNN whose guard is fitted on synthetic grey head slices (64 px, so text stays legible)."""
    return save_guarded_bundle(tmp_path_factory.mktemp("reasons") / "bundle", size=64)


def text_page(size: int = 64) -> Image.Image:
    """Black text on a white page."""
    page = Image.new("RGB", (size, size), (255, 255, 255))
    draw, font = ImageDraw.Draw(page), ImageFont.load_default(size=14)
    for row in range(4):
        draw.text((2, 2 + 15 * row), "MRI text", fill=(0, 0, 0), font=font)
    return page


def checkered(image: Image.Image) -> Image.Image:
    """The slice with a fine checkerboard texture inside its head: grey and MR-like, but from another distribution
    than the slices the guard was fitted on (same background, border and grey-level range)."""
    grey = np.asarray(image.convert("L")).astype(float)
    yy, xx = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]]
    pattern = ((yy // 4 + xx // 4) % 2) * 2 - 1
    textured = np.where(grey > 10, grey + 40 * pattern, 0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(textured).convert("RGB")


def test_reason_rules_put_the_most_telling_evidence_first() -> None:
    names = ["colourfulness", "mean_grey", "grey_std", "dark_fraction", "border_grey"]
    above = torch.zeros(5, 5)
    above[0, [0, 1, 4]] = 3.0  # colourful and light: colour wins
    above[1, [1, 4]] = 2.0  # light overall
    above[2, 4] = 2.0  # only a light border: no "not an MRI"
    statistics = torch.full((5, 5), 0.3)
    statistics[3, 2] = 0.01  # flat: almost blank (its light frame notwithstanding)
    above[3, 4] = 2.0
    ood, evidence = torch.tensor([3.0, 2.0, 2.0, 2.0, 1.5]), torch.tensor([3.0, 2.0, 2.0, 2.0, 0.2])
    index = reason_indices(ood, evidence, above, torch.zeros(5, 5), statistics, torch.full((5,), 0.1), names)
    codes = [FLAG_REASONS[int(i)].code for i in index]
    assert codes == ["not_mri_colour", "not_mri_light", "light_border", "not_mri_blank", "unlike_training"]
    unflagged = reason_indices(torch.tensor([0.5]), torch.tensor([0.5]), *[torch.zeros(1, 5)] * 3, torch.ones(5), names)
    assert unflagged.tolist() == [-1]


def test_reasons_leave_the_scores_as_they_were(guarded: Path) -> None:
    bundle = load_bundle(guarded)
    guard, images = bundle.guard, [colour_noise(), blank_white(), text_page(), *synthetic_slices(4, HELD_OUT_SEED)]
    inputs = _outputs(bundle, images)
    scores = guard.score(inputs)
    spec = guard.spec
    distance = evidence_distance(inputs.evidence, torch.tensor(spec.evidence_low), torch.tensor(spec.evidence_high))
    expected = (distance - spec.evidence_median) / max(spec.evidence_threshold - spec.evidence_median, 1e-6)
    assert torch.equal(scores.evidence, expected) and torch.equal(scores.ood_score, scores.feature.maximum(expected))
    assert [r is not None for r in scores.reasons] == scores.flagged.tolist()


@pytest.mark.parametrize(
    ("image", "detail"),
    [(colour_noise(), "a colour image"), (blank_white(), "almost blank"), (text_page(), "text or a drawing")],
    ids=["colour", "blank", "text"],
)
def test_non_mri_inputs_are_not_mri_slices_with_the_evidence(guarded: Path, image: Image.Image, detail: str) -> None:
    predictor = Predictor(load_bundle(guarded))
    [prediction] = predictor.to_predictions(["x"], *predictor.predict_images_checked([image]))
    assert prediction.out_of_distribution is True
    assert prediction.flag_reason is not None and prediction.flag_reason.startswith(f"{NOT_AN_MRI}: ")
    assert detail in prediction.flag_reason and prediction.flag_code.startswith("not_mri_")


def test_an_mr_like_slice_flagged_only_by_features_is_unlike_the_training_slices(guarded: Path) -> None:
    bundle = load_bundle(guarded)
    images = [checkered(image) for image in synthetic_slices(8, HELD_OUT_SEED)]
    scores = bundle.guard.score(_outputs(bundle, images))
    assert (scores.evidence <= 1.0).all()  # grey levels like the fitted slices: the evidence does not flag them
    assert int(scores.flagged.sum()) >= 4  # the feature detector does
    predictor = Predictor(bundle)
    for prediction in predictor.to_predictions([str(i) for i in range(8)], *predictor.predict_images_checked(images)):
        if prediction.out_of_distribution:
            assert prediction.flag_code == UNLIKE_TRAINING.code and prediction.flag_reason == UNLIKE_TRAINING.text
            assert "unlike the training slices" in prediction.flag_reason
            assert not any(words in prediction.flag_reason for words in ("not an MRI", "not a brain"))
        else:
            assert prediction.flag_reason is None and prediction.flag_code is None


def test_held_out_slices_have_no_reason_and_paths_and_the_api_carry_it(guarded: Path, tmp_path: Path) -> None:
    for index, image in enumerate([*synthetic_slices(4, HELD_OUT_SEED), colour_noise()]):
        image.save(tmp_path / f"{index}.png")
    predictor = Predictor(load_bundle(guarded))
    found, _ = predictor.predict_paths(sorted(tmp_path.iterdir()))
    assert [p.flag_code for p in found] == [None] * 4 + ["not_mri_colour"]
    public = braintumor.load(guarded).predict(sorted(tmp_path.iterdir()))
    assert [p.flag_reason for p in public] == [None] * 4 + [f"{NOT_AN_MRI}: a colour image"]
    assert public[-1].class_name is None and public[-1].flagged is True


def test_a_flag_without_a_reason_falls_back(guarded: Path) -> None:
    predictor = Predictor(load_bundle(guarded))
    item = predictor.to_prediction("x", np.array([0.7, 0.1, 0.1, 0.1]), ood_score=4.0)
    assert item.flag_reason == UNEXPLAINED_FLAG.text and "not a brain MRI" not in item.flag_reason
    assert predictor.to_prediction("x", np.array([0.7, 0.1, 0.1, 0.1]), ood_score=0.5).flag_reason is None
    # An object without flag_reason (an older caller's prediction) still gets the public fallback text.
    old = type("Old", (), {**item.__dict__, "flag_reason": None})()
    assert _typed(old).flag_reason == FLAG_REASON and _typed(item).flag_reason == UNEXPLAINED_FLAG.text


def test_onnx_predictor_gives_the_same_reasons(guarded: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from braintumor.inference.onnx_export import OnnxPredictor, export_onnx

    bundle = load_bundle(guarded)
    graph = export_onnx(bundle, out=tmp_path / "model.onnx").path
    images = [colour_noise(), blank_white(), text_page(), *[checkered(i) for i in synthetic_slices(4, HELD_OUT_SEED)]]
    _, torch_verdicts = Predictor(bundle, precision="32").predict_images_checked(images)
    _, onnx_verdicts = OnnxPredictor(bundle, onnx_path=graph).predict_images_checked(images)
    assert torch_verdicts is not None and onnx_verdicts is not None
    assert [r and r.code for r in onnx_verdicts.reasons] == [r and r.code for r in torch_verdicts.reasons]


def _outputs(bundle, images: list[Image.Image]) -> GuardInputs:
    from braintumor.data.preprocessing import eval_transform, resize_to_uint8_tensor

    uint8 = torch.stack([resize_to_uint8_tensor(image, bundle.preprocessing) for image in images])
    return model_outputs(bundle.model, eval_transform(bundle.preprocessing), uint8)
