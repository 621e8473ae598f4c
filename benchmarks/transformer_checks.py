"""A trained vision transformer bundle end to end: explanations, their sanity checks, the server and ONNX.

For a ViT bundle (``vit-tiny``, ``vit-tiny-deit``, ...), on the first ``--per-class`` images of each class folder
of ``--split`` (Testing by default: nothing is chosen here, the split is only read):

- ``Bundle.explain`` with Grad-CAM on the last block's patch tokens and attention rollout, with the model and label
  randomisation tests and the deletion curves (``sanity.json``);
- ``POST /v1/explain`` for each method through the FastAPI app (PyTorch backend): status and content type;
- ONNX: a fresh export of the bundle's network with its parity check, then the probabilities of the exported graph
  (onnxruntime) against PyTorch's in fp32 on the same images.

    python benchmarks/transformer_checks.py runs/seed-table/vit-tiny-deit/bundle --data ../shared/data/brain-tumor-mri
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import command_line, data_parser, markdown_header, markdown_row, option, produced_by, write_json

import braintumor
from braintumor.data.layout import discover_split

METHODS = ("gradcam", "rollout")


def _images(data: Path, split: str, per_class: int) -> list[Path]:
    """The first ``per_class`` files of each class, in the split's own (sorted) order."""
    samples = discover_split(data, split)
    chosen: list[Path] = []
    for label in sorted({sample.label for sample in samples}):
        chosen += [Path(sample.path) for sample in samples if sample.label == label][:per_class]
    return chosen


def _sanity_rows(sanity: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for method, values in sanity["methods"].items():
        model, labels, deletion = values["randomisation"], values.get("label_randomisation"), values["deletion"]
        rows.append(
            {
                "method": method,
                "model_randomisation": model["mean_abs_rank_correlation"],
                "model_passed": model["passed"],
                "label_randomisation": labels["mean_abs_rank_correlation"] if labels else None,
                "label_passed": labels["passed"] if labels else None,
                "label_scope": labels["scope"] if labels else None,
                "label_note": labels.get("note") if labels else None,
                "label_images": labels["n_labelled"] if labels else None,
                "label_fit_accuracy": labels["fit_accuracy"] if labels else None,
                "deletion_auc": deletion["auc_attributed"],
                "deletion_auc_random": deletion["auc_random"],
                "deletion_passed": deletion["passed"],
            }
        )
    return rows


def _server(bundle_dir: Path, image: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from braintumor.serving.app import create_app
    from braintumor.serving.settings import ServeSettings

    client = TestClient(create_app(bundle_dir, ServeSettings(backend="torch")))
    answers = {}
    for method in METHODS:
        start = time.perf_counter()
        response = client.post(
            f"/v1/explain?method={method}", files={"file": (image.name, image.read_bytes(), "image/jpeg")}
        )
        answers[method] = {
            "status": response.status_code,
            "content_type": response.headers.get("content-type"),
            "bytes": len(response.content),
            "seconds": round(time.perf_counter() - start, 2),
        }
    return answers


def _probabilities(predictor: Any, images: list[Path]) -> np.ndarray:
    predictions, _ = predictor.predict_paths(images)
    return np.array([list(prediction.probabilities.values()) for prediction in predictions])


def _onnx(bundle: braintumor.Bundle, images: list[Path]) -> dict[str, Any]:
    from braintumor.inference.onnx_export import OnnxPredictor, export_onnx
    from braintumor.inference.predictor import Predictor

    with tempfile.TemporaryDirectory() as folder:
        exported = export_onnx(bundle.stored, out=Path(folder) / "model.onnx")
        torch_probabilities = _probabilities(Predictor(bundle.stored, precision="32"), images)
        onnx_probabilities = _probabilities(OnnxPredictor(bundle.stored, onnx_path=exported.path), images)
    return {
        "export_max_abs_diff": exported.max_abs_diff,
        "export_passed": exported.passed,
        "images_max_abs_diff": float(np.abs(torch_probabilities - onnx_probabilities).max()),
        "same_classes": bool((torch_probabilities.argmax(1) == onnx_probabilities.argmax(1)).all()),
    }


def _label_details(row: dict[str, Any]) -> str:
    """What the label test re-fitted, on how many images, how well it memorised their shuffled labels."""
    if row["label_scope"] is None:
        return "not run"
    details = f"{row['label_scope']}; {row['label_images']} images, fit {row['label_fit_accuracy']:.0%}"
    return details + (f"; {row['label_note']}" if row["label_note"] else "")


def _markdown(result: dict[str, Any], command: str) -> str:
    lines = [f"`{result['recipe']}` on {result['n_images']} {result['split']} images (layer `{result['layer']}`):", ""]
    lines += markdown_header(["method", "model randomisation", "label randomisation", "deletion AUC: map vs random"])
    verdict = {True: "pass", False: "**FAIL**", None: "-"}
    for row in result["sanity"]:
        label = "-" if row["label_randomisation"] is None else f"{row['label_randomisation']:.3f}"
        cells = [
            row["method"],
            f"{row['model_randomisation']:.3f}, {verdict[row['model_passed']]}",
            f"{label}, {verdict[row['label_passed']]} ({_label_details(row)})",
            f"{row['deletion_auc']:.3f} vs {row['deletion_auc_random']:.3f}, {verdict[row['deletion_passed']]}",
        ]
        lines.append(markdown_row(cells))
    server = ", ".join(f"{m}: {a['status']} {a['content_type']}" for m, a in result["server"].items())
    onnx = result["onnx"]
    lines += [
        "",
        f"`/v1/explain`: {server}. ONNX: export parity {onnx['export_max_abs_diff']:.1e} "
        f"({'pass' if onnx['export_passed'] else 'FAIL'}); on these images max |p_onnx - p_torch| = "
        f"{onnx['images_max_abs_diff']:.1e}, same classes: {onnx['same_classes']}.",
        "",
        produced_by(command),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = data_parser(__doc__)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--split", default="Testing")
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Markdown results (default: benchmarks/results/...).")
    args = parser.parse_args()
    bundle = braintumor.Bundle(args.bundle)
    images = _images(args.data, args.split, args.per_class)
    with tempfile.TemporaryDirectory() as folder:
        explanation = bundle.explain(images, Path(folder) / "maps", method=",".join(METHODS), sanity=True)
    if explanation.sanity is None:
        raise SystemExit("no image was explained: every one was flagged or skipped")
    result = {
        "recipe": bundle.name,
        "split": args.split,
        "n_images": explanation.sanity["n_images"],
        "layer": explanation.sanity["layer"],
        "flagged": explanation.flagged,
        "sanity": _sanity_rows(explanation.sanity),
        "server": _server(args.bundle, images[0]),
        "onnx": _onnx(bundle, images),
    }
    command = command_line(
        "transformer_checks.py",
        str(args.bundle),
        option("--data", args.data),
        option("--split", args.split, "Testing"),
        option("--per-class", args.per_class, 2),
    )
    out = args.out or Path("benchmarks/results") / f"transformer_checks_{bundle.name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_markdown(result, command), encoding="utf-8")
    write_json(out.with_suffix(".json"), {**result, "produced_by": produced_by(command)})
    print(out.read_text())


if __name__ == "__main__":
    main()
