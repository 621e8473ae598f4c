"""What folding BatchNorm into the convolutions changes in a bundle's predictions: nothing but float rounding.

Usage:
    .venv/bin/python benchmarks/fold_parity.py BUNDLE --data ../shared/data/brain-tumor-mri [--split Testing]

Runs the bundle's network on every image of the split twice, as the product now runs it (BatchNorm folded,
``braintumor.models.fusion``) and unfolded, both fp32 NHWC, and prints how many predicted classes and input-guard
flags agree, the largest logit and ood_score differences, and the time of each pass. Results go to
``benchmarks/results/fold_parity.json``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from common import command_line, data_parser, option, produced_by, write_json


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--split", default="Testing")
    args = parser.parse_args()
    from braintumor.bundle import load_bundle
    from braintumor.data.dataset import load_images
    from braintumor.data.layout import discover_split
    from braintumor.inference.predictor import Predictor

    bundle = load_bundle(args.bundle)
    images = load_images(discover_split(args.data, args.split), bundle.preprocessing, show_progress=False).images
    predictor = Predictor(bundle, precision="32")
    runs = {}
    for name, network in (("folded", predictor.model), ("unfolded", bundle.model), ("folded again", predictor.model)):
        predictor.__dict__["model"] = network
        started = time.perf_counter()
        runs[name] = (*predictor.run_uint8(images), time.perf_counter() - started)
    (folded_logits, folded_ood, _), (plain_logits, plain_ood, _) = runs["folded again"], runs["unfolded"]
    result = {
        "bundle": str(args.bundle),
        "split": args.split,
        "images": len(images),
        "same_class": int((folded_logits.argmax(1) == plain_logits.argmax(1)).sum()),
        "max_logit_difference": float(np.abs(folded_logits - plain_logits).max()),
        "seconds": {name: round(run[2], 2) for name, run in runs.items()},
    }
    if folded_ood is not None and plain_ood is not None:
        result["same_guard_flag"] = int(((folded_ood > 1) == (plain_ood > 1)).sum())
        result["max_ood_score_difference"] = float(np.abs(folded_ood - plain_ood).max())
    command = command_line(
        "fold_parity.py", str(args.bundle), option("--data", args.data), option("--split", args.split, "Testing")
    )
    result["produced_by"] = produced_by(command)
    write_json(Path(__file__).resolve().parent / "results" / "fold_parity.json", result)
    print(result)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
