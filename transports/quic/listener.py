"""The QUIC listener: `QuicListener` (its options, from a `quic://` URL), which
binds the UDP socket, and `QuicStreamListener`, whose `accept()` returns the
stream of each connection that is ready."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import load_pem_x509_certificates
from cryptography import x509

from latis_core._util import unwrap_group

from ..checks import port as _port
from ..checks import seconds as _positive
from .constants import ALPN, DEFAULT_PORT, WINDOW
from .endpoint import _Server
from .options import _parse_url, _where
from .stream import QuicStream
from .udp import _udp_socket


class QuicStreamListener(trio.abc.Listener[QuicStream]):
    """What `QuicListener.listen()` yields: `accept()` returns one stream per connection.

    Attributes:
        host: the address it is bound to.
        port: the UDP port it is bound to (the real one when asked for 0).
    """

    def __init__(self, server: _Server, host: str, port: int) -> None:
        self._server = server
        self.host = host
        self.port = port

    async def accept(self) -> QuicStream:
        """Wait for a connection whose handshake completed and whose stream is open.

        Raises:
            trio.ClosedResourceError: the listener was closed.
        """
        server = self._server
        while True:
            try:
                conn = await server.ready_receive.receive()
            except (trio.ClosedResourceError, trio.EndOfChannel):
                raise trio.ClosedResourceError("this QUIC listener was closed") from None
            server.pending.discard(conn)
            if conn.ended is None:
                return conn.stream

    async def aclose(self) -> None:
        """Stop accepting: new connections are refused, accepted ones go on."""
        self._server.stop_accepting()
        await trio.lowlevel.checkpoint()


def _load_cas(path: str) -> list[x509.Certificate]:
    cas = load_pem_x509_certificates(Path(path).read_bytes())
    if not cas:
        raise ValueError(f"quic: client_ca {path} holds no PEM certificate")
    return cas


def _server_configuration(listener: QuicListener) -> QuicConfiguration:
    if listener.cert is None or listener.key is None:
        missing = [name for name in ("cert", "key") if getattr(listener, name) is None]
        raise ValueError(
            f"quic: a listener needs a certificate: set {' and '.join(missing)} "
            "(PEM files: the certificate chain, and its private key)"
        )
    config = QuicConfiguration(
        is_client=False,
        alpn_protocols=[ALPN],
        idle_timeout=listener.idle_timeout,
        max_stream_data=WINDOW,
    )
    config.load_cert_chain(listener.cert, listener.key)
    return config


async def _bind(host: str, port: int) -> socket.socket:
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, address = infos[0]
    sock = _udp_socket(family)
    try:
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@asynccontextmanager
async def _listen(listener: QuicListener) -> AsyncIterator[QuicStreamListener]:
    config = _server_configuration(listener)
    cas = _load_cas(listener.client_ca) if listener.client_ca is not None else None
    sock = await _bind(listener.host, listener.port)
    try:
        host, port = sock.getsockname()[:2]
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                server = _Server(sock, config, listener, cas, nursery)
                nursery.start_soon(server.run)
                try:
                    yield QuicStreamListener(server, host, port)
                finally:
                    server.shutdown()
                    nursery.cancel_scope.cancel()
    finally:
        sock.close()


@attrs.frozen
class QuicListener:
    """Listen for QUIC connections (units that dial in, or controllers).

    Attributes:
        host: the address to bind.
        port: the UDP port (0: any free one, see `QuicStreamListener.port`).
        cert: our certificate chain (PEM); required by `listen()`.
        key: its private key (PEM); required by `listen()`.
        client_ca: a PEM file of the CA whose client certificates are
            required (mTLS); None: clients show none.
        idle_timeout: seconds of silence from a client after which its
            connection ends (a live one is kept by pings).
        max_pending: connections not accepted yet (handshaking or waiting for
            `accept()`) beyond which new ones are refused.
    """

    host: str = "0.0.0.0"
    port: int = attrs.field(default=DEFAULT_PORT, validator=_port)
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    idle_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_pending: int = attrs.field(default=64, validator=attrs.validators.ge(1))

    def listen(self) -> AbstractAsyncContextManager[QuicStreamListener]:
        """Bind the UDP socket and yield a `QuicStreamListener`; leaving closes
        every connection it accepted.

        Raises:
            ValueError: `cert` or `key` is not set.
            OSError: the address cannot be bound, or a PEM file cannot be read.
        """
        return _listen(self)

    def describe(self) -> str:
        """`quic: HOST:PORT`."""
        return f"quic: {_where(self.host, self.port)}"

    @classmethod
    def from_url(cls, url: str) -> QuicListener:
        """Read `quic://HOST:PORT` (port 7447 if absent).

        Options: cert, key, client_ca, idle_timeout, max_pending.

        Raises:
            ValueError: not such a URL, saying what is wrong.
        """
        host, port, options = _parse_url(
            url,
            {"cert": str, "key": str, "client_ca": str, "idle_timeout": float, "max_pending": int},
        )
        return cls(host, port, **options)
