"""The batch engine's defaults, importable without torch (the CLI's help texts read them)."""

# Images per shard: a killed run loses at most this much work per part, and each shard file stays small.
DEFAULT_SHARD_SIZE = 256
# local: this process; ray: a Ray cluster (``pip install 'braintumor[ray]'``).
ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"
