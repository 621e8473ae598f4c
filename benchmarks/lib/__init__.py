"""The experiments behind the recipes' choices, as plain functions the benchmark scripts call.

Not part of the installed package: the scripts import it as ``lib`` (their own folder is on ``sys.path``).

- :mod:`lib.features`: frozen-backbone features (pooled, multi-level, restyled) of image tensors.
- :mod:`lib.probes`: linear probes on those features, C chosen on validation, source debiasing.
- :mod:`lib.source_holdout`: the source hold-out, a Training-only proxy for Testing's shift.
- :mod:`lib.site_adaptation`: the site-adaptation proxy and 2-fold cross-adaptation.
- :mod:`lib.cache_speed`: timing of training steps on images against cached features.
- :mod:`lib.cpu_speed`: throughput of the product's CPU paths (training, frozen features, evaluation).
- :mod:`lib.near_ood`: near inputs for the input guard (other modalities and body parts rendered from physics,
  brain MRIs unlike the training slices).
"""
