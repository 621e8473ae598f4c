"""Data audit stage: exact and near copies, train/test leakage, label conflicts, the source shortcut.

Modules, from the bottom up:

- :mod:`~braintumor.audit.constants`: file names, format, statuses and defaults (light, for the CLI's help);
- :mod:`~braintumor.audit.similarity`: whole-image NCC candidate search and the aligned detail check;
- :mod:`~braintumor.audit.cache`: what was computed per file and per candidate pair, reused by the next audit;
- :mod:`~braintumor.audit.scan`: reading every file once (digest, header, size, thumbnails);
- :mod:`~braintumor.audit.exact_copies`: byte-identical groups, what training drops, label conflicts;
- :mod:`~braintumor.audit.near_copies`: which files are compared across splits, the pairs and groups;
- :mod:`~braintumor.audit.source_shortcut`: whether image size predicts the class;
- :mod:`~braintumor.audit.leakage`: each evaluation file's status and the counts per split;
- :mod:`~braintumor.audit.audit_file`: ``audit.json`` read back and the clean subset evaluation uses;
- :mod:`~braintumor.audit.report`: ``audit.html`` and the scores plot;
- :mod:`~braintumor.audit.run`: :func:`~braintumor.audit.run.run_audit`, which runs the rest and writes the outputs.
"""
