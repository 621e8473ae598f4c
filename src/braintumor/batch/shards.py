"""The output folder of a batch: its manifest, the shard files, and reading them back.

::

    OUT/
      manifest.json                          what the batch is: bundle, settings, inputs (their SHA-256), parts
      inputs.txt                             the inputs in plan order (row ``item`` i is line i + 1)
      part-00000-of-00002/shard-00000.parquet  rows of one shard (and shard-00000.csv, the same rows)
      ...
      summary.json, studies.parquet/.csv     once every shard of every part is written

A shard is written to a hidden temporary file and renamed into place (CSV first, Parquet last), so a shard whose
Parquet file exists is complete: a run that starts again skips it. A run into an output folder whose manifest
describes another batch (other inputs, bundle or settings) is refused rather than mixed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from braintumor.batch.plan import BatchPlan, Shard
from braintumor.batch.records import STUDY_FIELDS
from braintumor.errors import BrainTumorError
from braintumor.io import write_json_atomic

MANIFEST_FILE = "manifest.json"
INPUTS_FILE = "inputs.txt"
SUMMARY_FILE = "summary.json"
MANIFEST_FORMAT = "braintumor-batch"
# What must match for a run to continue an output folder (the rest of the manifest is information).
_IDENTITY_KEYS = ("inputs", "inputs_sha256", "num_parts", "shard_size", "model_sha256", "config_sha256", "tta")


def need_pyarrow() -> Any:
    """``pyarrow``, or a one-line error naming the install that brings it."""
    try:
        import pyarrow
    except ImportError:
        raise BrainTumorError(
            "batch prediction writes Parquet and needs pyarrow: pip install 'braintumor[ray]'"
        ) from None
    return pyarrow


def arrow_schema(class_names: Sequence[str]) -> Any:
    """The columns of every shard, typed (so an all-empty column keeps its type)."""
    pa = need_pyarrow()
    columns = [
        ("item", pa.int64()),
        ("source", pa.string()),
        ("slice_index", pa.int32()),
        ("kind", pa.string()),
        ("class_name", pa.string()),
        ("confidence", pa.float64()),
        *[(f"p_{name}", pa.float64()) for name in class_names],
        ("flagged", pa.bool_()),
        ("flag_reason", pa.string()),
        ("ood_score", pa.float64()),
        ("referred", pa.bool_()),
        ("error", pa.string()),
        ("study_key", pa.string()),
        ("study_uid", pa.string()),
        ("series_uid", pa.string()),
        ("position_mm", pa.float64()),
        ("instance_number", pa.int64()),
    ]
    assert [name for name, _ in columns[-len(STUDY_FIELDS) :]] == list(STUDY_FIELDS)
    return pa.schema(columns)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_manifest(plan: BatchPlan, bundle_dir: Path, class_names: Sequence[str], *, tta: bool) -> dict[str, Any]:
    """The manifest of a batch: what it reads, with which model and settings."""
    from braintumor.bundle import CONFIG_FILE, WEIGHTS_FILE
    from braintumor.guard import GUARD_FILE

    model_files = [bundle_dir / WEIGHTS_FILE] + [bundle_dir / GUARD_FILE] * (bundle_dir / GUARD_FILE).is_file()
    return {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "bundle": str(bundle_dir),
        # The weights and the input guard: a batch is continued only with the model that started it.
        "model_sha256": hashlib.sha256("".join(map(_file_sha256, model_files)).encode()).hexdigest(),
        "config_sha256": _file_sha256(bundle_dir / CONFIG_FILE),
        "class_names": list(class_names),
        "tta": tta,
        "inputs": len(plan.sources),
        "inputs_sha256": plan.fingerprint(),
        "num_parts": plan.num_parts,
        "shard_size": plan.shard_size,
        "assignment": "input i goes to part i % num_parts; each part's inputs are cut in order into shards",
    }


def claim_output(out_dir: Path, manifest: dict[str, Any], plan: BatchPlan) -> None:
    """Start the output folder, or check that it holds this same batch (then its written shards are kept)."""
    path = out_dir / MANIFEST_FILE
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise BrainTumorError(f"{path} cannot be read ({error}): choose a new --out-dir") from None
        changed = [key for key in _IDENTITY_KEYS if existing.get(key) != manifest[key]]
        if existing.get("format") != MANIFEST_FORMAT or changed:
            what = ", ".join(changed) or "its format"
            raise BrainTumorError(
                f"{out_dir} holds another batch (different {what}): choose a new --out-dir, or give the same "
                "inputs, bundle, --num-parts and settings to continue it"
            )
        return
    # Other jobs of the same array may be starting this folder at the same moment: their files are no reason to stop.
    foreign = [entry.name for entry in out_dir.iterdir() if not _batch_file(entry.name)] if out_dir.is_dir() else []
    if foreign:
        raise BrainTumorError(f"{out_dir} is not empty and holds no batch: choose a new or empty --out-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(out_dir / INPUTS_FILE, "".join(f"{source}\n" for source in plan.sources))
    write_json_atomic(path, manifest)


def _batch_file(name: str) -> bool:
    """Whether a name in an output folder is one a batch writes (its files, part folders, temporaries)."""
    return name in {MANIFEST_FILE, INPUTS_FILE} or name.startswith(("part-", ".")) or name.endswith(".tmp")


def temporary_path(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this process: a killed writer leaves only hidden leftovers."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = temporary_path(path)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def shard_path(out_dir: Path, shard: Shard) -> Path:
    return out_dir / shard.relative_path


def shard_done(out_dir: Path, shard: Shard) -> bool:
    """Whether the shard is written (its Parquet file is renamed into place only once complete)."""
    return shard_path(out_dir, shard).is_file()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return value


def write_shard(out_dir: Path, shard: Shard, rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> Path:
    """Write the shard's rows as CSV, then as Parquet, each through a temporary file and a rename."""
    pa = need_pyarrow()
    import pyarrow.parquet as pq

    target = shard_path(out_dir, shard)
    target.parent.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema(class_names)
    names = schema.names
    csv_target = target.with_suffix(".csv")
    csv_temporary = temporary_path(csv_target)
    with csv_temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        writer.writerows([_csv_value(row[name]) for name in names] for row in rows)
    os.replace(csv_temporary, csv_target)
    table = pa.Table.from_pylist([{name: row[name] for name in names} for row in rows], schema=schema)
    temporary = temporary_path(target)
    pq.write_table(table, temporary)
    os.replace(temporary, target)
    return target


