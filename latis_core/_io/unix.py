"""Unix sockets on this machine: connect, listen (mode 0600), and probe.

cmdr's own socket (the daemon's, which the CLI dials) uses these directly; the
`unix` transport plugin (latis_transports.unix) builds its dialer and listener
on them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from latis_core._errors import ConnectError

if TYPE_CHECKING:
    import trio

# trio is imported by the functions that use it: `is_listening` is what `latis status`
# asks first, and it needs none of trio.

__all__ = ["is_listening", "listen_unix", "open_unix"]


@asynccontextmanager
async def open_unix(path: str | os.PathLike[str]) -> AsyncIterator[trio.SocketStream]:
    """Connect to the unix socket at `path`.

    Raises:
        ConnectError: nothing listens there (or we may not connect).
    """
    import trio

    try:
        stream = await trio.open_unix_socket(os.fspath(path))
    except OSError as exc:
        raise ConnectError(f"cannot connect to unix:{path}: {exc.strerror or exc}") from exc
    try:
        yield stream
    finally:
        await stream.aclose()


def is_listening(path: str | os.PathLike[str]) -> bool:
    """Whether something accepts connections on the unix socket at `path` (blocking, quick)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _prepare(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.path.exists(path):
        if is_listening(path):
            raise OSError(errno.EADDRINUSE, f"something already listens on {path}")
        os.unlink(path)


@asynccontextmanager
async def listen_unix(path: str | os.PathLike[str]) -> AsyncIterator[trio.SocketListener]:
    """Listen on a unix socket at `path` (mode 0600); remove it on exit.

    A stale socket file (nothing listening) is replaced; a live one is an error.

    Raises:
        OSError: (EADDRINUSE) another process listens there.
    """
    import trio

    path = os.fspath(path)
    await trio.to_thread.run_sync(_prepare, path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(128)
    listener = trio.SocketListener(sock)
    try:
        yield listener
    finally:
        await listener.aclose()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
