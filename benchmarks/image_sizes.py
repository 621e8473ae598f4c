"""How many images of each split and class are 512x512: the framing shortcut a CNN can learn.

python benchmarks/image_sizes.py --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from PIL import Image

from braintumor.data.layout import discover_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--size", type=int, default=512, help="Side of the square size to count.")
    args = parser.parse_args()
    print(f"| split | class | files | {args.size}x{args.size} |")
    print("|---|---|---:|---:|")
    for split in ("Training", "Testing"):
        counts: Counter[str] = Counter()
        square: Counter[str] = Counter()
        for sample in discover_split(args.data, split):
            counts[sample.class_name] += 1
            with Image.open(sample.path) as image:  # reads the header only
                square[sample.class_name] += image.size == (args.size, args.size)
        for name in sorted(counts):
            print(f"| {split} | {name} | {counts[name]} | {square[name]} |")


if __name__ == "__main__":
    main()
