"""Issue 16, reading volumes: NIfTI and DICOM series (plain, RLE-compressed, multi-frame, shuffled, reoriented),
and every hostile input a clear error or warning naming the file and the reason."""

from __future__ import annotations

import gzip
import io
import random
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from braintumor.data.archives import ArchiveError, ArchiveLimits, read_zip_members  # noqa: E402
from braintumor.data.synthetic_volumes import (  # noqa: E402
    dicom_series_bytes,
    enhanced_multiframe_bytes,
    nifti_bytes,
    series_datasets,
    stack_to_ras,
    to_bytes,
    tumour_stack,
)
from braintumor.data.volume_core import SeriesChoiceError, VolumeError  # noqa: E402
from braintumor.data.volumes import VolumeRequest, load_volume, load_volume_bytes  # noqa: E402

RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return tumour_stack(8, 40, tumour_slices=range(3, 6), seed=1)


def _pixels(volume) -> list[np.ndarray]:
    return [np.asarray(image) for image in volume.slices]


def _zip(members: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _folder(tmp_path: Path, files: list[tuple[str, bytes]]) -> Path:
    folder = tmp_path / "series"
    folder.mkdir()
    for name, data in files:
        (folder / name).write_bytes(data)
    return folder


def test_nifti_slices_are_axial_radiological_and_positioned() -> None:
    voxels = np.zeros((6, 5, 4), dtype=np.int16)  # x to the right, y anterior, z superior (RAS)
    voxels[5, 4, :] = 1000  # the patient's right, anterior corner
    voxels[..., 3] += 10
    volume = load_volume_bytes(nifti_bytes(voxels, np.diag([1.0, 1.0, 3.0, 1.0])), "demo.nii.gz")
    assert volume.format == "NIfTI" and len(volume.slices) == 4 and volume.slices[0].size == (6, 5)
    assert volume.positions_mm == [0.0, 3.0, 6.0, 9.0]
    grey = np.asarray(volume.slices[0])[..., 0]
    # Radiological view: anterior at the top, the patient's right on the image's left.
    assert np.unravel_index(int(grey.argmax()), grey.shape) == (0, 0) and grey[0, 0] > 240


def test_nifti_stored_in_another_orientation_reads_the_same(stack: np.ndarray) -> None:
    voxels, affine = stack_to_ras(stack)
    plain = load_volume_bytes(nifti_bytes(voxels, affine), "ras.nii.gz")
    # The same anatomy stored as LPI with the axes permuted: the affine says so, the reader undoes it.
    flipped = np.transpose(voxels[::-1, ::-1, ::-1], (2, 0, 1))
    permute = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    flip = np.diag([-1.0, -1.0, -1.0, 1.0])
    flip[:3, 3] = np.array(voxels.shape) - 1
    other_affine = affine @ flip @ permute
    other = load_volume_bytes(nifti_bytes(flipped, other_affine), "lpi.nii.gz")
    assert [p.tolist() for p in _pixels(other)] == [p.tolist() for p in _pixels(plain)]
    assert other.positions_mm == plain.positions_mm


def test_dicom_series_order_comes_from_positions_not_files(stack: np.ndarray, tmp_path: Path) -> None:
    files = dicom_series_bytes(stack)
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    # File names that sort in the wrong order too: only the position tags may decide.
    renamed = [(f"img{index:02d}.dcm", data) for index, (_, data) in enumerate(shuffled)]
    ordered = load_volume(_folder(tmp_path, files))
    mixed = load_volume_bytes(_zip(dict(renamed)), "shuffled.zip")
    assert [p.tolist() for p in _pixels(mixed)] == [p.tolist() for p in _pixels(ordered)]
    assert mixed.positions_mm == ordered.positions_mm == sorted(ordered.positions_mm)
    assert [r.sop_instance_uid for r in mixed.slice_refs] == [r.sop_instance_uid for r in ordered.slice_refs]
    assert ordered.series.n_images == len(stack) and ordered.acquisition_orientation == "axial"
    # Slice 0 is the first acquired (most inferior) one, shown as stored.
    assert np.asarray(ordered.slices[0])[..., 0].shape == stack[0].shape


@pytest.mark.parametrize("syntax", [RLE_LOSSLESS, JPEG2000_LOSSLESS])
def test_compressed_series_decode_like_the_uncompressed_one(stack: np.ndarray, syntax: str) -> None:
    try:
        compressed = dicom_series_bytes(stack, transfer_syntax=syntax)
    except Exception as error:  # the encoder plugin is optional
        pytest.skip(f"cannot encode {syntax} here: {error}")
    assert pydicom.dcmread(io.BytesIO(compressed[0][1])).file_meta.TransferSyntaxUID == syntax
    plain = load_volume_bytes(_zip(dict(dicom_series_bytes(stack))), "plain.zip")
    packed = load_volume_bytes(_zip(dict(compressed)), "packed.zip")
    assert [p.tolist() for p in _pixels(packed)] == [p.tolist() for p in _pixels(plain)]


def test_enhanced_multiframe_file_reads_like_its_series(stack: np.ndarray) -> None:
    series = load_volume_bytes(_zip(dict(dicom_series_bytes(stack))), "series.zip")
    frames = load_volume_bytes(enhanced_multiframe_bytes(stack), "enhanced.dcm")
    assert [p.tolist() for p in _pixels(frames)] == [p.tolist() for p in _pixels(series)]
    assert frames.positions_mm == series.positions_mm
    # Frames are ordered by their own positions, whatever order the file stores them in.
    assert sorted(r.frame_number for r in frames.slice_refs) == list(range(1, len(stack) + 1))


def test_sagittal_series_is_reformatted_to_axial(stack: np.ndarray) -> None:
    volume = load_volume_bytes(_zip(dict(dicom_series_bytes(stack, orientation="sagittal"))), "sag.zip")
    assert volume.acquisition_orientation == "sagittal"
    assert len(volume.slices) == stack.shape[1]  # the rows ran head to foot: they become the axial slices
    assert volume.positions_mm == sorted(volume.positions_mm)
    assert all(ref is None for ref in volume.slice_refs)  # a reformatted slice is no stored image


def test_several_series_are_listed_and_one_can_be_chosen(stack: np.ndarray, tmp_path: Path) -> None:
    first = dicom_series_bytes(stack, description="T1 axial")
    second = dicom_series_bytes(stack[:4], description="T2 axial", series_number=2)
    folder = _folder(tmp_path, [(f"a{n}", d) for n, d in first] + [(f"b{n}", d) for n, d in second])
    with pytest.raises(SeriesChoiceError) as caught:
        load_volume(folder)
    message = str(caught.value)
    assert "2 series" in message and "--series UID" in message and "'T2 axial'" in message and "4 images" in message
    uid = pydicom.dcmread(io.BytesIO(second[0][1])).SeriesInstanceUID
    chosen = load_volume(folder, VolumeRequest(series_uid=uid))
    assert len(chosen.slices) == 4 and chosen.series.description == "T2 axial"
    with pytest.raises(VolumeError, match=r"has no series 1\.2\.3"):
        load_volume(folder, VolumeRequest(series_uid="1.2.3"))


def test_missing_slices_are_warned_and_mark_a_gap(stack: np.ndarray) -> None:
    files = dicom_series_bytes(stack)
    del files[4]
    volume = load_volume_bytes(_zip(dict(files)), "gap.zip")
    assert len(volume.slices) == len(stack) - 1 and volume.gaps_after == [3]
    assert any("missing slices" in w and "about 1 slice(s)" in w for w in volume.warnings)


def test_junk_in_a_series_is_skipped_with_a_warning(stack: np.ndarray) -> None:
    files = dict(dicom_series_bytes(stack))
    files["notes.txt"] = b"scanned on Tuesday"
    truncated = files.pop("slice_007.dcm")
    files["slice_007.dcm"] = truncated[: len(truncated) - 800]
    report = series_datasets(stack[:1])[0]
    del report.PixelData
    files["report.dcm"] = to_bytes(report)
    volume = load_volume_bytes(_zip(files), "junk.zip")
    assert len(volume.slices) == len(stack) - 1
    joined = "\n".join(volume.warnings)
    assert "skipped notes.txt: not a DICOM file" in joined
    assert "skipped report.dcm: DICOM file has no pixel data" in joined
    assert "skipped slice_007.dcm: cannot decode its pixel data" in joined


def test_single_dicom_without_pixels_or_truncated_is_an_error(stack: np.ndarray) -> None:
    report = series_datasets(stack[:1])[0]
    del report.PixelData
    with pytest.raises(VolumeError, match=r"no\.dcm: holds no DICOM image: no\.dcm: DICOM file has no pixel data"):
        load_volume_bytes(to_bytes(report), "no.dcm")
    whole = enhanced_multiframe_bytes(stack)
    with pytest.raises(VolumeError, match=r"cut\.dcm: no image of the series could be decoded"):
        load_volume_bytes(whole[: len(whole) // 2], "cut.dcm")


@pytest.mark.parametrize(
    ("shape", "message"),
    [((8, 8), "is a 2D image"), ((8, 8, 1), "is a 2D image"), ((4, 4, 4, 2, 2), "is a 5D image")],
)
def test_nifti_of_the_wrong_dimensions_is_refused(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(VolumeError, match=rf"scan\.nii\.gz: {message}"):
        load_volume_bytes(nifti_bytes(np.zeros(shape, dtype=np.int16)), "scan.nii.gz")


def test_4d_nifti_needs_a_volume_index() -> None:
    data = nifti_bytes(np.arange(4 * 4 * 3 * 2, dtype=np.int16).reshape(4, 4, 3, 2))
    with pytest.raises(SeriesChoiceError, match=r"4D image with 2 volumes: choose one with --volume N \(0 to 1\)"):
        load_volume_bytes(data, "fmri.nii.gz")
    volume = load_volume_bytes(data, "fmri.nii.gz", VolumeRequest(volume_index=1))
    assert len(volume.slices) == 3 and "volume 1 of 2" in volume.warnings[0]
    with pytest.raises(VolumeError, match="--volume 5 is not one of them"):
        load_volume_bytes(data, "fmri.nii.gz", VolumeRequest(volume_index=5))


def test_truncated_and_bomb_nifti_are_refused() -> None:
    raw = nifti_bytes(np.zeros((16, 16, 8), dtype=np.int16), compress=False)
    with pytest.raises(VolumeError, match="truncated NIfTI file"):
        load_volume_bytes(raw[:-100], "cut.nii")
    with pytest.raises(VolumeError, match="truncated gzip file"):
        load_volume_bytes(gzip.compress(raw)[:-50], "cut.nii.gz")
    bomb = gzip.compress(raw + bytes(2_000_000))
    request = VolumeRequest(archive=ArchiveLimits(max_total_bytes=1_000_000))
    with pytest.raises(VolumeError, match="over the limit of 1,000,000 bytes"):
        load_volume_bytes(bomb, "bomb.nii.gz", request)


def test_zip_bomb_traversal_and_symlinks_are_refused() -> None:
    with pytest.raises(ArchiveError, match=r"expands .* times .*zip bomb"):
        read_zip_members(_zip({"a.dcm": bytes(5_000_000)}), "bomb.zip")
    with pytest.raises(ArchiveError, match=r"'\.\./\.\./etc/evil\.dcm' points outside the archive"):
        read_zip_members(_zip({"../../etc/evil.dcm": b"x"}), "evil.zip")
    with pytest.raises(ArchiveError, match=r"'/abs\.dcm' is an absolute path"):
        read_zip_members(_zip({"/abs.dcm": b"x"}), "evil.zip")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveError, match=r"'link\.dcm' is a symbolic link"):
        read_zip_members(buffer.getvalue(), "links.zip")


def test_archive_limits_members_and_total_bytes() -> None:
    many = _zip({f"f{i}.dcm": b"x" for i in range(5)})
    with pytest.raises(ArchiveError, match="5 members, over the limit of 4"):
        read_zip_members(many, "many.zip", ArchiveLimits(max_members=4))
    big = _zip({"a.dcm": bytes(range(256)) * 400}, compression=zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="would expand to 102,400 bytes, over the limit of 50,000 bytes"):
        read_zip_members(big, "big.zip", ArchiveLimits(max_total_bytes=50_000))
    with pytest.raises(VolumeError, match="not a volume"):
        load_volume_bytes(b"just some text", "notes.txt")


def test_a_member_that_lies_about_its_size_is_refused() -> None:
    data = bytearray(_zip({"a.dcm": bytes(range(256)) * 40}, compression=zipfile.ZIP_STORED))
    # Shrink the declared size in the central directory (uncompressed size field at offset 24 of the entry).
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")
    data[central + 20 : central + 24] = (100).to_bytes(4, "little")
    with pytest.raises(ArchiveError, match=r"'a\.dcm'"):
        read_zip_members(bytes(data), "liar.zip")
