"""``python -m braintumor.cli``: the same as the ``braintumor`` command."""

from braintumor.cli import main

main()
