"""What every benchmark script shares: the data and weights options, and the line that says how a table was made."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path


def data_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser (described by the script's docstring) with ``--data`` and ``--weights-dir``."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("BRAINTUMOR_DATA", "../shared/data/brain-tumor-mri"))
    )
    parser.add_argument("--weights-dir", type=Path, default=None, help="Sets BRAINTUMOR_WEIGHTS_DIR.")
    return parser


def use_weights_dir(args: argparse.Namespace) -> None:
    """Point the pretrained-weight lookup at ``--weights-dir`` when it was given."""
    if args.weights_dir:
        os.environ["BRAINTUMOR_WEIGHTS_DIR"] = str(args.weights_dir.resolve())


def produced_by(command: str, details: str = "") -> str:
    """The provenance line under a results table: the command, the machine and the date."""
    return (
        f"Produced by `{command}` on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{details}{time.strftime('%Y-%m-%d')}."
    )
