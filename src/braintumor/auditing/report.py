"""The audit's human report: one self-contained ``audit.html`` (images inlined) and a scores plot.

The report shows the summary tables, every label conflict, and example pairs side by side: exact
copies across splits, whole-image near copies, aligned (cropped or padded) near copies, and the
closest pairs the audit did *not* call copies, so a reader can judge the threshold from both sides.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from braintumor.auditing.run import run_audit
    >>> from braintumor.data.synthetic import make_synthetic_dataset
    >>> root = make_synthetic_dataset(tempfile.mkdtemp(), per_class=2, size=32)
    >>> result = run_audit(root, tempfile.mkdtemp(), show_progress=False)
    >>> sorted(name for name in result.outputs if not name.endswith(".txt"))
    ['audit.html', 'audit.json', 'near_duplicate_scores.png']
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image, ImageOps

from braintumor.auditing.constants import REPORT_FILE, SCORES_PLOT_FILE
from braintumor.data.images import load_image_rgb
from braintumor.errors import ImageDecodeError

PAIR_HEIGHT = 200
EXAMPLES_PER_KIND = 3

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 520px; }
figcaption { font-size: 0.85em; color: #444; word-break: break-all; }
img { max-width: 100%; }
.warning { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.4em 0.8em; }
.bad { color: #b00020; font-weight: bold; }
code { font-size: 0.9em; }
"""


def _escape(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=85)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _side_by_side(root: Path, left: str, right: str) -> str | None:
    """Both images at the same height with a white gap, as an inline JPEG (None if one cannot be read)."""
    try:
        images = [load_image_rgb(root / left), load_image_rgb(root / right)]
    except ImageDecodeError:
        return None
    scaled = [ImageOps.contain(im, (PAIR_HEIGHT * 4, PAIR_HEIGHT)) for im in images]
    scaled = [im.resize((max(1, round(im.width * PAIR_HEIGHT / im.height)), PAIR_HEIGHT)) for im in scaled]
    gap = 12
    canvas = Image.new("RGB", (scaled[0].width + gap + scaled[1].width, PAIR_HEIGHT), "white")
    canvas.paste(scaled[0], (0, 0))
    canvas.paste(scaled[1], (scaled[0].width + gap, 0))
    return _data_uri(canvas)


def _figure(root: Path, left: str, right: str, caption: str) -> str:
    uri = _side_by_side(root, left, right)
    picture = f'<img src="{uri}" alt="{_escape(left)} | {_escape(right)}">' if uri else "<p>(image unreadable)</p>"
    return f"<figure>{picture}<figcaption>{caption}</figcaption></figure>"


def _pair_caption(pair: dict[str, Any]) -> str:
    conflict = ' <span class="bad">label conflict</span>' if pair.get("label_conflict") else ""
    how = "aligned (crop/pad/shift)" if pair["aligned"] else "whole image"
    mirrored = ", mirrored" if pair["mirrored"] else ""
    return (
        f"left: <code>{_escape(pair['query'])}</code> ({_escape(pair['query_class'])})<br>"
        f"right: <code>{_escape(pair['reference'])}</code> ({_escape(pair['reference_class'])})<br>"
        f"whole-image NCC {pair['whole_image_ncc']:.4f}, detail NCC {pair['detail_ncc']:.4f} "
        f"({how}{mirrored}){conflict}"
    )


def plot_scores(candidates: Sequence[dict[str, Any]], threshold: float, path: Path) -> Path:
    """Whole-image NCC against aligned detail NCC for every checked pair, with the decision threshold.

    Args:
        candidates: the checked pairs, as ``audit.json["near_duplicates"]["candidates"]`` holds them.
        threshold: the detail NCC from which a pair is a near copy.
        path: the PNG to write.
    """
    figure, axis = plt.subplots(figsize=(7, 5))
    for near, colour, label in ((False, "#888888", "not a copy"), (True, "#d62728", "near copy")):
        chosen = [c for c in candidates if c["near_copy"] == near]
        axis.scatter(
            [c["whole_image_ncc"] for c in chosen],
            [c["detail_ncc"] for c in chosen],
            s=12,
            alpha=0.7,
            color=colour,
            label=f"{label} ({len(chosen)})",
        )
    axis.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axis.set(
        xlabel="whole-image NCC (64 px thumbnails, candidate search)",
        ylabel="aligned fine-detail NCC (128 px)",
        title="Candidate pairs: query split vs Training",
    )
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _summary_section(audit: dict[str, Any]) -> str:
    splits = audit["splits"]
    rows = [
        [
            name,
            s["files"],
            s["decodable"],
            s["undecodable"],
            s["exact_duplicate_groups"],
            s["redundant_exact_copies"],
            s["distinct_sizes"],
            ", ".join(f"{k} {v}" for k, v in s["modes"].items()),
        ]
        for name, s in splits.items()
    ]
    parts = [
        "<h2>Splits</h2>",
        _table(
            [
                "split",
                "files",
                "decodable",
                "undecodable",
                "exact-copy groups inside",
                "redundant copies inside",
                "distinct sizes",
                "modes",
            ],
            rows,
        ),
    ]
    class_names = list(next(iter(splits.values()))["classes"])
    parts.append(_table(["split", *class_names], [[n, *s["classes"].values()] for n, s in splits.items()]))
    parts.append(_size_section(audit))
    drop = audit.get("training_drop")
    if drop:
        parts.append(
            f"<p><code>braintumor train</code> drops {drop['removed_copies']} byte-identical copies inside "
            f"Training by default (<code>data.drop_train_duplicates</code>)"
            + (
                f" and {drop['removed_label_conflicts']} files whose copies disagree on the label"
                if drop["removed_label_conflicts"]
                else ""
            )
            + ".</p>"
        )
    return "".join(parts)


