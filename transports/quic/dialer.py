"""The QUIC dialer: `QuicDialer` (its options, from a `quic://` URL) and
`open_quic`, which connects, checks the server and yields the stream."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import attrs
import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress

from latis_core._errors import ConnectError
from latis_core._util import unwrap_group

from ..checks import port as _port
from ..checks import seconds as _positive
from .connection import _ClientConnection
from .constants import ABORTED, ALPN, DEFAULT_PORT, SEND_BUFFER, WINDOW
from .internals import _Quic
from .options import _parse_url, _pin, _where
from .stream import QuicStream
from .udp import _BATCH, _MAX_DATAGRAM, _udp_socket

log = logging.getLogger("latis.transports.quic")


def _client_configuration(dialer: QuicDialer) -> QuicConfiguration:
    where = _where(dialer.host, dialer.port)
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        idle_timeout=dialer.idle_timeout,
        server_name=dialer.server_name or dialer.host,
        max_stream_data=WINDOW,
    )
    if dialer.fingerprint is not None:
        # check_pin decides, after the handshake.
        config.verify_mode = ssl.CERT_NONE
    elif dialer.ca is not None:
        try:
            config.load_verify_locations(cadata=Path(dialer.ca).read_bytes())
        except OSError as exc:
            raise ConnectError(
                f"quic: {where}: cannot read the CA file {dialer.ca}: {exc.strerror or exc}"
            ) from exc
    if dialer.cert is not None:
        try:
            config.load_cert_chain(dialer.cert, dialer.key)
        except (OSError, ValueError) as exc:
            what = getattr(exc, "strerror", None) or exc
            raise ConnectError(
                f"quic: {where}: cannot load our certificate {dialer.cert} "
                f"(key {dialer.key}): {what}"
            ) from exc
    return config


async def _resolve(host: str, port: int) -> tuple[int, NetworkAddress]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConnectError(f"quic: cannot resolve {host}: {exc.strerror or exc}") from exc
    family, _, _, _, address = infos[0]
    return family, tuple(address)


async def _receive_client(sock: socket.socket, conn: _ClientConnection) -> None:
    address = conn._address
    while True:
        await trio.lowlevel.wait_readable(sock)
        now = trio.current_time()
        for _ in range(_BATCH):
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:
                conn.unreachable()
                continue
            except OSError as exc:
                log.debug("quic: receiving from %s failed: %s", conn.where, exc)
                continue
            conn.receive(data, address, now)
        conn.transmit()


@asynccontextmanager
async def open_quic(dialer: QuicDialer) -> AsyncIterator[QuicStream]:
    """Connect as `dialer` says and yield the stream; leaving closes the connection.

    Raises:
        ConnectError: the server could not be reached or was not the one
            expected, within `dialer.connect_timeout`.
    """
    where = _where(dialer.host, dialer.port)
    config = _client_configuration(dialer)
    deadline = trio.current_time() + dialer.connect_timeout
    with trio.move_on_at(deadline):
        family, address = await _resolve(dialer.host, dialer.port)
    if trio.current_time() >= deadline:
        raise ConnectError(
            f"quic: cannot resolve {dialer.host} within {dialer.connect_timeout:g} s"
        )
    sock = _udp_socket(family)
    try:
        try:
            sock.connect(address)
        except OSError as exc:
            raise ConnectError(f"quic: cannot reach {where}: {exc.strerror or exc}") from exc
        def send(data: bytes, _: NetworkAddress) -> None:
            sock.send(data)  # connected: to the server only

        conn = _ClientConnection(
            _Quic(configuration=config),
            send,
            address,
            where=where,
            idle_timeout=dialer.idle_timeout,
            window=WINDOW,
            send_buffer=SEND_BUFFER,
            pin=dialer.fingerprint,
        )
        with unwrap_group():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_receive_client, sock, conn)
                nursery.start_soon(conn.run_timer)
                conn.quic.connect(address, now=trio.current_time())
                conn.transmit()
                try:
                    with trio.move_on_at(deadline):
                        while not conn.established and conn.failure is None:
                            await conn.state.wait()
                except BaseException:
                    # Cancelled: tell the server, which frees its pending slot at once.
                    conn.close("the client gave up", code=ABORTED)
                    raise
                if conn.failure is not None:
                    raise conn.failure
                if not conn.established:
                    conn.close("no answer in time")
                    raise ConnectError(
                        f"quic: no answer from {where} within {dialer.connect_timeout:g} s"
                    )
                try:
                    yield conn.stream
                finally:
                    try:
                        await conn.stream.aclose()
                    finally:
                        nursery.cancel_scope.cancel()
    finally:
        sock.close()


@attrs.frozen
class QuicDialer:
    """Dial a unit (or cmdr) over QUIC.

    The server is checked by `fingerprint` if given (then `ca` is not used),
    else against `ca`, else against the system's CAs; by a CA, its
    certificate must name `server_name` (default: `host`).

    Attributes:
        host: the server's name or address.
        port: its UDP port.
        ca: a PEM file of the CA(s) to verify the server against.
        fingerprint: a pin, `sha256:HEX`: the server's certificate or the CA
            that issued it for cmdr.
        cert: our certificate chain (PEM), for servers that require one (mTLS).
        key: its private key (PEM).
        server_name: the name to check (and send as SNI) instead of `host`.
        idle_timeout: seconds of silence from the server after which the
            connection ends (a live one is kept by pings).
        connect_timeout: seconds to resolve, shake hands and check the server.
    """

    host: str
    port: int = attrs.field(default=DEFAULT_PORT, validator=_port)
    ca: str | None = None
    fingerprint: str | None = attrs.field(default=None, converter=_pin)
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    idle_timeout: float = attrs.field(default=30.0, validator=_positive)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("quic: cert and key go together: give both or neither")

    def connect(self) -> AbstractAsyncContextManager[QuicStream]:
        """Open the connection; see `open_quic`."""
        return open_quic(self)

    def describe(self) -> str:
        """`quic: HOST:PORT`."""
        return f"quic: {_where(self.host, self.port)}"

    @classmethod
    def from_url(cls, url: str) -> QuicDialer:
        """Read `quic://HOST:PORT?fingerprint=sha256:...&ca=/path` (port 7447 if absent).

        Options: fingerprint, ca, cert, key, server_name, idle_timeout, connect_timeout.

        Raises:
            ValueError: not such a URL, saying what is wrong.
        """
        host, port, options = _parse_url(
            url,
            {
                "fingerprint": str, "ca": str, "cert": str, "key": str, "server_name": str,
                "idle_timeout": float, "connect_timeout": float,
            },
        )
        return cls(host, port, **options)
