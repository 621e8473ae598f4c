"""Research stage: the experiments behind the recipes' choices, as plain functions the benchmarks call.

- :mod:`braintumor.research.features`: frozen-backbone features (pooled, multi-level, restyled) of image tensors.
- :mod:`braintumor.research.probes`: linear probes on those features, C chosen on validation, source debiasing.
- :mod:`braintumor.research.source_holdout`: the source hold-out, a Training-only proxy for Testing's shift.
- :mod:`braintumor.research.cache_speed`: timing of training steps on images against cached features.
"""
