"""How many images of each split and class are 512x512: the framing shortcut a CNN can learn.

python benchmarks/image_sizes.py --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from common import markdown_header, markdown_row, script_parser
from lib.source_holdout import MAIN_SOURCE_SIDE, is_main_source

from braintumor.data.layout import discover_split


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--size", type=int, default=MAIN_SOURCE_SIDE, help="Side of the square size to count.")
    args = parser.parse_args()
    print("\n".join(markdown_header(["split", "class", "files", f"{args.size}x{args.size}"], align="llrr")))
    for split in ("Training", "Testing"):
        counts: Counter[str] = Counter()
        square: Counter[str] = Counter()
        for sample in discover_split(args.data, split):
            counts[sample.class_name] += 1
            square[sample.class_name] += is_main_source(sample.path, args.size)
        for name in sorted(counts):
            print(markdown_row([split, name, str(counts[name]), str(square[name])]))


if __name__ == "__main__":
    main()
