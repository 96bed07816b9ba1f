"""`WebSocketListener`: the websocket transport's listener: its options (from a
`ws://` or `wss://` URL), binding its sockets (with TLS for `wss://`) and
serving them through a `WebSocketAcceptor`."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from latis_core._util import unwrap_group
from latis_core._wire.frames import DEFAULT_MAX_FRAME, HEADER_SIZE

from .. import checks
from .acceptor import WebSocketAcceptor
from .options import DEFAULT_PATH, _positive

#: The port a websocket listener listens on unless told otherwise.
DEFAULT_PORT = 7448


@attrs.frozen
class WebSocketListener:
    """Accept units (or controllers) that dial in over websockets.

    Attributes:
        host: the address to listen on (`0.0.0.0` or `::` for all).
        port: the port (0: any free one; the accepting side's `port` says which).
        path: the path served; other paths are answered 404.
        tls: serve `wss://`: `cert` and `key` must then be given (whoever runs
            the listener fills them in when left out).
        cert: the certificate chain (PEM) to show.
        key: its private key.
        client_ca: ask clients for a certificate this CA issued (mTLS).
        max_frame: the protocol's frame limit: messages up to `max_frame + 4`
            bytes are accepted, and sent.
        max_pending: connections at most that wait for `accept()` once their
            websocket handshake is done (more are answered 503), and that
            are in their handshake at once (more are closed).
        rate_per_host: new connections a second one address may make, past
            `burst_per_host` at once; faster ones are closed at once, unanswered
            (0: no limit). High by default: a fleet behind one NAT address
            reconnects at the pace TLS allows.
        burst_per_host: see `rate_per_host`.
    """

    host: str = "0.0.0.0"
    port: int = attrs.field(default=DEFAULT_PORT, validator=checks.port)
    path: str = DEFAULT_PATH
    tls: bool = False
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=_positive)
    max_pending: int = attrs.field(default=64, validator=_positive)
    rate_per_host: float = 500.0
    burst_per_host: int = 1000

    @classmethod
    def from_url(cls, url: str) -> WebSocketListener:
        """`ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH` (port 7448, path
        `/latis` when left out)."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"{url!r} is not a websocket address (expected ws:// or wss://)")
        if not parts.hostname:
            raise ValueError(f"{url!r}: no host (expected ws://HOST:PORT/PATH)")
        if parts.query:
            raise ValueError(f"{url!r}: a websocket listener takes no options in its address")
        try:
            port = parts.port if parts.port is not None else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"{url!r}: the port is not a number from 0 to 65535") from None
        return cls(parts.hostname, port, parts.path or DEFAULT_PATH, tls=parts.scheme == "wss")

    def listen(self) -> AbstractAsyncContextManager[trio.abc.Listener[trio.abc.Stream]]:
        """Listen; the block's target is the accepting side (a `WebSocketAcceptor`).

        Raises:
            ValueError: `tls` without `cert` or `key` (or `client_ca` without `tls`).
            OSError: the address cannot be bound (in use, not ours).
        """
        if self.tls:
            missing = [name for name in ("cert", "key") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"a wss:// listener needs {' and '.join(missing)}")
        elif self.client_ca is not None:
            raise ValueError("client_ca needs tls: client certificates come with TLS")
        return self._listen()

    def describe(self) -> str:
        """`websocket: ws://HOST:PORT/PATH` (or `wss://`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"websocket: {'wss' if self.tls else 'ws'}://{host}:{self.port}{self.path}"

    @asynccontextmanager
    async def _listen(self) -> AsyncIterator[trio.abc.Listener[trio.abc.Stream]]:
        context: ssl.SSLContext | None = None
        if self.tls and self.cert is not None and self.key is not None:
            from latis_core._os.tls import server_context

            context = server_context(self.cert, self.key, client_ca=self.client_ca)
        try:
            sockets = await trio.open_tcp_listeners(self.port, host=self.host or None)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {self.describe()}: {exc.strerror or exc}"
            ) from exc
        listeners: list[trio.abc.Listener[Any]] = list(sockets)
        if context is not None:
            # The TLS handshake runs in each connection's own task, inside
            # its handshake timeout.
            listeners = [trio.SSLListener(s, context, https_compatible=True) for s in sockets]
        acceptor = WebSocketAcceptor(
            sockets[0].socket.getsockname()[1],
            self.path,
            self.max_pending,
            self.max_frame + HEADER_SIZE,
        )
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, acceptor.handle, listeners)
                try:
                    yield acceptor
                finally:
                    with trio.CancelScope(shield=True):
                        await acceptor.aclose()
                    nursery.cancel_scope.cancel()
