"""The CLI's side of the daemon: exit statuses, and the daemon client's names.

The client itself (find cmdr, start it on first use, typed calls) is
`latis_core.DaemonClient` / `latis_core.open_daemon`: the CLI renders, the
library talks.
"""

from __future__ import annotations

from typing import Any

#: Exit statuses (latis help exit-codes).
OK, ERROR, USAGE, CANCELLED, AUTH, CMDR_UNREACHABLE, UNIT_UNREACHABLE = 0, 1, 2, 3, 4, 5, 6
INTERRUPTED = 130


def __getattr__(name: str) -> Any:
    # Imported on first use: `latis --help` must not import trio.
    if name in ("CmdrUnreachable", "daemon_pid", "start_daemon", "open_daemon"):
        import latis_core

        return getattr(latis_core, name)
    raise AttributeError(name)
