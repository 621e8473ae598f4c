"""Defaults of volume prediction, importable without torch (the CLI's help texts read them).

Example:
    >>> DEFAULT_SLICE_THRESHOLD, DEFAULT_MIN_CONSECUTIVE
    (0.5, 3)
"""

from __future__ import annotations

# Fixed before any volume was seen (no labelled volumes exist here; the Testing split chooses nothing):
# a slice counts for a tumour class at even odds or better ...
DEFAULT_SLICE_THRESHOLD = 0.5
# ... and three neighbouring slices (3-7.5 mm at usual spacings) make a lesion rather than one noisy slice.
DEFAULT_MIN_CONSECUTIVE = 3
# Slices in the montage of `predict --montage` and `explain` on a volume.
DEFAULT_MONTAGE_SLICES = 6
