"""The `tcp` transport: TCP, optionally with TLS.

The dialer connects to a unit that listens (`latis-unit --listen
tcp://HOST:PORT`), or a unit to cmdr's listener. With TLS it checks the
other side against a CA file (`ca`, host name included) or a pinned
certificate (`fingerprint`: the peer's own certificate, or the CA that
issued it; see `latis_core._os.tls`). Nothing is sent before that check.

The listener accepts on HOST:PORT; with `tls`, each connection is wrapped in
TLS (the handshake runs on first use, inside the caller's handshake
timeout), and with `client_ca` clients must show a certificate that CA
issued (mTLS).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import trio

from latis_core._errors import ConnectError

from . import checks

__all__ = ["TcpDialer", "TcpListener", "parse_host_port"]

#: The port latis listens on unless told otherwise.
DEFAULT_PORT = 7447


def parse_host_port(url: str, scheme: str, default_port: int) -> tuple[str, int, dict[str, str]]:
    """Split `SCHEME://HOST[:PORT][?k=v&…]` into host, port and the query's options.

    Raises:
        ValueError: another scheme, no host, a bad port, or an option given twice.
    """
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ValueError(f"{url!r} is not a {scheme}:// address")
    try:
        port = parts.port if parts.port is not None else default_port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host (expected {scheme}://HOST:PORT)")
    options: dict[str, str] = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if len(values) > 1:
            raise ValueError(f"{url!r}: option {key!r} is given {len(values)} times")
        options[key] = values[0]
    return parts.hostname, port, options


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on", ""):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _known(url: str, options: dict[str, str], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"{url!r}: unknown option {unknown[0]!r} (known: {', '.join(known)})"
        )


@attrs.frozen
class TcpDialer:
    """Dial over TCP, with TLS if `tls`, `ca` or `fingerprint` is given.

    Attributes:
        host: the host name or address.
        port: the port.
        tls: speak TLS (implied by `ca` and `fingerprint`).
        ca: a PEM file of the CA to verify the server against (host name checked).
        fingerprint: a pin, `sha256:HEX`: the server's certificate or its issuer's.
        cert: our certificate (PEM), for a server that asks for one (mTLS).
        key: its private key.
        server_name: the name to check instead of `host`.
        connect_timeout: seconds to connect and finish TLS.
    """

    host: str
    port: int = attrs.field(default=DEFAULT_PORT, validator=checks.remote_port)
    tls: bool = False
    ca: str | None = None
    fingerprint: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    connect_timeout: float = attrs.field(default=10.0, validator=checks.seconds)

    @property
    def uses_tls(self) -> bool:
        """Whether this dialer speaks TLS."""
        return self.tls or self.ca is not None or self.fingerprint is not None

    @classmethod
    def from_url(cls, url: str) -> TcpDialer:
        """`tcp://HOST:PORT?fingerprint=sha256:…&ca=FILE&tls=1&cert=…&key=…`."""
        host, port, options = parse_host_port(url, "tcp", DEFAULT_PORT)
        _known(url, options, ("tls", "ca", "fingerprint", "cert", "key", "server_name"))
        tls = _flag(options.pop("tls")) if "tls" in options else False
        return cls(
            host,
            port,
            tls=tls,
            ca=options.get("ca"),
            fingerprint=options.get("fingerprint"),
            cert=options.get("cert"),
            key=options.get("key"),
            server_name=options.get("server_name"),
        )

    def url(self) -> str:
        """This dialer as a `tcp://` address (with its pin, if any)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?fingerprint={self.fingerprint}" if self.fingerprint else ""
        return f"tcp://{host}:{self.port}{query}"

    def connect(self) -> AbstractAsyncContextManager[trio.abc.Stream]:
        return self._connect()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[trio.abc.Stream]:
        where = f"tcp://{self.host}:{self.port}"
        stream: trio.abc.Stream
        with trio.move_on_after(self.connect_timeout) as scope:
            try:
                stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                raise ConnectError(
                    f"cannot connect to {where}: {exc.strerror or exc}"
                ) from exc
            if self.uses_tls:
                from latis_core._os.tls import tls_connect

                try:
                    stream = await tls_connect(
                        stream,
                        server_hostname=self.server_name or self.host,
                        ca=self.ca,
                        pin=self.fingerprint,
                        cert=self.cert,
                        key=self.key,
                        what=where,
                    )
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        if scope.cancelled_caught:
            raise ConnectError(f"cannot connect to {where}: no answer within "
                               f"{self.connect_timeout:g} s")
        try:
            yield stream
        finally:
            with trio.CancelScope(shield=True) as closing:
                closing.deadline = trio.current_time() + 5
                await stream.aclose()

    def describe(self) -> str:
        return f"tcp{'+tls' if self.uses_tls else ''}: {self.host}:{self.port}"


