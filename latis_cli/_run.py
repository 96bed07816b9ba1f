"""Running a command against the daemon, with errors mapped to exit statuses."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ._cmdr import CMDR_UNREACHABLE, ERROR, INTERRUPTED, UNIT_UNREACHABLE


def run_with_cmdr(work: Callable[[Any], Awaitable[int]], *, autostart: bool = True) -> int:
    """Connect to the daemon (starting it if asked), run `work(client)`, map errors."""
    import trio

    async def main() -> int:
        import latis_core
        from latis_core import CmdrUnreachable, open_daemon

        try:
            async with open_daemon(autostart=autostart) as cmdr:
                return int(await work(cmdr))
        except CmdrUnreachable as exc:
            print(f"latis: {exc}", file=sys.stderr)
            return CMDR_UNREACHABLE
        except latis_core.RequestError as exc:
            print(f"latis: {exc.message}", file=sys.stderr)
            if exc.code in ("unreachable", "provision_failed"):
                return UNIT_UNREACHABLE
            return ERROR
        except latis_core.LatisError as exc:
            print(f"latis: {exc}", file=sys.stderr)
            return ERROR

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        return INTERRUPTED
