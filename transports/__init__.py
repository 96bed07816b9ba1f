"""Transports: one module (or package) per way to get a byte stream to a unit.

Each yields a `trio.abc.Stream` (see `latis_core.Dialer` and
`latis_core.Listener`) and knows nothing of messages. Modules are imported
only when used: some back ends are heavy to import.
"""

from __future__ import annotations

from .local import LocalDialer as LocalDialer
from .local import ProcessStream as ProcessStream
from .local import open_local as open_local
from .memory import socket_stream_pair as socket_stream_pair
from .unix import UnixDialer as UnixDialer
from .unix import listen_unix as listen_unix
from .unix import open_unix as open_unix

__all__ = [
    "LocalDialer",
    "ProcessStream",
    "UnixDialer",
    "listen_unix",
    "open_local",
    "open_unix",
    "socket_stream_pair",
]
