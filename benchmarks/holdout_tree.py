"""A Training tree without one class's other-source images (symbolic links, nothing copied), to train a
fine-tuned recipe's site-adaptation proxy on (``benchmarks/site_adaptation.py --proxy-bundle``).

    python benchmarks/holdout_tree.py --data ../shared/data/brain-tumor-mri --held-out meningioma --out holdouts/meningioma
    braintumor train lite0-lpft-cached --data holdouts/meningioma --out runs/proxy-meningioma --tracker none --no-onnx

The held-out images are the ones ``lib.source_holdout.holdout_split`` holds out: the class's
images that are not from the main 512x512 source.
"""

from __future__ import annotations

from pathlib import Path

from common import data_parser
from lib.source_holdout import HELD_OUT_CLASSES, is_main_source

from braintumor.classes import CLASS_NAMES
from braintumor.data.layout import discover_split


def write_holdout_tree(data: Path, held_out: str, out: Path) -> tuple[int, int]:
    """Link every Training file into ``out/Training/<class folder>/`` except ``held_out``'s other-source ones;
    returns (linked, held out)."""
    label, linked, held = CLASS_NAMES.index(held_out), 0, 0
    for sample in discover_split(data, "Training"):
        if sample.label == label and not is_main_source(sample.path):
            held += 1
            continue
        link = out / "Training" / sample.path.parent.name / sample.path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(sample.path.resolve())
            linked += 1
    return linked, held


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--held-out", choices=HELD_OUT_CLASSES, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    linked, held = write_holdout_tree(args.data, args.held_out, args.out)
    print(f"{args.out}: {linked} Training images linked, {held} other-source {args.held_out} images held out")


if __name__ == "__main__":
    main()
