"""Transports: one module (or package) per way to get a byte stream to a unit.

Each yields a `trio.abc.Stream` (see `latis_core.Dialer` and
`latis_core.Listener`) and knows nothing of messages. Modules are imported
only when used: some back ends are heavy to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .local import LocalDialer as LocalDialer
    from .local import ProcessStream as ProcessStream
    from .local import open_local as open_local
    from .memory import socket_stream_pair as socket_stream_pair
    from .unix import UnixDialer as UnixDialer
    from .unix import listen_unix as listen_unix
    from .unix import open_unix as open_unix

#: Where each public name lives: imported on first use, so that loading one
#: transport (the CLI needs `unix` only) does not load the others.
_WHERE = {
    "LocalDialer": "local",
    "ProcessStream": "local",
    "open_local": "local",
    "socket_stream_pair": "memory",
    "UnixDialer": "unix",
    "listen_unix": "unix",
    "open_unix": "unix",
}


def __getattr__(name: str) -> Any:
    import importlib

    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "LocalDialer",
    "ProcessStream",
    "UnixDialer",
    "listen_unix",
    "open_local",
    "open_unix",
    "socket_stream_pair",
]
