"""Output: rich consoles made on first use, colour only where it belongs.

Colour goes to a terminal only: never when the stream is not a TTY, when
`NO_COLOR` is set (non-empty), with `--no-color`/`LATIS_NO_COLOR`, or with
`TERM=dumb`; `FORCE_COLOR` forces it on. Data goes to stdout, messages and
progress to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def _colour(stream: Any) -> bool | None:
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("NO_COLOR") or os.environ.get("LATIS_NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb" or not stream.isatty():
        return False
    return None  # rich decides (it is a terminal)


@cache
def out() -> Console:
    """The console for data (stdout)."""
    from rich.console import Console

    colour = _colour(sys.stdout)
    return Console(no_color=colour is False, force_terminal=colour, highlight=False)


@cache
def err() -> Console:
    """The console for messages and progress (stderr)."""
    from rich.console import Console

    colour = _colour(sys.stderr)
    return Console(stderr=True, no_color=colour is False, force_terminal=colour, highlight=False)


#: Rows past which a table is laid out by hand: rich takes ~1 ms a row (2 s for
#: `latis status` with 2,000 units), plain columns a microsecond.
PLAIN_ROWS = 200


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a borderless table to stdout (rich's layout: a space either side of each cell).

    A long one, or one that is not for a terminal, is laid out without rich; so are
    its header's styles (none off a terminal anyway).
    """
    # Off a terminal rich would wrap a long cell (an error) over lines at 80 columns:
    # plain, a row is one line, for grep and awk.
    if len(rows) <= PLAIN_ROWS and sys.stdout.isatty():
        from rich.table import Table

        table = Table(*columns, box=None)
        for row in rows:
            table.add_row(*row)
        out().print(table)
        return
    cells = list(zip(*rows, strict=True)) if rows else [()] * len(columns)
    widths = [max(len(c), max(map(len, col), default=0))
              for c, col in zip(columns, cells, strict=True)]
    # One format per line (10,000 units: one call a row, not one a cell).
    line = " " + "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [line.format(*columns).rstrip()]
    lines += [line.format(*row).rstrip() for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")


def fail(message: str) -> None:
    """Say what went wrong, on stderr."""
    err().print(f"[bold red]latis:[/] {message}" if _colour(sys.stderr) is not False
                else f"latis: {message}", markup=_colour(sys.stderr) is not False)


def print_json(data: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress(title: str, *, keep: bool = False, quiet: bool = False) -> Iterator[Any]:
    """A spinner with a changing message on stderr (on a terminal only); yields `update(text)`.

    With `keep`, each message also stays, as a line above the spinner (long work:
    a VM that boots, a cloud instance that dials home); `quiet` shows nothing.
    """
    if quiet or not sys.stderr.isatty():
        yield lambda text: None
        return
    from rich.markup import escape

    console = err()
    with console.status(title) as status:

        def say(text: str) -> None:
            if keep:
                console.print(f"[dim]{escape(text)}[/]")
            status.update(text)

        yield say
