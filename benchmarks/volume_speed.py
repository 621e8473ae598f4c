"""Time a whole volume through a bundle: a 155-slice 240x240 series read, displayed and predicted slice by slice.

Usage:
    .venv/bin/python benchmarks/volume_speed.py [BUNDLE] [--data ROOT] [--slices 155] [--size 240] [--runs 3]
        [--backend auto|onnx|torch]

The volume is made here (no real volume exists in the data set): ``--data`` stacks real Training slices
(grey, resized to ``--size``; Testing is never read), otherwise synthetic heads. It is written once as a
zip of a DICOM series (one file per slice, real orientation and position tags) and once as a ``.nii.gz``;
each is then read (:func:`braintumor.data.volumes.load_volume`: parse, order, display pipeline, reorient) and
predicted (:func:`braintumor.inference.volume.predict_volume`: the bundle's preprocessing, model, input guard
and the study rule) ``--runs`` times; the table gives the fastest and the median wall seconds (a shared
machine only adds time). The backend is the one ``predict`` uses (``auto``): PyTorch in NHWC order, the
fastest on batches; ``--backend onnx`` times onnxruntime instead. Target: <= 3 s end to end on
2 cores with the main bundle.

Without BUNDLE a tiny CNN is trained on synthetic images first (a few seconds): its time says nothing about
the main bundle, and the table says so.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from common import command_line, markdown_header, markdown_row, option, produced_by, script_parser, timed, write_table
from PIL import Image

TARGET_S = 3.0
COLUMNS = ("input", "slices", "read fastest / median", "predict fastest / median", "total fastest / median", "target")


def training_stack(root: Path, slices: int, size: int) -> np.ndarray:
    """``slices`` real Training slices (every class in turn, sorted paths), grey, ``size`` px, as uint16."""
    from braintumor.data.layout import discover_split

    samples = sorted(discover_split(root, "Training"), key=lambda s: (s.label, str(s.path)))
    by_class: dict[int, list] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample.path)
    order = [paths[i] for i in range(max(map(len, by_class.values()))) for paths in by_class.values() if i < len(paths)]
    planes = [
        np.asarray(Image.open(path).convert("L").resize((size, size)), dtype=np.uint16) * 16 for path in order[:slices]
    ]
    return np.stack(planes)


def tiny_bundle(folder: Path) -> Path:
    """A tiny CNN trained for 2 epochs on synthetic images (no tracking): only to exercise the code path."""
    from braintumor.config import Recipe
    from braintumor.data.synthetic import make_synthetic_dataset
    from braintumor.workflows.train import RunOptions, train_recipe

    root = make_synthetic_dataset(folder / "data", per_class=12, size=64)
    recipe = Recipe.model_validate(
        {
            "name": "tiny-volume-benchmark",
            "data": {"image_size": 64},
            "model": {"architecture": "custom_cnn", "conv_channels": [8, 16]},
            "augment": {"enabled": False},
            "train": {"max_epochs": 2},
        }
    )
    options = RunOptions(show_progress=False, tracker="none")
    return train_recipe(recipe, root, folder / "run", options=options).bundle_dir


def write_inputs(stack: np.ndarray, folder: Path) -> dict[str, Path]:
    """The stack as a zip of a DICOM series and as a .nii.gz."""
    from braintumor.data.synthetic_volumes import dicom_series_bytes, nifti_bytes, stack_to_ras

    archive = folder / "series.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, data in dicom_series_bytes(stack, description="benchmark series"):
            handle.writestr(f"series/{name}", data)
    archive.write_bytes(buffer.getvalue())
    voxels, affine = stack_to_ras(stack)
    nifti = folder / "volume.nii.gz"
    nifti.write_bytes(nifti_bytes(voxels, affine))
    return {"DICOM series (zip)": archive, "NIfTI (.nii.gz)": nifti}


def measure(predictor: object, path: Path, runs: int) -> dict[str, object]:
    from braintumor.data.volumes import load_volume
    from braintumor.inference.volume import predict_volume

    reads, predicts, slices, finding = [], [], 0, ""
    for _ in range(runs):
        volume, read_s, _ = timed(lambda: load_volume(path))
        result, predict_s, _ = timed(lambda v=volume: predict_volume(predictor, v))
        reads.append(read_s)
        predicts.append(predict_s)
        slices, finding = len(volume.slices), result.study.finding
    totals = [r + p for r, p in zip(reads, predicts, strict=True)]
    return {
        "slices": slices,
        "finding": finding,
        "read_s": [round(v, 3) for v in reads],
        "predict_s": [round(v, 3) for v in predicts],
        "total_fastest_s": round(min(totals), 3),
        "total_median_s": round(statistics.median(totals), 3),
    }


def _pair(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} s"


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("bundle", nargs="?", type=Path, help="Model bundle (default: train a tiny one, see above).")
    parser.add_argument("--data", type=Path, help="Data root: stack real Training slices (default: synthetic heads).")
    parser.add_argument("--slices", type=int, default=155)
    parser.add_argument("--size", type=int, default=240)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (onnxruntime uses all cores).")
    parser.add_argument(
        "--backend",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="auto: as predict (onnxruntime when the bundle has model.onnx); onnx: export to a scratch copy if needed.",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/volume_speed.md"))
    args = parser.parse_args()
    import torch

    from braintumor.bundle import load_bundle
    from braintumor.data.synthetic_volumes import tumour_stack
    from braintumor.inference.onnx_export import ONNX_FILE, OnnxPredictor, export_onnx, make_predictor

    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="volume-speed-"))
    bundle_path = args.bundle or tiny_bundle(work)
    if args.bundle is None:
        print(f"no BUNDLE given: trained a tiny synthetic bundle at {bundle_path}; its time is not the main bundle's")
    stack = (
        training_stack(args.data, args.slices, args.size)
        if args.data
        else tumour_stack(args.slices, args.size, tumour_slices=range(args.slices // 3, args.slices // 2))
    )
    bundle = load_bundle(bundle_path)
    if args.backend == "onnx" and not (bundle.path / ONNX_FILE).is_file():
        # Exported to the scratch folder: the bundle itself is not changed.
        predictor = OnnxPredictor(bundle, onnx_path=export_onnx(bundle, out=work / ONNX_FILE).path)
    else:
        predictor = make_predictor(bundle, "onnx" if args.backend == "onnx" else "torch")
    backend = "onnxruntime" if isinstance(predictor, OnnxPredictor) else "pytorch"
    rows, lines = [], markdown_header(COLUMNS, "rrrrr")
    for name, path in write_inputs(stack, work).items():
        row = {"input": name, **measure(predictor, path, args.runs)}
        rows.append(row)
        met = "met" if row["total_fastest_s"] <= TARGET_S else "not met"
        lines.append(
            markdown_row(
                [
                    name,
                    str(row["slices"]),
                    _pair(row["read_s"]),
                    _pair(row["predict_s"]),
                    f"{row['total_fastest_s']:.2f} / {row['total_median_s']:.2f} s",
                    f"<= {TARGET_S:g} s: {met}",
                ]
            )
        )
    command = command_line(
        "volume_speed.py",
        str(args.bundle) if args.bundle else None,
        option("--data", args.data),
        option("--slices", args.slices, 155),
        option("--size", args.size, 240),
        option("--runs", args.runs, 3),
        option("--threads", args.threads, 2),
        option("--backend", args.backend, "auto"),
    )
    source = "real Training slices stacked" if args.data else "synthetic heads"
    bundle_note = load_bundle(bundle_path).name + ("" if args.bundle else " (tiny synthetic bundle, not the main one)")
    load = os.getloadavg()[0]  # others' work on a shared machine only adds time: say how busy it was
    details = (
        f"bundle {bundle_note}, backend {backend}, {args.slices} x {args.size}x{args.size} {source}, "
        f"load average {load_at_start:.1f} at the start and {load:.1f} at the end, "
    )
    markdown = "\n".join([*lines, "", produced_by(command, details), ""])
    write_table(args.out, markdown, rows)
    print(markdown)


if __name__ == "__main__":
    main()
