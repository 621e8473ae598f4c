"""Source hold-out: a validation proxy for Testing's shift, built from Training only, and a probe sweep judged on it.

For a class that Training has from both kinds of source (meningioma, pituitary), its images from the other
sources than the main 512x512 one are held out, the probe is trained on the rest, and the held-out images' recall
says whether the model recognises a class in a source it only saw for other classes (the method:
``lib.source_holdout``). The table shows, per variant: validation (in-distribution), the source
hold-out recalls, and Testing (reported only, after the fact; never used to choose).

    python benchmarks/source_holdout.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights \\
        --variant tf_efficientnet_lite0:224:none --variant tf_efficientnet_lite0:224:window

A variant is ``BACKBONE:SIZE:INTENSITY[:styleB|POOLpool|multilevel][:swapV][:augV][:debiasK]`` (head-cropped
slices; ``lib.source_holdout.SourceVariant`` says what each part does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import (
    command_line,
    data_parser,
    markdown_header,
    markdown_row,
    option,
    produced_by,
    use_weights_dir,
    write_table,
)
from lib.source_holdout import SourceVariant, evaluate_variant
from scipy.stats import spearmanr

DEFAULT_OUT = Path("benchmarks/results/source_holdout.md")
HEADER = [
    "variant", "C (by val loss)", "val loss", "val acc", "hold-out meningioma recall (n)",
    "hold-out pituitary recall (n)", "test acc", "test glioma recall",
]  # fmt: skip


def _cells(row: dict[str, Any]) -> list[str]:
    held = row["source_holdout"]
    return [
        row["variant"],
        f"{row['C']:g}",
        f"{row['val_loss']:.3f}",
        f"{row['val_accuracy']:.2%}",
        f"{held['meningioma']:.2f} ({held['meningioma_n']})",
        f"{held['pituitary']:.2f} ({held['pituitary_n']})",
        f"{row['test_accuracy']:.2%}",
        f"{row['test_glioma_recall']:.2f}",
    ]


def _markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = markdown_header(HEADER) + [markdown_row(_cells(row)) for row in rows]
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
    try:
        variants = [SourceVariant.parse(variant) for variant in args.variant]
    except ValueError as error:
        parser.error(str(error))
    command = command_line(
        "source_holdout.py",
        option("--data", args.data),
        option("--weights-dir", args.weights_dir),
        *(option("--variant", variant) for variant in args.variant),
        option("--out", args.out, DEFAULT_OUT),
    )
    rows = []
    for variant in variants:
        rows.append(evaluate_variant(variant, args.data, args.cache_dir))
        write_table(args.out, _markdown(rows, command), rows)
        print(markdown_row(_cells(rows[-1])), flush=True)
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
