"""The dashboard's accept loop: hypercorn serves each connection, latis bounds them.

hypercorn's trio worker (`hypercorn.trio.serve`) takes every connection it is
offered and has no hook before it does. Whoever reaches the port could then
open thousands at once, each held until hypercorn's timeouts (the TLS
handshake's, the first request's), and take the file descriptors the daemon
needs for its units and its CLI. So the sockets are bound as hypercorn binds
them (`Config.create_sockets`), the accept loop is the one cmdr's listeners
use (`latis_core._io.accept.serve_listener`: connections open at once bounded
in all and per client address, a short wait for a slot past either, new
connections paced per address, refusals summarised in the log), and each
connection admitted is served by hypercorn's own connection server
(`TCPServer`, as its worker does). That class is hypercorn's, not its
documented API: pyproject.toml pins the releases it was checked with, and
tests/test_web.py drives it.
"""

from __future__ import annotations

import functools
import socket
from typing import TYPE_CHECKING, Any

import trio

from latis_core._io.accept import Gate, ListenerStats, RefusalLog, serve_listener

if TYPE_CHECKING:
    import hypercorn.config

__all__ = ["WAIT", "serve_web", "web_gate"]

#: Seconds a connection past the bounds waits for a slot before it is closed.
WAIT = 5.0
#: New connections a second from one address, past the burst (a browser makes a few).
RATE_PER_HOST = 100.0
BURST_PER_HOST = 200


def web_gate(max_connections: int, max_connections_per_host: int) -> Gate:
    """The bounds of the dashboard's connections (open at once, not only pending:
    an HTTP connection stays unproven until its request, and an event stream
    holds its connection as long as the page is open)."""
    return Gate(max_connections, max_connections_per_host, RATE_PER_HOST, BURST_PER_HOST,
                max_waiting=max_connections, max_wait=WAIT)


async def serve_web(
    app: Any,
    config: hypercorn.config.Config,
    gate: Gate,
    stats: ListenerStats,
    *,
    task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` where `config.bind` says until cancelled; `started` with the
    ports bound.

    Raises (before anything is served): OSError, when an address cannot be
    resolved or listened on.
    """
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.utils import wrap_app

    sockets = config.create_sockets()
    bound = [*sockets.secure_sockets, *sockets.insecure_sockets]
    listeners: list[trio.abc.Listener[Any]] = []
    try:
        ssl_context = config.create_ssl_context()
        for sock in bound:
            sock.listen(config.backlog)
            listener: trio.abc.Listener[Any] = trio.SocketListener(
                trio.socket.from_stdlib_socket(sock))
            if sock in sockets.secure_sockets:
                assert ssl_context is not None  # (a secure socket: config has a certificate)
                listener = trio.SSLListener(listener, ssl_context, https_compatible=True)
            listeners.append(listener)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)

    async def serve(stream: trio.abc.Stream, peer: object, release: object) -> None:
        # The slot is the connection's for its whole life (given back when it ends).
        # (Typed for TLS streams; it takes plain ones too, as hypercorn's worker gives.)
        await TCPServer(wrapped, config, context, {}, stream).run()  # type: ignore[arg-type]

    refusals = RefusalLog("web")
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(functools.partial(
                serve_listener, listener, serve, gate=gate, stats=stats, label="web",
                refusals=refusals))
        task_status.started([_port(sock) for sock in bound])


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])
