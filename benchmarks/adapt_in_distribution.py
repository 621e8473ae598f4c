"""Site adaptation on a site that already reads like the source: does `adapt` leave it alone?

The target is the bundle's own validation split (Training images it never trained on, drawn from the source's
distribution). `braintumor adapt` runs with the bundle recipe's default method on those images, unlabelled, and
the accuracy on the same images is compared before and after: a good gate changes nothing (target: at most
0.5 points). ``--skew CLASS`` keeps every validation image of CLASS and one in five of the others: a site that
reads like the source but sees the classes in other proportions. No Testing image is read.

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


# With --skew: one in this many images of the other classes is kept.
SKEW_KEEP_EVERY = 5
# The skewed sites site_adaptation.py reports beside its cross-fold figures (class folder names of Training).
IN_DISTRIBUTION_SKEWS = ("glioma_tumor", "no_tumor")


def validation_tree(model: braintumor.Bundle, data: Path, folder: Path, skew: str | None = None) -> Path:
    """A data root whose ``Validation/<class>/`` folders link the bundle's validation images (``skew``: every
    image of that class folder and one in :data:`SKEW_KEEP_EVERY` of the others, in the recorded order)."""
    for index, sample in enumerate(validation_samples(model.stored, data)):
        if skew is not None and sample.path.parent.name != skew and index % SKEW_KEEP_EVERY:
            continue
        target = folder / "Validation" / sample.path.parent.name / sample.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(sample.path.resolve())
    return folder


def measure(bundle: Path, data: Path, work: Path, skew: str | None = None) -> dict[str, Any]:
    """Accuracy on the validation split before and after adapting to it, and what adapt decided."""
    model = braintumor.load(bundle)
    root = validation_tree(model, data, work / "data", skew)
    before = model.evaluate(root, "Validation", work / "before")
    adaptation = braintumor.adapt(bundle, root / "Validation", work / "adapted", show_progress=False)
    after = adaptation.bundle.evaluate(root, "Validation", work / "after")
    change = 100.0 * (after.accuracy - before.accuracy)
    return {
        "bundle": str(bundle),
        "recipe": model.name,
        "skew": skew,
        "method": adaptation.record.method,
        "applied": adaptation.applied,
        "evidence": adaptation.evidence.to_dict(),
        "n_images": before.metrics.n_images,
        "accuracy_before": before.accuracy,
        "accuracy_after": after.accuracy,
        "change_points": round(change, 2),
        "target_points": TARGET_POINTS,
        "met": abs(change) <= TARGET_POINTS,
        # Worse by more than the target: the harm the gate must prevent (a gain, e.g. EM on a prior shift, is not).
        "harmed": change < -TARGET_POINTS,
    }


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--bundle", type=Path, action="append", required=True, help="A bundle (repeatable).")
    parser.add_argument("--skew", action="append", default=[], help="Also a site skewed to this class folder.")
    parser.add_argument("--out", type=Path, default=None, help="Write the rows as JSON here.")
    args = parser.parse_args()
    rows = []
    for bundle in args.bundle:
        for skew in [None, *args.skew]:
            with tempfile.TemporaryDirectory() as work:
                rows.append(measure(bundle, args.data, Path(work), skew))
            _print_row(rows[-1])
    if args.out:
        options = [option("--data", args.data), *[f"--bundle {b}" for b in args.bundle]]
        options += [*[f"--skew {c}" for c in args.skew], option("--out", args.out)]
        write_json(args.out, {"command": command_line("adapt_in_distribution.py", *options), "rows": rows})


def _print_row(row: dict[str, Any]) -> None:
    site = "validation" if row["skew"] is None else f"validation skewed to {row['skew']} ({row['n_images']} images)"
    print(
        f"{row['recipe']} on {site}: {row['method']} applied {row['applied'] or 'nothing'}; validation accuracy "
        f"{row['accuracy_before']:.2%} -> {row['accuracy_after']:.2%} ({row['change_points']:+.2f} points, "
        f"within {TARGET_POINTS}: {'yes' if row['met'] else 'no'}; {'HARMED' if row['harmed'] else 'no harm'})\n"
        f"  {row['evidence']['explanation']}"
    )


if __name__ == "__main__":
    main()
