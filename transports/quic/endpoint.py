"""`_Server`: the QUIC listener's UDP socket. It reads datagrams, routes each to
its connection by destination connection id, starts connections for new
clients (or refuses them), and hands over those ready to be accepted."""

from __future__ import annotations

import logging
import math
import socket
from typing import TYPE_CHECKING

import trio
from aioquic._buffer import Buffer  # aioquic.buffer re-exports it untyped
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from cryptography import x509

from .connection import _ServerConnection
from .constants import SEND_BUFFER, WINDOW
from .internals import _Quic
from .options import _where
from .udp import _BATCH, _MAX_DATAGRAM

if TYPE_CHECKING:
    from .listener import QuicListener


log = logging.getLogger("latis.transports.quic")


class _Server:
    """The listener's socket: routes datagrams to connections by connection id."""

    def __init__(
        self,
        sock: socket.socket,
        config: QuicConfiguration,
        listener: QuicListener,
        client_cas: list[x509.Certificate] | None,
        nursery: trio.Nursery,
    ) -> None:
        self._sock = sock
        self._config = config
        self._options = listener
        self.client_cas = client_cas
        self._nursery = nursery
        self._routes: dict[bytes, _ServerConnection] = {}
        #: Connections not accepted yet (handshaking, or waiting in `ready_receive`).
        self.pending: set[_ServerConnection] = set()
        self._ready_send, self.ready_receive = trio.open_memory_channel[_ServerConnection](
            math.inf
        )
        self._accepting = True

    def _send(self, data: bytes, address: NetworkAddress) -> None:
        self._sock.sendto(data, address)

    async def run(self) -> None:
        sock = self._sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            now = trio.current_time()
            touched: dict[int, _ServerConnection] = {}
            for _ in range(_BATCH):
                try:
                    data, address = sock.recvfrom(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.debug("quic: receiving failed: %s", exc)
                    continue
                conn = self._route(data, address, now)
                if conn is not None:
                    conn.receive(data, address, now)
                    touched[id(conn)] = conn
            for conn in touched.values():
                conn.transmit()

    def _route(self, data: bytes, address: NetworkAddress, now: float) -> _ServerConnection | None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._config.connection_id_length
            )
        except ValueError:
            return None  # not QUIC
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in self._config.supported_versions
        ):
            self._send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self._config.supported_versions,
                ),
                address,
            )
            return None
        conn = self._routes.get(header.destination_cid)
        if conn is not None:
            return conn
        if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
            return None  # not a new connection (or a padding-less Initial): drop it
        if not self._accepting:
            self._refuse(data, address, header.destination_cid, now, "the listener is closed")
            return None
        if len(self.pending) >= self._options.max_pending:
            self._refuse(
                data, address, header.destination_cid, now,
                f"too many connections waiting to be accepted "
                f"(max_pending={self._options.max_pending})",
            )
            return None
        quic = _Quic(
            configuration=self._config,
            original_destination_connection_id=header.destination_cid,
            request_client_certificate=self.client_cas is not None,
        )
        conn = _ServerConnection(
            quic,
            self._send,
            address,
            where=_where(str(address[0]), int(address[1])),
            idle_timeout=self._options.idle_timeout,
            window=WINDOW,
            send_buffer=SEND_BUFFER,
            server=self,
        )
        # The client addresses us by the id it made up until it hears ours.
        self.route(header.destination_cid, conn)
        self.route(quic.host_cid, conn)
        self.pending.add(conn)
        self._nursery.start_soon(conn.run_timer)
        return conn

    def _refuse(
        self, data: bytes, address: NetworkAddress, cid: bytes, now: float, reason: str
    ) -> None:
        # A connection only to say no: the client fails at once, not at its timeout.
        log.info("quic: refused %s: %s", _where(str(address[0]), int(address[1])), reason)
        quic = QuicConnection(configuration=self._config, original_destination_connection_id=cid)
        quic.receive_datagram(data, address, now)
        quic.close(
            error_code=QuicErrorCode.CONNECTION_REFUSED,
            frame_type=QuicFrameType.PADDING,
            reason_phrase=reason,
        )
        for datagram, to in quic.datagrams_to_send(now):
            try:
                self._send(datagram, to)
            except OSError:
                pass

    def route(self, cid: bytes, conn: _ServerConnection | None) -> None:
        """Route datagrams for `cid` to `conn` (None: no longer)."""
        if conn is None:
            self._routes.pop(cid, None)
        else:
            self._routes[cid] = conn
            conn.cids.add(cid)

    def ready(self, conn: _ServerConnection) -> None:
        self._ready_send.send_nowait(conn)

    def forget(self, conn: _ServerConnection) -> None:
        for cid in conn.cids:
            if self._routes.get(cid) is conn:
                del self._routes[cid]
        self.pending.discard(conn)

    def stop_accepting(self) -> None:
        if not self._accepting:
            return
        self._accepting = False
        self._ready_send.close()
        for conn in list(self.pending):
            conn.close(
                "the listener is closed",
                code=QuicErrorCode.CONNECTION_REFUSED,
                frame_type=QuicFrameType.PADDING,
            )

    def shutdown(self) -> None:
        """Close every connection (CONNECTION_CLOSE sent now)."""
        self.stop_accepting()
        for conn in {id(c): c for c in self._routes.values()}.values():
            if conn.ended is None:
                conn._end(f"quic: the listener shut down (connection from {conn.where})")
                conn.close("the listener shut down")
