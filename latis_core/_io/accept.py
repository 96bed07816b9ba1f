"""Serving a listener that anyone may reach: bounded, timed, counted.

A listener is open to whoever can reach it, so until a connection has
finished its handshake (and, where asked, proven who it is) it holds a
*pending* slot: there are at most `max_pending` of them, and at most
`max_pending_per_host` for one client address. A connection beyond either
bound is closed at once; one that does not finish in time is closed by the
handshake timeout of whoever serves it. Either way the listener goes on
serving everyone else, and each refusal is logged and counted.
"""

from __future__ import annotations

import collections
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

__all__ = ["Gate", "ListenerStats", "bound_port", "peer_of", "serve_listener"]

log = logging.getLogger("latis.accept")

#: accept() errors that mean "out of resources for now": wait and go on.
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def peer_of(stream: trio.abc.Stream) -> tuple[str, int] | str | None:
    """The address of the other end of `stream`, where the transport knows it."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    address = getattr(inner, "peer_address", None)
    if address is not None:
        return address  # type: ignore[no-any-return]
    if isinstance(inner, trio.SocketStream):
        try:
            name = inner.socket.getpeername()
        except OSError:
            return None
        if isinstance(name, tuple):
            return (str(name[0]), int(name[1]))
        return "unix"
    return None


def bound_port(listener: object) -> int | None:
    """The port a listener is bound to (useful after listening on port 0)."""
    while listener is not None:
        port = getattr(listener, "port", None)
        if isinstance(port, int):
            return port
        listener = getattr(listener, "transport_listener", None)
    return None


def _host(address: tuple[str, int] | str | None) -> str:
    if isinstance(address, tuple):
        return address[0]
    return address or "?"


@attrs.define
class ListenerStats:
    """What a listener has seen: connections accepted and refused, by reason."""

    accepted: int = 0
    refused: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "refused": dict(self.refused)}


class Gate:
    """Counts pending connections, in all and per client address."""

    def __init__(self, max_pending: int, max_pending_per_host: int) -> None:
        self.max_pending = max_pending
        self.max_pending_per_host = max_pending_per_host
        self.pending = 0
        self._per_host: collections.Counter[str] = collections.Counter()

    def admit(self, host: str) -> str | None:
        """Take a slot for `host`; return None, or why there is none."""
        if self.pending >= self.max_pending:
            return f"{self.pending} connections are already in their handshake"
        if self._per_host[host] >= self.max_pending_per_host:
            return f"{self._per_host[host]} connections from {host} are already in their handshake"
        self.pending += 1
        self._per_host[host] += 1
        return None

    def release(self, host: str) -> None:
        self.pending -= 1
        self._per_host[host] -= 1
        if not self._per_host[host]:
            del self._per_host[host]


Handler = Callable[[trio.abc.Stream, tuple[str, int] | str | None, Callable[[], None]],
                   Awaitable[None]]


async def serve_listener(
    listener: trio.abc.Listener[Any],
    handler: Handler,
    *,
    gate: Gate,
    stats: ListenerStats,
    label: str,
) -> None:
    """Accept connections forever; serve each in a task of its own.

    `handler(stream, peer, release)` serves one connection and calls
    `release()` once its handshake is done (it is called anyway when the
    handler returns). The handler owns the stream: it closes it.
    """
    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    raise
                log.error("%s: accept failed (%s); retrying in 0.1 s", label, exc)
                await trio.sleep(0.1)
                continue
            peer = peer_of(stream)
            host = _host(peer)
            why = gate.admit(host)
            if why is not None:
                stats.refuse("flood")
                log.warning("%s: refused a connection from %s: %s", label, host, why)
                await trio.aclose_forcefully(stream)
                continue
            stats.accepted += 1
            nursery.start_soon(_serve_one, handler, stream, peer, host, gate)


async def _serve_one(
    handler: Handler,
    stream: trio.abc.Stream,
    peer: tuple[str, int] | str | None,
    host: str,
    gate: Gate,
) -> None:
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            gate.release(host)

    try:
        await handler(stream, peer, release)
    except Exception:
        log.exception("serving a connection from %s failed", host)
    finally:
        release()
        await trio.aclose_forcefully(stream)
