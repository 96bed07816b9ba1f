"""Running a command against the daemon, with errors mapped to exit statuses."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ._cmdr import ERROR, INTERRUPTED


def config_path() -> str | None:
    """The config file this command reads, absolute (None: the built-in default).

    Raises:
        ConfigError: `--config` or `LATIS_CONFIG` names a file that does not exist.
    """
    from latis_core import find_config

    found = find_config(os.environ.get("LATIS_CONFIG") or None)
    return str(found.resolve()) if found is not None else None


def _named(path: str | None) -> str:
    return path or "the built-in config (no file)"


def config_mismatch(served: str | None, wanted: str | None) -> str:
    """What to say when the daemon serves another config than this command reads."""
    restart = f"latis daemon restart --config {wanted}" if wanted else (
        "latis daemon restart (from a directory without latis.toml, LATIS_CONFIG unset)")
    use = f"latis --config {served} ..." if served else "unset LATIS_CONFIG and run elsewhere"
    return (
        f"latis: cmdr serves {_named(served)}, but this command reads {_named(wanted)}.\n"
        f"  serve this one instead: {restart}\n"
        f"  or use the daemon's:    {use}"
    )


async def check_config(cmdr: Any) -> str | None:
    """Tell the daemon which config this command means; the message if it serves another."""
    wanted = config_path()
    data = await cmdr.config_use(wanted)
    if data.get("match", True):
        return None
    return config_mismatch(data.get("config"), wanted)


def run_with_cmdr(
    work: Callable[[Any], Awaitable[int]], *, autostart: bool = True, config: bool = True
) -> int:
    """Connect to the daemon (starting it if asked), run `work(client)`, map errors.

    With `config` (the default) the daemon is told first which config file
    this command reads; if it serves another, the command stops with the way out.
    Every failure becomes a line or two and an exit status (`_failure.describe`);
    a nursery's ExceptionGroup is unwrapped to its cause first.
    """
    import trio

    async def main() -> int:
        from latis_core import open_daemon

        async with open_daemon(autostart=autostart) as cmdr:
            if config:
                problem = await check_config(cmdr)
                if problem is not None:
                    print(problem, file=sys.stderr)
                    return ERROR
            return int(await work(cmdr))

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 (every failure ends here, as a message)
        from ._failure import cause, report

        if isinstance(cause(exc), BrokenPipeError):
            raise cause(exc) from None  # the reader went away: `guard` ends quietly
        return report(exc)
