"""The scale benchmark: a tree built once is kept, and re-measuring some stages keeps the others' provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

benchmark = load_benchmark("scale")


def test_a_built_tree_is_kept_and_a_damaged_one_is_built_again(synthetic_root: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    benchmark.build_tree(synthetic_root, tree, 5)
    images = sorted((tree / "Training").rglob("*.jpg"))
    assert len(images) == 5 and benchmark._built(tree, 5) and not benchmark._built(tree, 6)
    stamps = [path.stat().st_mtime_ns for path in images]
    benchmark.build_tree(synthetic_root, tree, 5)
    assert [path.stat().st_mtime_ns for path in images] == stamps  # kept, not written again
    last = max(images, key=lambda path: path.name)
    last.write_bytes(last.read_bytes()[:100])  # a build killed while writing its last image
    assert not benchmark._built(tree, 5)
    benchmark.build_tree(synthetic_root, tree, 5)
    assert benchmark._built(tree, 5)


def _stage(rss: float) -> dict[str, float]:
    return {"seconds": 1.0, "peak_rss_mb": rss, "images_per_s": 10.0}


def test_re_measured_stages_replace_theirs_and_the_others_keep_their_command(tmp_path: Path) -> None:
    committed = tmp_path / "scale.json"
    earlier = {size: {stage: _stage(100.0) for stage in benchmark.STAGES} for size in ("3", "30")}
    committed.write_text(json.dumps({"sizes": [3, 30], "results": earlier, "command": "python old", "date": "d0"}))
    merged = benchmark.merge_committed({3: {"audit": _stage(50.0)}, 30: {"audit": _stage(60.0)}}, [3, 30], committed)
    assert merged[30]["audit"]["peak_rss_mb"] == 60.0 and "measured_by" not in merged[30]["audit"]
    assert merged[30]["train"]["measured_by"] == "python old" and merged[30]["train"]["date"] == "d0"
    caption = benchmark.provenance(merged, [3, 30], "Produced by `python new`.")
    assert "The train, evaluate, predict rows: measured by `python old`, d0." in caption
    with pytest.raises(SystemExit, match="sizes"):
        benchmark.merge_committed({4: {}}, [4], committed)
