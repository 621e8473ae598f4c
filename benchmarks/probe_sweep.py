"""Quick sweep of frozen-backbone linear probes: which backbone, size and preprocessing, judged on validation.

For each variant, backbone features of Training (the recipes' stratified validation split taken out)
and Testing are computed once, a logistic regression is fitted for each C in a grid, and C is chosen
by validation log loss. The table shows validation and Testing side by side: decide on the validation
columns; the Testing columns are there to report, after the fact, how far validation misleads under shift.

    python benchmarks/probe_sweep.py --data ../shared/data/brain-tumor-mri --weights-dir ../shared/weights \\
        --variant tf_efficientnet_lite0:224:head:none --variant tf_efficientnet_lite2:260:head:none

A variant is ``BACKBONE:SIZE:CROP:INTENSITY`` (CROP none|head, INTENSITY none|equalize).
"""

from __future__ import annotations

from pathlib import Path

from common import data_parser, markdown_header, markdown_row, use_weights_dir, write_json
from lib.probes import probe_sweep_row

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
HEADER = ["variant", "C (by val loss)", "val loss", "val acc", "test acc", "test glioma recall"]


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--variant", action="append", required=True, help="BACKBONE:SIZE:CROP:INTENSITY")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_sweep.json"))
    args = parser.parse_args()
    use_weights_dir(args)
    rows = []
    print("\n".join(markdown_header(HEADER)))
    for variant in args.variant:
        row = probe_sweep_row(variant, args.data, C_GRID)
        rows.append(row)
        cells = [variant, f"{row['C']:g}", f"{row['val_loss']:.3f}", f"{row['val_accuracy']:.2%}"]
        print(markdown_row([*cells, f"{row['test_accuracy']:.2%}", f"{row['test_glioma_recall']:.2f}"]), flush=True)
        write_json(args.out, rows)


if __name__ == "__main__":
    main()
