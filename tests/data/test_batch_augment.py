"""The vectorised affine augmentation: torchvision's geometry on whole batches, seeded, and only where it applies."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from braintumor.config import AugmentConfig, load_recipe
from braintumor.data.batch_augment import BatchAffine, batch_augmentation
from braintumor.data.preprocessing import Preprocessing, eval_transform

PREP = Preprocessing(image_size=32)
PIXELS = (0.0, 0.0, 0.0), (1 / 255,) * 3  # mean and std that leave pixel values as they are


def _fixed(angle: float = 0.0, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> BatchAffine:
    """A BatchAffine whose draw is fixed, to compare its geometry with torchvision's."""
    transform = BatchAffine(30.0, 0.2, 0.2, False, *PIXELS)

    def drawn(count: int, height: int, width: int) -> dict[str, torch.Tensor]:
        return {
            "angle": torch.full((count,), angle),
            "shift_x": torch.full((count,), shift[0]),
            "shift_y": torch.full((count,), shift[1]),
            "scale": torch.full((count,), scale),
            "mirror": torch.zeros(count, dtype=torch.bool),
        }

    transform.parameters = drawn  # type: ignore[method-assign]
    return transform


def test_no_augmentation_is_the_clean_view() -> None:
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    still = BatchAffine(0.0, 0.0, 0.0, False, PREP.mean, PREP.std)
    torch.testing.assert_close(still(images), eval_transform(PREP)(images), rtol=0, atol=1e-5)


def test_the_geometry_is_torchvisions() -> None:
    # A smooth image, so that bilinear sampling differences stay small: the same rotation, shift and zoom.
    rows, columns = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = (128 + 100 * torch.sin(rows / 5) * torch.cos(columns / 7)).round().to(torch.uint8).expand(3, 32, 32)
    for angle, shift, scale in ((90.0, (0.0, 0.0), 1.0), (17.0, (3.0, -2.0), 1.1), (-8.0, (-1.0, 4.0), 0.9)):
        expected = TF.affine(
            image, angle=angle, translate=list(shift), scale=scale, shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR, fill=0,
        ).float()  # fmt: skip
        got = _fixed(angle, shift, scale)(image.unsqueeze(0))[0]
        inside = expected[:, 4:-4, 4:-4], got[:, 4:-4, 4:-4]  # borders: the two fill rules differ by a pixel
        assert (inside[0] - inside[1]).abs().mean() < 2.0, (angle, shift, scale)


def test_the_draw_follows_the_seed_and_mirrors_half_the_images() -> None:
    transform = batch_augmentation(AugmentConfig(rotation_degrees=10, zoom=0.1, translate=0.1), PREP)
    assert transform is not None
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(3)
    first = transform(images)
    torch.manual_seed(3)
    assert torch.equal(transform(images), first)
    torch.manual_seed(3)
    drawn = transform.parameters(64, 32, 32)
    assert 16 < int(drawn["mirror"].sum()) < 48
    assert drawn["angle"].abs().max() <= 10 and (drawn["scale"] - 1).abs().max() <= 0.1
    assert torch.equal(drawn["shift_x"], drawn["shift_x"].round()) and drawn["shift_x"].abs().max() <= 3.2


def test_only_a_purely_geometric_augmentation_is_batched() -> None:
    assert batch_augmentation(load_recipe("lite0-lpft-cached").augment, PREP) is not None
    assert batch_augmentation(load_recipe("seed-cnn-distilled").augment, PREP) is not None
    assert batch_augmentation(load_recipe("vit-tiny").augment, PREP) is None  # crops, jitter, blur: image by image
    assert batch_augmentation(AugmentConfig(enabled=False), PREP) is None
    assert batch_augmentation(AugmentConfig(noise_std=0.05), PREP) is None


def test_a_view_is_the_same_draw_at_any_batch_size() -> None:
    """Within an announced view the parameters are drawn for blocks of 32 images: batches of 16 (or 7) give the
    images the augmentation that batches of 32 gave them."""
    transform = batch_augmentation(AugmentConfig(rotation_degrees=10, zoom=0.1, translate=0.1), PREP)
    assert transform is not None
    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)

    def view(batch: int, announce: bool = True) -> torch.Tensor:
        torch.manual_seed(5)
        if announce:
            transform.start_view(len(images))
        return torch.cat([transform(part) for part in images.split(batch)])

    in_blocks_of_32 = view(32, announce=False)  # what unannounced batches of 32 draw
    assert torch.equal(view(16), in_blocks_of_32)
    assert torch.equal(view(7), in_blocks_of_32)
    assert torch.equal(view(70), in_blocks_of_32)
    torch.manual_seed(5)
    transform.start_view(4)
    with pytest.raises(ValueError, match="more images"):
        transform(images[:5])
