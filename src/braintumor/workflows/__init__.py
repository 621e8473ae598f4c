"""The only layer that writes model bundles: train, calibrate, fit the input guard, ensemble, adapt, export.

Everything below this layer (inference, evaluation, explain, adaptation maths, training mechanics) and above it
(the public API, serving, the CLI) reads bundles; the architecture test checks that nothing else writes one.
"""
