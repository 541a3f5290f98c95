"""Command-line interface (typer). Thin: builds the same configs and calls the same verbs."""


def main() -> None:
    """Entry point of the ``lowbit`` console script."""
    from .app import run

    run()
