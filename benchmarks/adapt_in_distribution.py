"""Site adaptation on a site that already reads like the source: does `adapt` leave it alone?

The target is the bundle's own validation split (Training images it never trained on, drawn from the source's
distribution). `braintumor adapt` runs with the bundle recipe's default method on those images, unlabelled, and
the accuracy on the same images is compared before and after: a good gate changes nothing (target: at most
0.5 points). No Testing image is read.

    python benchmarks/adapt_in_distribution.py --bundle runs/lpft/bundle --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from common import command_line, data_parser, option, write_json

import braintumor
from braintumor.bundle.validation import validation_samples

TARGET_POINTS = 0.5


def validation_tree(model: braintumor.Bundle, data: Path, folder: Path) -> Path:
    """A data root whose ``Validation/<class>/`` folders link the bundle's validation images."""
    for sample in validation_samples(model.stored, data):
        target = folder / "Validation" / sample.path.parent.name / sample.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(sample.path.resolve())
    return folder


def measure(bundle: Path, data: Path, work: Path) -> dict[str, Any]:
    """Accuracy on the validation split before and after adapting to it, and what adapt decided."""
    model = braintumor.load(bundle)
    root = validation_tree(model, data, work / "data")
    before = model.evaluate(root, "Validation", work / "before")
    adaptation = braintumor.adapt(bundle, root / "Validation", work / "adapted", show_progress=False)
    after = adaptation.bundle.evaluate(root, "Validation", work / "after")
    change = 100.0 * (after.accuracy - before.accuracy)
    return {
        "bundle": str(bundle),
        "recipe": model.name,
        "method": adaptation.record.method,
        "applied": adaptation.applied,
        "evidence": adaptation.evidence.to_dict(),
        "n_images": before.metrics.n_images,
        "accuracy_before": before.accuracy,
        "accuracy_after": after.accuracy,
        "change_points": round(change, 2),
        "target_points": TARGET_POINTS,
        "met": abs(change) <= TARGET_POINTS,
    }


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="A bundle (repeatable).")
    parser.add_argument("--out", type=Path, default=None, help="Write the rows as JSON here.")
    args = parser.parse_args()
    rows = []
    for bundle in args.bundle:
        with tempfile.TemporaryDirectory() as work:
            row = measure(bundle, args.data, Path(work))
        rows.append(row)
        print(
            f"{row['recipe']}: {row['method']} applied {row['applied'] or 'nothing'}; validation accuracy "
            f"{row['accuracy_before']:.2%} -> {row['accuracy_after']:.2%} ({row['change_points']:+.2f} points, "
            f"target within {TARGET_POINTS}: {'met' if row['met'] else 'NOT met'})\n  {row['evidence']['explanation']}"
        )
    if args.out:
        options = [option("--data", args.data), *[f"--bundle {b}" for b in args.bundle], option("--out", args.out)]
        write_json(args.out, {"command": command_line("adapt_in_distribution.py", *options), "rows": rows})


if __name__ == "__main__":
    main()
