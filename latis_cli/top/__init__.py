"""`latis top`: every unit, session and waiting question on one screen, live.

This package: the command and its plain output when stdout is not a terminal
(here), the rows every view shows (`_rows`), `Feed`, the bridge to the daemon
(`_feed`), and the screen (`_screen`: textual, imported only when it is shown).

The screen never waits for the daemon: every call runs in `Feed`'s trio
thread, with a deadline, and its result comes back as an event.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from cyclopts import Parameter

from .._cmdr import ERROR, INTERRUPTED, OK, USAGE

if TYPE_CHECKING:  # (imported when run: `latis --help` imports this module)
    from ._rows import Rows

__all__ = ["top"]


# ---- the command ---------------------------------------------------------------------------


def top(
    *,
    once: bool = False,
    timeout: float = 5.0,
    refresh: float = 2.0,
    json_output: Annotated[bool, Parameter(name="--json")] = False,
) -> int:
    """The fleet on one screen: units, sessions, the inbox and one session's stream, live.

    Keys (shown at the bottom): `/` filter, `enter` open (follow a session's
    stream; answer an inbox question), `a` answer, `c` cancel the session's
    prompt, `n` a new prompt (to the session, or a new session on the unit),
    `tab` the next pane, `escape` back, `q` quit.

    Not on a terminal (a pipe, a file, `watch`), or with --once, it prints the
    three tables once and exits, like `latis status`. Every call to the daemon
    has a deadline (--timeout): a unit or daemon that does not answer leaves
    the screen as it was, with a note, and never freezes it.

    For example:
      latis top
      latis top --once
      latis top --json | jq '.sessions[] | select(.state == "waiting")'

    Args:
        once: print the tables once and exit, even on a terminal.
        timeout: seconds each call to the daemon may take.
        refresh: seconds between two reads of units, sessions and the inbox
            (besides a read at each change of a session's state).
        json_output: print the units, sessions and inbox once as JSON.
    """
    if timeout <= 0 or refresh <= 0:
        print("latis: --timeout and --refresh take seconds > 0", file=sys.stderr)
        return USAGE
    if once or json_output or not (sys.stdout.isatty() and sys.stdin.isatty()):
        return _print_once(timeout, json_output)
    from .._failure import report
    from ._feed import open_feed

    try:
        with open_feed(timeout) as feed:
            problem = feed.check_config()
            if problem is not None:
                print(problem, file=sys.stderr)
                return ERROR
            from ._screen import TopApp

            TopApp(feed, refresh=refresh).run()
        return OK
    except KeyboardInterrupt:
        return INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 (every failure ends here, as a message)
        return report(exc)


def _print_once(timeout: float, as_json: bool) -> int:
    from .._run import run_with_cmdr

    async def work(cmdr: Any) -> int:
        import trio

        parts: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            for name, call in (
                ("status", cmdr.status),
                ("inbox", cmdr.inbox_list),
                ("usage", cmdr.usage),
            ):
                nursery.start_soon(_bounded_into, parts, name, call, timeout)
        for name, value in parts.items():
            if isinstance(value, BaseException):
                from .._failure import describe

                print(f"latis: {name}: {describe(value)[0]}", file=sys.stderr)
        from ._rows import rows

        found = rows(_ok(parts.get("status")), _ok(parts.get("inbox")), _ok(parts.get("usage")))
        if as_json:
            print(json.dumps(found.as_json(), indent=2))
        else:
            _print_tables(found)
        return OK if all(not isinstance(v, BaseException) for v in parts.values()) else ERROR

    return run_with_cmdr(work)


async def _bounded_into(
    parts: dict[str, Any], name: str, call: Callable[[], Any], seconds: float
) -> None:
    import trio

    try:
        with trio.fail_after(seconds):
            parts[name] = await call()
    except trio.TooSlowError:
        parts[name] = TimeoutError(f"cmdr did not answer within {seconds:g} s")
    except Exception as exc:  # reported with the others, the rest still shows
        parts[name] = exc


def _ok(value: Any) -> Any:
    return None if isinstance(value, BaseException) else value


def _print_tables(found: Rows) -> None:
    from .._console import print_table
    from ._rows import INBOX_COLUMNS, SESSION_COLUMNS, UNIT_COLUMNS

    if not found.units:
        print(
            "no units yet: latis prompt \"hello\" brings up the built-in unit 'local'",
            file=sys.stderr,
        )
    else:
        print_table(UNIT_COLUMNS, [cells for _, cells in found.units])
    if found.sessions:
        print()
        print_table(SESSION_COLUMNS, [cells for _, cells in found.sessions])
    if found.inbox:
        print()
        print_table(INBOX_COLUMNS, [cells for _, cells in found.inbox])
    else:
        print("nothing waits for an answer", file=sys.stderr)