def _size_section(audit: dict[str, Any]) -> str:
    sizes = audit.get("size_by_class")  # audits written before this check have none
    if not sizes or not sizes["common_size"]:
        return ""
    class_names = list(next(iter(sizes["splits"].values())))
    rows = [
        [split, *(f"{c['common_size']} / {c['files']}" for c in classes.values())]
        for split, classes in sizes["splits"].items()
    ]
    parts = [
        f"<h3>Images at {_escape(sizes['common_size'])} (the most common size in Training), per class</h3>",
        _table(["split", *class_names], rows),
    ]
    parts += [f"<p class='warning'><b>Warning:</b> {_escape(w)}.</p>" for w in sizes["warnings"]]
    return "".join(parts)


def _leakage_section(audit: dict[str, Any]) -> str:
    parts = ["<h2>Leakage into the evaluation splits</h2>"]
    exact = audit["exact_duplicates"]
    parts.append(
        f"<p>{exact['cross_split_groups']} groups of byte-identical files span Training and another split; "
        f"{len(audit['near_duplicates']['pairs'])} near-copy pairs (detail NCC &ge; "
        f"{audit['settings']['near_threshold']:g}) were confirmed.</p>"
    )
    for split, summary in audit["leakage"].items():
        searched = summary["near_search"]

        def row(name: str, counts: dict[str, int], files: int, searched: bool = searched) -> list[Any]:
            near, clean = (counts["near_copy"], counts["clean"]) if searched else ("not searched", "not searched")
            return [name, files, counts["exact_copy"], near, clean, counts["undecodable"]]

        rows = [row(name, v, sum(v.values())) for name, v in summary["by_class"].items()]
        rows.append(row("all", summary, summary["files"]))
        parts.append(f"<h3>{_escape(split)}</h3>")
        parts.append(
            _table(
                ["class", "files", "exact copy in Training", "near copy in Training (only)", "clean", "undecodable"],
                rows,
            )
        )
        if summary["manifest"]:
            parts.append(
                f"<p>Clean manifest: <code>{_escape(summary['manifest'])}</code> ({summary['clean']} files).</p>"
            )
        else:
            parts.append(
                f"<p>Near copies were not searched (<code>--exact-only</code>): "
                f"{summary['no_exact_copy']} files have no byte-identical copy in Training, "
                f"and no clean manifest was written.</p>"
            )
    return "".join(parts)


def _examples_section(audit: dict[str, Any], root: Path) -> str:
    near = audit["near_duplicates"]
    pairs = sorted(near["pairs"], key=lambda p: p["detail_ncc"])
    parts = ["<h2>Example pairs (left: evaluation split, right: Training)</h2>"]
    cross = [g for g in audit["exact_duplicates"]["groups"] if g["cross_split"]][:EXAMPLES_PER_KIND]
    if cross:
        parts.append("<h3>Byte-identical across splits</h3>")
        for group in cross:
            query = next(f for f in group["files"] if f["split"] != "Training")
            reference = next(f for f in group["files"] if f["split"] == "Training")
            caption = (
                f"<code>{_escape(query['path'])}</code> = <code>{_escape(reference['path'])}</code> "
                f"({len(group['files'])} files in the group)"
            )
            parts.append(_figure(root, query["path"], reference["path"], caption))
    kinds = (
        (
            "Near copies, whole image (re-encoded, resized, mirrored or intensity-changed)",
            [p for p in pairs if not p["aligned"] and not p["label_conflict"]],
        ),
        (
            "Near copies after alignment (cropped, padded or shifted)",
            [p for p in pairs if p["aligned"] and not p["label_conflict"]],
        ),
        ("Near copies whose labels disagree", [p for p in pairs if p["label_conflict"]]),
    )
    for title, chosen in kinds:
        if chosen:
            parts.append(f"<h3>{_escape(title)}: {len(chosen)} pairs, the lowest-scoring shown</h3>")
            parts.extend(
                _figure(root, p["query"], p["reference"], _pair_caption(p))
                for p in chosen[: EXAMPLES_PER_KIND + (3 if "disagree" in title else 0)]
            )
    rejected = sorted((c for c in near["candidates"] if not c["near_copy"]), key=lambda c: -c["detail_ncc"])
    if rejected:
        parts.append("<h3>Closest pairs not called copies (highest detail NCC under the threshold)</h3>")
        parts.extend(
            _figure(root, c["query"], c["reference"], _pair_caption(c)) for c in rejected[: EXAMPLES_PER_KIND + 1]
        )
    return "".join(parts)


