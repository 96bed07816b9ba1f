"""The `unix` transport: a unix socket on this machine.

The dialer connects to a unit that listens (`latis-unit --listen unix:PATH`);
`listen_unix` is the unit's side: a socket created with mode 0600, so only
its owner can connect.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import trio

from latis_core._errors import ConnectError

__all__ = ["UnixDialer", "UnixListener", "is_listening", "listen_unix", "open_unix"]


@asynccontextmanager
async def open_unix(path: str | os.PathLike[str]) -> AsyncIterator[trio.SocketStream]:
    """Connect to the unix socket at `path`.

    Raises:
        ConnectError: nothing listens there (or we may not connect).
    """
    try:
        stream = await trio.open_unix_socket(os.fspath(path))
    except OSError as exc:
        raise ConnectError(f"cannot connect to unix:{path}: {exc.strerror or exc}") from exc
    try:
        yield stream
    finally:
        await stream.aclose()


@attrs.frozen
class UnixDialer:
    """Dial a unit listening on a unix socket.

    Attributes:
        path: the socket's path.
    """

    path: str = attrs.field(converter=os.fspath)

    @classmethod
    def from_url(cls, url: str) -> UnixDialer:
        """`unix:PATH`."""
        return cls(_path_of(url))

    def connect(self) -> AbstractAsyncContextManager[trio.SocketStream]:
        return open_unix(self.path)

    def describe(self) -> str:
        return f"unix: {self.path}"


def _path_of(url: str) -> str:
    path = url.removeprefix("unix:")
    if path.startswith("//"):
        path = path[2:]
    if not path or path == url:
        raise ValueError(f"{url!r} is not a unix socket address (expected unix:PATH)")
    return path


@attrs.frozen
class UnixListener:
    """Listen on a unix socket (mode 0600: only its owner may connect).

    Attributes:
        path: the socket's path.
        max_pending: connections at most that have not finished their handshake.
    """

    path: str = attrs.field(converter=os.fspath)
    max_pending: int = 64

    @property
    def max_pending_per_host(self) -> int:
        return self.max_pending  # every client is this machine

    @classmethod
    def from_url(cls, url: str) -> UnixListener:
        """`unix:PATH`."""
        return cls(_path_of(url))

    def listen(self) -> AbstractAsyncContextManager[trio.SocketListener]:
        return listen_unix(self.path)

    def describe(self) -> str:
        return f"unix: {self.path}"


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


#: This module's dialer and listener, for the `latis.transports` registry.
DIALER = UnixDialer
LISTENER = UnixListener