def remove_leftovers(out_dir: Path, part_folders: Sequence[str]) -> None:
    """Delete the temporary files a killed writer left in these parts' folders (only this batch's own names)."""
    for folder in part_folders:
        for leftover in (out_dir / folder).glob(".shard-*.tmp"):
            if not _writer_alive(leftover):
                leftover.unlink(missing_ok=True)


def _writer_alive(temporary: Path) -> bool:
    """Whether the process named in a temporary file's name still runs (then it is still writing it)."""
    try:
        pid = int(temporary.name.rsplit(".", 2)[-2])
        if pid == os.getpid():
            return False
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # a process of another user: alive
        return True
    return True


def read_shards(out_dir: Path | str, columns: Sequence[str] | None = None) -> Any:
    """Every written shard of the batch in ``out_dir`` as one ``pyarrow.Table``, in plan order.

    Example (with pandas): ``read_shards("out").to_pandas()``.
    """
    need_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir = Path(out_dir)
    files = sorted(out_dir.glob("part-*-of-*/shard-*.parquet"))
    if not files:
        raise BrainTumorError(f"{out_dir} holds no written shard")
    tables = [pq.read_table(path, columns=list(columns) if columns else None) for path in files]
    table = pa.concat_tables(tables)
    if "item" in table.column_names:
        keys = [("item", "ascending")] + [("slice_index", "ascending")] * ("slice_index" in table.column_names)
        table = table.sort_by(keys)
    return table
