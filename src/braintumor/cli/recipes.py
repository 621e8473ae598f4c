"""``braintumor recipes``: the built-in recipes and what each is for."""

from __future__ import annotations


def recipes_command() -> None:
    """List the built-in recipes with their descriptions (train takes a name or a YAML path)."""
    from braintumor.cli.display import console
    from braintumor.config import list_recipes

    for name, description in list_recipes():
        console.print(f"[bold]{name}[/]: {description}", highlight=False)
