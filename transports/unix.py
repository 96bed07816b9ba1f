"""The `unix` transport: a unix socket on this machine.

The dialer connects to a unit that listens (`latis-unit --listen unix:PATH`);
`listen_unix` is the unit's side: a socket created with mode 0600, so only
its owner can connect.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager

import attrs
import trio

from latis_core._io.unix import is_listening, listen_unix, open_unix

__all__ = ["UnixDialer", "UnixListener", "is_listening", "listen_unix", "open_unix"]


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


#: This module's dialer and listener, for the `latis.transports` registry.
DIALER = UnixDialer
LISTENER = UnixListener
