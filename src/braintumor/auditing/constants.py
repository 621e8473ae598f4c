"""The audit's file names, format, statuses and defaults: light, so the CLI's help can quote them."""

from __future__ import annotations

from pathlib import Path

AUDIT_FORMAT = "braintumor-audit"
AUDIT_VERSION = 1
AUDIT_FILE = "audit.json"
REPORT_FILE = "audit.html"
SCORES_PLOT_FILE = "near_duplicate_scores.png"
DEFAULT_AUDIT_ROOT = Path("audits")
# The audit cache (braintumor.auditing.cache): <audit folder>/cache/audit_cache.sqlite unless --cache names a folder.
CACHE_DIR_NAME = "cache"
CACHE_FILE = "audit_cache.sqlite"
REFERENCE_SPLIT = "Training"
QUERY_SPLITS = ("Validation", "Testing")
# Aligned fine-detail NCC at or above this marks a near copy. On the Sartaj data copies score >= 0.927
# and the closest different images (neighbouring slices of one scan) <= 0.851; docs/audit.md shows both sides.
DEFAULT_NEAR_THRESHOLD = 0.89
DEFAULT_CANDIDATES = 3
# Candidates under this whole-image NCC are not checked: the lowest-scoring real copy was 0.71.
CANDIDATE_FLOOR = 0.5
CHECK_CHUNK = 4096

STATUS_CLEAN = "clean"
STATUS_EXACT = "exact_copy"
STATUS_NEAR = "near_copy"
STATUS_UNDECODABLE = "undecodable"
# --exact-only: no byte-identical Training copy, but near copies were not searched, so not "clean".
STATUS_NO_EXACT = "no_exact_copy"
