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

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from braintumor.data.dataset import drop_exact_duplicates, load_images, stratified_split
from braintumor.data.layout import discover_split
from braintumor.data.preprocessing import Preprocessing, eval_transform
from braintumor.models.pretrained import create_backbone

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@torch.inference_mode()
def _features(backbone: torch.nn.Module, images: torch.Tensor, prep: Preprocessing) -> np.ndarray:
    transform = eval_transform(prep)
    return torch.cat([backbone(transform(images[i : i + 64])) for i in range(0, len(images), 64)]).numpy()


def _probe(variant: str, data: Path) -> dict:
    backbone_name, size, crop, intensity = variant.split(":")
    prep = Preprocessing(
        image_size=int(size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop=crop, intensity=intensity
    )
    started = time.perf_counter()
    training, _ = drop_exact_duplicates(load_images(discover_split(data, "Training"), prep, show_progress=False))
    testing = load_images(discover_split(data, "Testing"), prep, show_progress=False)
    train_idx, val_idx = stratified_split(training.labels, 0.15, 42)
    backbone = create_backbone(backbone_name, pretrained=True, weights=None).eval()
    features, test_features = _features(backbone, training.images, prep), _features(backbone, testing.images, prep)
    labels, test_labels = training.labels.numpy(), testing.labels.numpy()
    scaler = StandardScaler().fit(features[train_idx])
    best: dict | None = None
    for c in C_GRID:
        classifier = LogisticRegression(C=c, max_iter=5000).fit(
            scaler.transform(features[train_idx]), labels[train_idx]
        )
        val_p = classifier.predict_proba(scaler.transform(features[val_idx]))
        val_loss = log_loss(labels[val_idx], val_p, labels=[0, 1, 2, 3])
        if best is None or val_loss < best["val_loss"]:
            test_p = classifier.predict_proba(scaler.transform(test_features))
            best = {
                "variant": variant,
                "C": c,
                "val_loss": float(val_loss),
                "val_accuracy": float(np.mean(val_p.argmax(1) == labels[val_idx])),
                "test_accuracy": float(np.mean(test_p.argmax(1) == test_labels)),
                "test_glioma_recall": float(np.mean(test_p.argmax(1)[test_labels == 0] == 0)),
            }
    assert best is not None
    best["seconds"] = round(time.perf_counter() - started, 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BRAINTUMOR_DATA", "../shared/data/brain-tumor-mri"))
    )
    parser.add_argument("--weights-dir", type=Path, default=None, help="Sets BRAINTUMOR_WEIGHTS_DIR.")
    parser.add_argument("--variant", action="append", required=True, help="BACKBONE:SIZE:CROP:INTENSITY")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_sweep.json"))
    args = parser.parse_args()
    if args.weights_dir:
        os.environ["BRAINTUMOR_WEIGHTS_DIR"] = str(args.weights_dir.resolve())
    rows = []
    print("| variant | C (by val loss) | val loss | val acc | test acc | test glioma recall |")
    print("|---|---|---|---|---|---|")
    for variant in args.variant:
        row = _probe(variant, args.data)
        rows.append(row)
        print(
            f"| {variant} | {row['C']:g} | {row['val_loss']:.3f} | {row['val_accuracy']:.2%} | "
            f"{row['test_accuracy']:.2%} | {row['test_glioma_recall']:.2f} |",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
