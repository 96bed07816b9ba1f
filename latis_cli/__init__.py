"""latis_cli: the `latis` command. Commands import their heavy modules when run."""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """Run the `latis` command line."""
    from ._app import app
    from ._failure import guard

    guard(app.meta)
