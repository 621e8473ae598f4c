"""Atomic file writes: a crash or a full disk never leaves a half-written JSON file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
