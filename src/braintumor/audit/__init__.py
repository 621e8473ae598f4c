"""Data audit stage: exact and near copies, train/test leakage, label conflicts, the source shortcut."""