@attrs.frozen
class TcpListener:
    """Accept connections over TCP, with TLS if `tls`.

    Attributes:
        host: the address to listen on (`0.0.0.0` or `::` for all).
        port: the port (0: any free one).
        tls: wrap each connection in TLS.
        cert: the certificate chain (PEM) to show; filled in by whoever runs
            the listener when left out (cmdr: its own; a unit: self-signed).
        key: its private key.
        client_ca: ask clients for a certificate this CA issued (mTLS).
        max_pending: connections at most that have not finished their
            handshake; more wait for a slot, or are told when to come back
            (`latis_core._io.accept`). Sized for fleets: a TLS handshake costs
            ~3 ms of CPU, so 128 keep a core busy with room to spare.
        max_pending_per_host: the same, per client address (a fleet behind
            one NAT address shares it).
        rate_per_host: new connections a second one address may make, past
            `burst_per_host` at once; faster ones are closed at once, unanswered
            (0: no limit). High by default: a fleet behind one NAT address
            reconnects at the pace TLS allows.
        burst_per_host: see `rate_per_host`.
    """

    host: str = "0.0.0.0"
    port: int = attrs.field(default=DEFAULT_PORT, validator=checks.port)
    tls: bool = False
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    max_pending: int = 128
    max_pending_per_host: int = 64
    rate_per_host: float = 500.0
    burst_per_host: int = 1000

    @classmethod
    def from_url(cls, url: str) -> TcpListener:
        """`tcp://HOST:PORT?tls=1&cert=…&key=…&client_ca=…`."""
        host, port, options = parse_host_port(url, "tcp", DEFAULT_PORT)
        _known(url, options, ("tls", "cert", "key", "client_ca"))
        tls = _flag(options.pop("tls")) if "tls" in options else False
        return cls(
            host,
            port,
            tls=tls,
            cert=options.get("cert"),
            key=options.get("key"),
            client_ca=options.get("client_ca"),
        )

    def listen(self) -> AbstractAsyncContextManager[trio.abc.Listener[trio.abc.Stream]]:
        return self._listen()

    @asynccontextmanager
    async def _listen(self) -> AsyncIterator[trio.abc.Listener[trio.abc.Stream]]:
        context: ssl.SSLContext | None = None
        if self.tls:
            if self.cert is None or self.key is None:
                raise ValueError("a TLS listener needs cert and key")
            from latis_core._os.tls import server_context

            context = server_context(self.cert, self.key, client_ca=self.client_ca)
        host = None if self.host in ("", "*") else self.host
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=host)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on tcp://{self.host}:{self.port}: "
                          f"{exc.strerror or exc}") from exc
        async with trio.open_nursery() as nursery:
            listener: trio.abc.Listener[Any] = _Multi(listeners, nursery)
            if context is not None:
                listener = trio.SSLListener(listener, context, https_compatible=False)
            try:
                yield listener
            finally:
                nursery.cancel_scope.cancel()
                await listener.aclose()

    def describe(self) -> str:
        return f"tcp{'+tls' if self.tls else ''}: {self.host}:{self.port}"


class _Multi(trio.abc.Listener[trio.SocketStream]):
    """The sockets of one address (IPv4 and IPv6 for `*`) as one listener.

    `port` is the port bound (useful with port 0). With several sockets, a
    task per socket hands connections over one at a time (no queue: what is
    not accepted waits in the kernel's backlog).
    """

    def __init__(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        self.listeners = listeners
        self.port: int = listeners[0].socket.getsockname()[1]
        self._send, self._receive = trio.open_memory_channel[trio.SocketStream](0)
        if len(listeners) > 1:
            for listener in listeners:
                nursery.start_soon(self._feed, listener)

    async def _feed(self, listener: trio.SocketListener) -> None:
        while True:
            stream = await listener.accept()
            try:
                await self._send.send(stream)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise

    async def accept(self) -> trio.SocketStream:
        if len(self.listeners) == 1:
            stream = await self.listeners[0].accept()
        else:
            stream = await self._receive.receive()
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        return stream

    async def aclose(self) -> None:
        for listener in self.listeners:
            await listener.aclose()


#: This module's dialer and listener, for the `latis.transports` registry.
DIALER = TcpDialer
LISTENER = TcpListener
