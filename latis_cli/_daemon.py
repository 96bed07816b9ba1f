"""`latis daemon run|start|stop|status`."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Annotated

from cyclopts import App, Parameter

from ._cmdr import CMDR_UNREACHABLE, ERROR, OK

daemon = App(
    name="daemon",
    help="The cmdr daemon: it holds units, sessions and prompts for every `latis` command.",
    help_format="markdown",
)


@daemon.command
def run() -> int:
    """Run the daemon in the foreground (logs on stderr) until SIGTERM or Ctrl-C.

    Examples
    --------
    ```
    latis daemon run
    LATIS_LOG_LEVEL=debug latis daemon run
    ```
    """
    from latis_core import run_daemon

    return run_daemon(os.environ.get("LATIS_CONFIG"))


@daemon.command
def start() -> int:
    """Start the daemon in the background, unless it runs (commands also start it on first use).

    Examples
    --------
    ```
    latis daemon start
    ```
    """
    from ._cmdr import CmdrUnreachable, daemon_pid, start_daemon

    pid = daemon_pid()
    if pid is not None:
        print(f"cmdr runs (pid {pid})", file=sys.stderr)
        return OK
    try:
        start_daemon()
    except CmdrUnreachable as exc:
        print(f"latis: {exc}", file=sys.stderr)
        return CMDR_UNREACHABLE
    return OK


@daemon.command
def stop(*, timeout: float = 15.0) -> int:
    """Stop the daemon. Units that run by themselves and their prompts go on.

    Examples
    --------
    ```
    latis daemon stop
    ```

    Args:
        timeout: seconds to wait for it to exit.
    """
    from ._cmdr import daemon_pid

    pid = daemon_pid()
    if pid is None:
        print("cmdr is not running", file=sys.stderr)
        return OK
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_pid() is None:
            print(f"stopped cmdr (pid {pid})", file=sys.stderr)
            return OK
        time.sleep(0.05)
    print(f"latis: cmdr (pid {pid}) did not stop within {timeout:g} s", file=sys.stderr)
    return ERROR


@daemon.command
def status(*, json_output: Annotated[bool, Parameter(name="--json")] = False) -> int:
    """Say whether the daemon runs, with its pid and socket.

    Exit status 0 when it runs, 5 when it does not.

    Examples
    --------
    ```
    latis daemon status
    latis daemon status --json
    ```

    Args:
        json_output: print a JSON object.
    """
    from latis_core import paths

    from ._cmdr import daemon_pid

    pid = daemon_pid()
    where = paths()
    info = {
        "running": pid is not None,
        "pid": pid,
        "socket": str(where.socket),
        "log": str(where.log_dir / "cmdr.log"),
    }
    if json_output:
        print(json.dumps(info))
    elif pid is None:
        print("cmdr is not running")
    else:
        print(f"cmdr runs (pid {pid}), socket {where.socket}")
    return OK if pid is not None else CMDR_UNREACHABLE
