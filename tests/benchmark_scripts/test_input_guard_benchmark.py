"""The input guard benchmark's non-MRI set: the documented kinds and counts, decodable, no network."""

from __future__ import annotations

import io
from collections import Counter

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
