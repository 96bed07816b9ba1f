"""The daemon's pid file, `run/cmdr.pid`: the lock a running daemon holds for its
whole life (`hold_daemon_lock`), and how anyone else finds its pid (`daemon_pid`).

Light on purpose: `latis status` asks for the pid on every run and needs nothing
of the client (no sockets, no subprocess).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from latis_core._errors import DaemonRunning
from latis_core._os.paths import paths

__all__ = ["daemon_pid", "hold_daemon_lock"]

_NAME = "cmdr.pid"


def hold_daemon_lock(run_dir: Path) -> IO[str]:
    """Take this user's daemon lock for as long as the returned file stays open, and
    write our pid in it.

    Raises:
        DaemonRunning: another daemon holds it (its pid is in the message).
    """
    handle = open(run_dir / _NAME, "a+")  # noqa: SIM115 (held open: the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise DaemonRunning(f"a cmdr daemon already runs (pid {pid})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def daemon_pid() -> int | None:
    """The pid of the running daemon, or None (read from its lock file, checked alive)."""
    pidfile = paths().run_dir / _NAME
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        with open(pidfile) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # We got the lock: nobody holds it, the daemon is gone.
            return None
    except BlockingIOError:
        return pid
    except OSError:
        return None