def _lists_section(audit: dict[str, Any]) -> str:
    parts = []
    conflicts = audit["label_conflicts"]
    parts.append(f"<h2>Label conflicts ({len(conflicts)})</h2>")
    if conflicts:
        rows = []
        for c in conflicts:
            if c["kind"] == "exact":
                rows.append(["exact", "; ".join(f"{f['path']} ({f['class']})" for f in c["files"]), ""])
            else:
                rows.append(
                    [
                        "near",
                        f"{c['query']} ({c['query_class']}); {c['reference']} ({c['reference_class']})",
                        f"{c['detail_ncc']:.4f}",
                    ]
                )
        parts.append(_table(["kind", "files", "detail NCC"], rows))
    undecodable = audit["undecodable"]
    parts.append(f"<h2>Undecodable files ({len(undecodable)})</h2>")
    if undecodable:
        parts.append(_table(["file", "reason"], [[u["path"], u["reason"]] for u in undecodable]))
    near_pairs = audit["near_duplicates"]["pairs"]
    parts.append(f"<details><summary>All {len(near_pairs)} near-copy pairs</summary>")
    parts.append(
        _table(
            ["evaluation file", "Training file", "whole-image NCC", "detail NCC", "aligned", "mirrored"],
            [
                [
                    p["query"],
                    p["reference"],
                    f"{p['whole_image_ncc']:.4f}",
                    f"{p['detail_ncc']:.4f}",
                    p["aligned"],
                    p["mirrored"],
                ]
                for p in near_pairs
            ],
        )
    )
    parts.append("</details>")
    cross = [g for g in audit["exact_duplicates"]["groups"] if g["cross_split"]]
    parts.append(f"<details><summary>All {len(cross)} byte-identical groups across splits</summary>")
    parts.append(_table(["files"], [["; ".join(f["path"] for f in g["files"])] for g in cross]))
    parts.append("</details>")
    return "".join(parts)


def write_audit_report(audit: dict[str, Any], root: Path, out_dir: Path) -> dict[str, Path]:
    """Write ``audit.html`` and ``near_duplicate_scores.png`` into ``out_dir``; returns name -> path.

    Args:
        audit: the audit, as :func:`braintumor.auditing.run.run_audit` builds it.
        root: the data root the example images are read from.
        out_dir: the audit folder.
    """
    outputs: dict[str, Path] = {}
    settings = audit["settings"]
    timing = audit.get("timing", {})
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Data audit: {_escape(root.name)}</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Data audit: {_escape(root.name)}</h1>",
        f"<p>Data root <code>{_escape(audit['data_root'])}</code>, audited {_escape(audit['created'])}. "
        f"Near copies: whole-image NCC of {settings['thumbnail_size']} px grey thumbnails (plain and mirrored) "
        f"finds {settings['candidates_per_image']} candidates per image; a candidate is a copy when its aligned "
        f"fine-detail NCC at {settings['detail_size']} px is at least {settings['near_threshold']:g}. "
        f"Reading took {timing.get('read_s', 0):.1f} s, the search {timing.get('search_s', 0):.1f} s, "
        f"the checks {timing.get('check_s', 0):.1f} s.</p>",
        _summary_section(audit),
        _leakage_section(audit),
    ]
    candidates = audit["near_duplicates"]["candidates"]
    if candidates:
        plot = plot_scores(candidates, settings["near_threshold"], out_dir / SCORES_PLOT_FILE)
        outputs[SCORES_PLOT_FILE] = plot
        with Image.open(plot) as image:
            uri = _data_uri(image.convert("RGB"), "PNG")
        parts.append(f"<h2>Scores of the checked pairs</h2><img src='{uri}' alt='candidate pair scores'>")
    parts.append(_examples_section(audit, root))
    parts.append(_lists_section(audit))
    parts.append("</body></html>")
    report = out_dir / REPORT_FILE
    report.write_text("".join(parts), encoding="utf-8")
    outputs[REPORT_FILE] = report
    return outputs
