"""Atomic file writes: a crash or a full disk never leaves a half-written JSON file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_json_object(path: Path | str, expected_format: str) -> dict[str, Any] | str:
    """A JSON file's top-level object when it declares ``"format": expected_format``, else why not (a message).

    The caller raises its own error type with the message: a bundle and an audit fail differently.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.json"
        >>> _ = target.write_text('{"format": "braintumor-audit", "version": 1}')
        >>> read_json_object(target, "braintumor-audit")["version"], read_json_object(target, "other")
        (1, "not a 'other' file (no format 'other')")
    """
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"cannot read it as JSON ({error})"
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        return f"not a {expected_format!r} file (no format {expected_format!r})"
    return payload


def write_json_atomic(path: Path | str, payload: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "sub" / "record.json"
        >>> write_json_atomic(target, {"accuracy": 0.8})
        >>> json.loads(target.read_text())
        {'accuracy': 0.8}
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
        temporary = Path(f.name)
    temporary.replace(path)
