"""Data audit stage: exact and near copies, train/test leakage, label conflicts, the source shortcut.

Modules, from the bottom up:

- :mod:`~braintumor.auditing.constants`: file names, format, statuses and defaults (light, for the CLI's help);
- :mod:`~braintumor.auditing.similarity`: whole-image NCC candidate search and the aligned detail check;
- :mod:`~braintumor.auditing.cache`: what was computed per file and per candidate pair, reused by the next audit;
- :mod:`~braintumor.auditing.scan`: reading every file once (digest, header, size, thumbnails);
- :mod:`~braintumor.auditing.exact_copies`: byte-identical groups, what training drops, label conflicts;
- :mod:`~braintumor.auditing.near_copies`: which files are compared across splits, the pairs and groups;
- :mod:`~braintumor.auditing.source_shortcut`: whether image size predicts the class;
- :mod:`~braintumor.auditing.leakage`: each evaluation file's status and the counts per split;
- :mod:`~braintumor.auditing.audit_file`: ``audit.json`` read back and the clean subset evaluation uses;
- :mod:`~braintumor.auditing.report`: ``audit.html`` and the scores plot;
- :mod:`~braintumor.auditing.run`: :func:`~braintumor.auditing.run.run_audit` runs the rest and writes the outputs.
"""
