"""The benchmark scripts' folder on ``sys.path``, as when a script runs, so their shared package imports as ``lib``."""

from __future__ import annotations

import sys

from tests.conftest import BENCHMARKS_DIR

if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS_DIR))
