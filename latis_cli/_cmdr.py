"""The CLI's side of the daemon: find it, start it on first use (as tmux does), talk to it.

Two CLIs that start at once never start two daemons: starting happens under a
lock file, and the daemon itself holds a second lock for its whole life.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latis_core import UnitClient

#: Exit statuses (latis help exit-codes).
OK, ERROR, USAGE, CANCELLED, AUTH, CMDR_UNREACHABLE, UNIT_UNREACHABLE = 0, 1, 2, 3, 4, 5, 6
INTERRUPTED = 130

#: Seconds to wait for a daemon we started to listen.
START_TIMEOUT = 15.0


class CmdrUnreachable(Exception):
    """The daemon is not running and could not be started (or reached)."""


def daemon_pid() -> int | None:
    """The pid of the running daemon, or None (read from its lock file, checked alive)."""
    from latis_core._os.paths import paths

    pidfile = paths().run_dir / "cmdr.pid"
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


def start_daemon(quiet: bool = False) -> int:
    """Start the daemon in the background unless one runs; return its pid."""
    from latis_core._os.paths import make_private_dir, paths

    where = paths()
    make_private_dir(where.run_dir)
    with open(where.run_dir / "cmdr.start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another CLI may be starting it right now
        pid = daemon_pid()
        if pid is not None and _listening(str(where.socket)):
            return pid
        where.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(where.log_dir / "cmdr.log", "ab")  # noqa: SIM115 (handed to the child)
        with log:
            child = subprocess.Popen(
                [sys.executable, "-m", "latis_cli", "daemon", "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if _listening(str(where.socket)) and daemon_pid() is not None:
                if not quiet:
                    print(f"started cmdr (pid {child.pid})", file=sys.stderr)
                return child.pid
            if child.poll() is not None:
                raise CmdrUnreachable(
                    f"cmdr exited at start (status {child.returncode}); "
                    f"see {where.log_dir / 'cmdr.log'}"
                )
            time.sleep(0.02)
        raise CmdrUnreachable(f"cmdr did not start within {START_TIMEOUT:g} s")


def _listening(path: str) -> bool:
    from latis_transports.unix import is_listening

    return bool(is_listening(path))


@asynccontextmanager
async def open_cmdr(autostart: bool = True) -> AsyncIterator[UnitClient]:
    """Connect to the daemon (starting it first if it is not running)."""
    import trio
    from latis_transports.unix import open_unix

    import latis_core
    from latis_core._os.paths import paths

    socket_path = str(paths().socket)
    if not _listening(socket_path):
        if not autostart:
            raise CmdrUnreachable("cmdr is not running (start it: latis daemon start)")
        await trio.to_thread.run_sync(start_daemon)
    try:
        async with open_unix(socket_path) as stream, latis_core.connect(
            stream, name="latis-cli", label="cmdr"
        ) as client:
            yield client
    except latis_core.ConnectError as exc:
        raise CmdrUnreachable(str(exc)) from exc


async def call(client: UnitClient, method: str, on_progress: Any = None, **params: Any) -> Any:
    """Run a daemon method; `on_progress(text)` gets its progress messages."""
    from latis_core import Ack, Call, ResponseChunk

    peer = client.peer
    stream = peer.stream(Call(peer.next_id(), method, params or None))
    async for event in stream:
        if type(event) is ResponseChunk and on_progress is not None:
            on_progress(event.text)
    final = stream.final
    return final.data if isinstance(final, Ack) else None
