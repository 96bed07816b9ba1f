"""The `quic` transport: latis over QUIC, aioquic's sans-IO connection driven by trio.

One latis connection is one QUIC connection carrying one bidirectional
stream (the client's first, id 0), with ALPN `latis/1` over TLS 1.3.

- The dialer checks the server by a pin (`fingerprint`: the server's own
  certificate, or the CA that issued it for cmdr; see
  `latis_core._os.tls.check_pin`) or against a CA file (`ca`, host name
  included). With a pin aioquic verifies nothing: the pin is checked on the
  chain the server sent as soon as the handshake completes, before a byte of
  ours goes out.
- The listener serves any number of clients on one UDP socket and routes
  each datagram by its destination connection id. `accept()` gets a stream
  once its handshake completed and the client opened its stream. With
  `client_ca` clients must show a certificate that CA issued for client use
  (mTLS); `max_pending` bounds the connections not accepted yet.

QUIC opens a stream only by sending on it, and either side may speak first
(a unit that dials cmdr waits for cmdr's `hello`), so the dialer opens its
stream with one byte, `OPEN`, which the listener drops.

Flow control is end to end, as with TCP. aioquic grants the peer more
credit as soon as bytes arrive; here credit follows what the application
has read (`WINDOW` ahead of it), so a reader that stops reading stops the
sender. `send_all` leaves at most `SEND_BUFFER` bytes inside aioquic that
it has not sent yet, and waits for the rest.

A silent peer ends the connection after the idle timeout; a live but quiet
one is kept by a PING every third of it. `aclose()` sends FIN, waits until
the peer acknowledged everything, then closes the connection; cancelled (or
via `trio.aclose_forcefully`) it resets the stream instead.

aioquic has no public API for some of this; everything we use of its
internals is in `_Quic` and the `_aioquic_*` helpers.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio
from aioquic._buffer import Buffer  # aioquic.buffer re-exports it untyped
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
    QuicConnectionState,
)
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    HandshakeCompleted,
    PingAcknowledged,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream as _AioquicStream
from aioquic.tls import load_pem_x509_certificates
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from latis_core._errors import ConnectError
from latis_core._os.tls import check_pin, normalize_pin
from latis_core._util import unwrap_group

__all__ = [
    "ALPN",
    "DEFAULT_PORT",
    "QuicDialer",
    "QuicListener",
    "QuicStream",
    "QuicStreamListener",
    "QuicStreamStatistics",
    "open_quic",
]

log = logging.getLogger("latis.transports.quic")

#: The ALPN protocol both sides require.
ALPN = "latis/1"
#: The UDP port dialers and listeners use unless told otherwise.
DEFAULT_PORT = 7447
#: Bytes the peer may send beyond what our application has read (per stream).
WINDOW = 1024 * 1024
#: Bytes `send_all` leaves inside aioquic that it has not sent yet.
SEND_BUFFER = 256 * 1024
#: What `receive_some()` returns at most without `max_bytes`.
READ_SIZE = 64 * 1024
#: The byte that opens the dialer's stream; the listener drops it.
OPEN = b"\x00"
#: The one stream of a connection: the client's first bidirectional stream.
STREAM_ID = 0
#: Application error code of an abrupt close (stream reset, connection close).
ABORTED = 0x1
#: A TLS `bad_certificate` alert as a QUIC error (RFC 9001 section 4.8).
BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42
#: Datagrams read from a socket before the replies go out.
_BATCH = 64
_MAX_DATAGRAM = 65536
_SOCKET_BUFFER = 4 * 1024 * 1024
#: Ping uids: the one that confirms a client certificate was accepted, keep-alives.
_CONFIRM, _KEEPALIVE = 1, 2


# ---- aioquic internals --------------------------------------------------------------
#
# aioquic's sans-IO API has no way to grant flow-control credit by what the
# application read, to ask a client for its certificate, to read the peer's
# certificates, or to see how much of a stream is unsent. These are the only
# places that reach inside it (written against aioquic 1.7; the tests cover each).


class _Quic(QuicConnection):
    """aioquic's connection with two changes.

    - Stream credit (MAX_STREAM_DATA) is `credit[stream_id]`, raised by our
      reader as the application reads, instead of doubling as data arrives
      (which lets a sender fill the receiver's memory without limit). Streams
      we do not read get no credit beyond the first window.
    - A server may ask the client for a certificate (mTLS).
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        original_destination_connection_id: bytes | None = None,
        request_client_certificate: bool = False,
    ) -> None:
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
        )
        self.credit: dict[int, int] = {}
        self._latis_request_certificate = request_client_certificate

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if self._latis_request_certificate:
            # aioquic marks this "for test purposes only"; it sends a
            # CertificateRequest and keeps what the client shows (checked by us).
            self.tls._request_client_certificate = True

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: _AioquicStream
    ) -> None:
        # aioquic's own version, less the doubling.
        limit = self.credit.get(stream.stream_id or 0)
        if limit is not None and limit > stream.max_stream_data_local:
            stream.max_stream_data_local = limit
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id or 0)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local


def _aioquic_peer_certificates(quic: QuicConnection) -> list[x509.Certificate]:
    """The certificates the peer showed, its own first (aioquic keeps them parsed)."""
    leaf = quic.tls._peer_certificate
    return [] if leaf is None else [leaf, *quic.tls._peer_certificate_chain]


def _aioquic_asked_for_certificate(quic: QuicConnection) -> bool:
    """Whether the server asked us (a client) for a certificate."""
    return getattr(quic.tls, "_certificate_request", True) is not None


def _aioquic_closing(quic: QuicConnection) -> ConnectionTerminated | None:
    """Why the connection is closing; aioquic reports it as an event only
    after the closing period (three PTOs), we want to know at once."""
    return quic._close_event


def _aioquic_closed_by_peer(quic: QuicConnection) -> bool:
    return quic._state is QuicConnectionState.DRAINING


def _aioquic_stream(quic: QuicConnection, stream_id: int) -> _AioquicStream:
    return quic._streams[stream_id]


def _aioquic_connection_window(quic: QuicConnection) -> int:
    """Bytes the peer's connection-wide flow control lets us send now."""
    return quic._remote_max_data - quic._remote_max_data_used


# ---- the stream ---------------------------------------------------------------------


class _Guard:
    """Raises `trio.BusyResourceError` when two tasks use one side at once."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._busy = False
        self._message = message

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True
        try:
            yield
        finally:
            self._busy = False


class _Signal:
    """Wakes the tasks waiting for a change (an Event made only when one waits)."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: trio.Event | None = None

    async def wait(self) -> None:
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()

    def notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None


@attrs.frozen
class QuicStreamStatistics:
    """What a `QuicStream` holds (see `QuicStream.statistics`).

    Attributes:
        unsent: bytes given to `send_all` that have not left yet.
        send_window: bytes the peer's flow control lets us send now.
        unread: bytes received that `receive_some` has not returned yet.
    """

    unsent: int
    send_window: int
    unread: int


class QuicStream(trio.abc.HalfCloseableStream):
    """The stream of one QUIC connection; `peer_address` is the peer's (host, port).

    `send_eof` sends FIN; `receive_some` returns b"" after the peer's FIN and
    raises `trio.BrokenResourceError` when the peer reset the stream or the
    connection ended (closed by the peer, idle timeout). `aclose` closes the
    whole connection: cleanly, or abruptly (a reset) when cancelled.
    """

    #: A cancelled `receive_some` loses nothing (latis's links read from any task).
    cancel_safe_receive = True

    def __init__(self, conn: _Connection, *, window: int, send_buffer: int) -> None:
        self._conn = conn
        self._window = window
        self._send_buffer = send_buffer
        self._send_guard = _Guard("another task is sending on this QUIC stream")
        self._receive_guard = _Guard("another task is receiving on this QUIC stream")
        self._closed = False
        # Receiving: chunks not read yet, the stream offset of the next byte
        # the application reads, and the credit granted up to.
        self._chunks: deque[bytes] = deque()
        self._unread = 0
        self._read_offset = 0
        self._granted = window
        self._fin_received = False
        self._reset_code: int | None = None
        # Sending: bytes handed to aioquic (its stream offset), FIN, STOP_SENDING.
        self._written = 0
        self._eof_sent = False
        self._stopped_code: int | None = None
        self._sender: _AioquicStream | None = None

    @property
    def peer_address(self) -> tuple[str, int]:
        """The peer's address: (host, port)."""
        return self._conn.peer_address

    def statistics(self) -> QuicStreamStatistics:
        """What this stream holds now: see `QuicStreamStatistics`."""
        send_window = 0
        if self._sender is not None:
            send_window = max(
                0,
                min(
                    self._sender.max_stream_data_remote - self._sender.sender.highest_offset,
                    _aioquic_connection_window(self._conn.quic),
                ),
            )
        return QuicStreamStatistics(
            unsent=self._unsent(), send_window=send_window, unread=self._unread
        )

    # -- fed by the connection --

    def _opened(self, sender: _AioquicStream, written: int, read_offset: int) -> None:
        self._sender = sender
        self._written = written
        self._read_offset = read_offset

    def _on_data(self, data: bytes, fin: bool) -> None:
        if data:
            self._chunks.append(data)
            self._unread += len(data)
        if fin:
            self._fin_received = True
        self._conn.readable.notify()

    def _on_reset(self, code: int) -> None:
        self._reset_code = code
        self._conn.readable.notify()

    def _on_stop_sending(self, code: int) -> None:
        self._stopped_code = code
        self._conn.writable.notify()

    # -- sending --

    def _unsent(self) -> int:
        if self._sender is None:
            return 0
        return self._written - self._sender.sender.highest_offset

    def _check_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this QUIC stream was closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof was called on this QUIC stream")
        ended = self._conn.ended
        if ended is not None:
            raise trio.BrokenResourceError(ended)
        if self._stopped_code is not None:
            raise trio.BrokenResourceError(
                f"quic: {self._conn.where} stopped reading (code {self._stopped_code})"
            )

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data`, waiting while aioquic holds `SEND_BUFFER` bytes it could not send.

        Raises:
            trio.BrokenResourceError: the connection ended or the peer stopped reading.
            trio.ClosedResourceError: we closed the stream or sent EOF.
        """
        with self._send_guard():
            self._check_send()
            await trio.lowlevel.checkpoint_if_cancelled()
            view = memoryview(data).cast("B")
            waited = False
            conn = self._conn
            while view:
                self._check_send()
                room = self._send_buffer - self._unsent()
                if room <= 0:
                    await conn.writable.wait()
                    waited = True
                    continue
                chunk, view = view[:room], view[room:]
                conn.quic.send_stream_data(STREAM_ID, bytes(chunk))
                self._written += len(chunk)
                conn.transmit()
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Hand all of `data` to aioquic now, without waiting; not a checkpoint.

        Returns whether more may be sent now: False once aioquic holds
        `SEND_BUFFER` bytes or more it could not send (then wait with
        `wait_send_all_might_not_block`).

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.BrokenResourceError: the connection ended or the peer stopped reading.
            trio.ClosedResourceError: we closed the stream or sent EOF.
        """
        with self._send_guard():
            self._check_send()
            if data:
                conn = self._conn
                conn.quic.send_stream_data(STREAM_ID, bytes(data))
                self._written += len(data)
                conn.transmit()
            return self._unsent() < self._send_buffer

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until `send_all` would hand data to aioquic at once (or fail)."""
        with self._send_guard():
            if self._closed:
                raise trio.ClosedResourceError("this QUIC stream was closed")
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while (
                self._conn.ended is None
                and self._stopped_code is None
                and self._unsent() >= self._send_buffer
            ):
                await self._conn.writable.wait()
                waited = True
                if self._closed:
                    raise trio.ClosedResourceError("this QUIC stream was closed")
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        """Send FIN after what was sent: the peer reads b"" after it. We may still receive.

        Sending it again does nothing.
        """
        with self._send_guard():
            if self._closed:
                raise trio.ClosedResourceError("this QUIC stream was closed")
            await trio.lowlevel.checkpoint_if_cancelled()
            if not self._eof_sent:
                self._check_send()
                self._eof_sent = True
                self._conn.quic.send_stream_data(STREAM_ID, b"", end_stream=True)
                self._conn.transmit()
            await trio.lowlevel.cancel_shielded_checkpoint()

    # -- receiving --

    def _take(self, max_bytes: int) -> bytes:
        parts = []
        size = 0
        chunks = self._chunks
        while chunks and size < max_bytes:
            chunk = chunks[0]
            room = max_bytes - size
            if len(chunk) <= room:
                chunks.popleft()
            else:
                chunks[0] = chunk[room:]
                chunk = chunk[:room]
            parts.append(chunk)
            size += len(chunk)
        self._unread -= size
        self._read_offset += size
        # Grant the peer more credit as the application reads, half a window at a time.
        granted = self._read_offset + self._window
        if granted - self._granted >= self._window // 2 and self._conn.ended is None:
            self._granted = granted
            self._conn.quic.credit[STREAM_ID] = granted
            self._conn.transmit()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return the next bytes (at most `max_bytes`), or b"" after the peer's FIN.

        Raises:
            trio.BrokenResourceError: the peer reset the stream, or the connection
                ended without FIN (closed by the peer, idle timeout).
            trio.ClosedResourceError: we closed the stream.
        """
        if max_bytes is None:
            max_bytes = READ_SIZE
        elif not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an integer, got {max_bytes!r}")
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._receive_guard():
            if self._closed:
                raise trio.ClosedResourceError("this QUIC stream was closed")
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                if self._reset_code is not None:
                    # A reset discards what is unread, as TCP's RST does.
                    raise trio.BrokenResourceError(
                        f"quic: {self._conn.where} reset the stream (code {self._reset_code})"
                    )
                if self._chunks:
                    data = self._take(max_bytes)
                    break
                if self._fin_received:
                    data = b""
                    break
                ended = self._conn.ended
                if ended is not None:
                    raise trio.BrokenResourceError(ended)
                await self._conn.readable.wait()
                waited = True
                if self._closed:
                    raise trio.ClosedResourceError("this QUIC stream was closed")
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    # -- closing --

    def _all_acknowledged(self) -> bool:
        if self._stopped_code is not None or self._sender is None:
            return True
        return self._sender.sender.is_finished

    async def aclose(self) -> None:
        """Close the connection: FIN, wait until the peer acknowledged all we sent
        (at most the idle timeout), then CONNECTION_CLOSE.

        Cancelled (e.g. by `trio.aclose_forcefully`) it resets the stream and
        closes the connection at once. Closing again does nothing.
        """
        conn = self._conn
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        conn.readable.notify()
        conn.writable.notify()
        try:
            await trio.lowlevel.checkpoint()
            if conn.ended is None and self._sender is not None:
                if not self._eof_sent and self._stopped_code is None:
                    self._eof_sent = True
                    conn.quic.send_stream_data(STREAM_ID, b"", end_stream=True)
                    conn.transmit()
                with trio.move_on_after(conn.idle_timeout) as scope:
                    while conn.ended is None and not self._all_acknowledged():
                        await conn.writable.wait()
                if scope.cancelled_caught:
                    conn.abort(f"{conn.where} acknowledged nothing for {conn.idle_timeout:g} s")
                    return
        except BaseException:
            conn.abort("closed abruptly")
            raise
        conn.close()


# ---- one connection -----------------------------------------------------------------


class _Connection:
    """One QUIC connection and its stream, fed by whoever reads the socket.

    Every entry point (`receive` then `transmit`, `run_timer`, the stream's
    methods) leaves aioquic's state sent: nothing waits in it for a later call.
    """

    def __init__(
        self,
        quic: _Quic,
        send: Callable[[bytes, NetworkAddress], None],
        address: NetworkAddress,
        *,
        where: str,
        idle_timeout: float,
        window: int,
        send_buffer: int,
    ) -> None:
        self.quic = quic
        self._send = send
        self._address = address
        self.where = where
        self.idle_timeout = idle_timeout
        self.stream = QuicStream(self, window=window, send_buffer=send_buffer)
        self.readable = _Signal()
        self.writable = _Signal()
        self.state = _Signal()
        #: The stream may be handed to the application.
        self.established = False
        #: Why the connection no longer carries data (the message of the
        #: BrokenResourceError the stream raises), or None while it does.
        self.ended: str | None = None
        #: aioquic is done with it (after the closing period).
        self.terminated = False
        self._keepalive = idle_timeout / 3
        self._keepalive_at: float | None = None
        self._timer_scope: trio.CancelScope | None = None

    @property
    def peer_address(self) -> tuple[str, int]:
        address = self.quic.get_peer_address() or self._address
        return (str(address[0]), int(address[1]))

    # -- driving aioquic --

    def receive(self, data: bytes, address: NetworkAddress, now: float) -> None:
        """Feed one datagram; the caller transmits after the batch."""
        self.quic.receive_datagram(data, address, now)
        if self._keepalive_at is not None:
            self._keepalive_at = now + self._keepalive
        self.handle_events()

    def transmit(self) -> None:
        """Send what aioquic has to send, and re-arm the timer."""
        for data, address in self.quic.datagrams_to_send(trio.current_time()):
            try:
                self._send(data, address)
            except (BlockingIOError, InterruptedError):
                pass  # the socket's buffer is full: lost, like on a busy link; QUIC resends
            except ConnectionRefusedError:
                self.unreachable()
            except OSError as exc:
                log.debug("quic: sending to %s failed: %s", self.where, exc)
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._deadline()
        self.writable.notify()

    def _deadline(self) -> float:
        at = self.quic.get_timer()
        deadline = math.inf if at is None else at
        if self._keepalive_at is not None and self._keepalive_at < deadline:
            deadline = self._keepalive_at
        return deadline

    async def run_timer(self) -> None:
        """Fire aioquic's timers (and our keep-alive) until aioquic is done."""
        while not self.terminated:
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            if self.terminated:
                return
            now = trio.current_time()
            at = self.quic.get_timer()
            if at is not None and now >= at:
                self.quic.handle_timer(now)
            if self._keepalive_at is not None and now >= self._keepalive_at:
                self.quic.send_ping(_KEEPALIVE)
                self._keepalive_at = now + self._keepalive
            self.handle_events()
            self.transmit()

    def handle_events(self) -> None:
        quic = self.quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, StreamDataReceived):
                if event.stream_id == STREAM_ID:
                    self._on_stream_data(event.data, event.end_stream)
            elif isinstance(event, StreamReset):
                if event.stream_id == STREAM_ID:
                    self.stream._on_reset(event.error_code)
            elif isinstance(event, StopSendingReceived):
                if event.stream_id == STREAM_ID:
                    self.stream._on_stop_sending(event.error_code)
            elif isinstance(event, HandshakeCompleted):
                self._keepalive_at = trio.current_time() + self._keepalive
                self._on_handshake()
            elif isinstance(event, PingAcknowledged):
                if event.uid == _CONFIRM:
                    self._on_confirmed()
            elif isinstance(event, ConnectionIdIssued):
                self._on_connection_id(event.connection_id, issued=True)
            elif isinstance(event, ConnectionIdRetired):
                self._on_connection_id(event.connection_id, issued=False)
            elif isinstance(event, ConnectionTerminated):
                self._on_terminated(event)
        if self.ended is None:
            closing = _aioquic_closing(quic)
            if closing is not None:
                self._end(self._closing_reason(closing, by_peer=_aioquic_closed_by_peer(quic)))

    def _closing_reason(self, event: ConnectionTerminated, *, by_peer: bool) -> str:
        said = event.reason_phrase or (
            f"error 0x{event.error_code:x}" if event.error_code else ""
        )
        if by_peer:
            return f"quic: {self.where} closed the connection" + (f": {said}" if said else "")
        return f"quic: the connection to {self.where} failed: {said}"

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if self.ended is None:
            # Terminated with no CONNECTION_CLOSE either way: the idle timeout.
            self._end(
                f"quic: nothing heard from {self.where} for {self.idle_timeout:g} s "
                "(idle timeout)"
            )
        self.terminated = True
        if self._timer_scope is not None:
            self._timer_scope.cancel()

    def _end(self, reason: str) -> None:
        if self.ended is not None:
            return
        self.ended = reason
        self.readable.notify()
        self.writable.notify()
        self.state.notify()

    # -- closing (the stream's aclose, the listener's shutdown) --

    def close(
        self,
        reason: str = "",
        *,
        code: int = QuicErrorCode.NO_ERROR,
        frame_type: int | None = None,
    ) -> None:
        """CONNECTION_CLOSE, sent now: an application's (`code` is ours) unless
        `frame_type` makes it a transport's (`code` is a QuicErrorCode)."""
        if self.ended is None:
            self._end(f"quic: the connection to {self.where} was closed")
        self.quic.close(error_code=code, frame_type=frame_type, reason_phrase=reason)
        self.transmit()

    def abort(self, reason: str) -> None:
        """Reset the stream, then close the connection with `ABORTED`."""
        if self.ended is None and self.stream._sender is not None:
            self.quic.reset_stream(STREAM_ID, ABORTED)
            try:
                self.quic.stop_stream(STREAM_ID, ABORTED)
            except ValueError:
                pass  # aioquic already discarded the stream (both sides finished)
            self.transmit()
        self.close(reason, code=ABORTED)

    # -- what clients and servers do differently --

    def _on_stream_data(self, data: bytes, fin: bool) -> None:
        self.stream._on_data(data, fin)

    def _on_handshake(self) -> None:
        raise NotImplementedError

    def _on_confirmed(self) -> None:
        pass

    def _on_connection_id(self, cid: bytes, *, issued: bool) -> None:
        pass

    def unreachable(self) -> None:
        pass


class _ClientConnection(_Connection):
    def __init__(self, *args: Any, pin: str | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pin = pin
        #: Why connecting failed, for `connect()` to raise.
        self.failure: ConnectError | None = None

    def _fail(self, error: ConnectError, code: int = BAD_CERTIFICATE) -> None:
        self.failure = error
        self.quic.close(error_code=code, frame_type=QuicFrameType.CRYPTO, reason_phrase=str(error))
        self._end(str(error))

    def _on_handshake(self) -> None:
        quic = self.quic
        if self._pin is not None:
            chain = [c.public_bytes(Encoding.DER) for c in _aioquic_peer_certificates(quic)]
            try:
                check_pin(chain, self._pin, what=f"quic://{self.where}")
            except ConnectError as exc:
                self._fail(exc)
                return
        # Open the stream (it goes out with our Finished).
        quic.send_stream_data(STREAM_ID, OPEN)
        self.stream._opened(_aioquic_stream(quic, STREAM_ID), len(OPEN), 0)
        quic.credit[STREAM_ID] = self.stream._granted
        if _aioquic_asked_for_certificate(quic):
            # The server decides on our certificate after our Finished: we
            # know it took it when it acknowledges this ping.
            quic.send_ping(_CONFIRM)
        else:
            self._establish()

    def _on_confirmed(self) -> None:
        if self.ended is None:
            self._establish()

    def _establish(self) -> None:
        self.established = True
        self.state.notify()

    def _end(self, reason: str) -> None:
        if not self.established and self.failure is None and self.ended is None:
            closing = _aioquic_closing(self.quic)
            if closing is not None and _aioquic_closed_by_peer(self.quic):
                said = closing.reason_phrase or f"error 0x{closing.error_code:x}"
                message = f"quic: {self.where} refused the connection: {said}"
            elif closing is not None and closing.error_code >= QuicErrorCode.CRYPTO_ERROR:
                message = f"quic: TLS with {self.where} failed: {closing.reason_phrase}"
            else:
                message = reason
            self.failure = ConnectError(message)
        super()._end(reason)

    def unreachable(self) -> None:
        if not self.established and self.failure is None:
            self.failure = ConnectError(
                f"quic: nothing listens at {self.where} (connection refused)"
            )
            self._end(str(self.failure))


class _ServerConnection(_Connection):
    def __init__(
        self,
        *args: Any,
        server: _Server,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._server = server
        self.cids: set[bytes] = set()
        self._handshaken = False
        self._opened = False

    def _on_handshake(self) -> None:
        cas = self._server.client_cas
        if cas is not None:
            problem = _client_certificate_problem(_aioquic_peer_certificates(self.quic), cas)
            if problem is not None:
                reason = f"client certificate refused: {problem}"
                log.info("quic: %s: %s", self.where, reason)
                self.quic.close(
                    error_code=BAD_CERTIFICATE,
                    frame_type=QuicFrameType.CRYPTO,
                    reason_phrase=reason,
                )
                self._end(f"quic: {self.where}: {reason}")
                return
        self._handshaken = True
        self._maybe_ready()

    def _on_stream_data(self, data: bytes, fin: bool) -> None:
        if not self._opened:
            if not data.startswith(OPEN):
                self.quic.close(
                    error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                    frame_type=QuicFrameType.STREAM_BASE,
                    reason_phrase=f"a {ALPN} stream starts with {OPEN!r}",
                )
                self._end(f"quic: {self.where} did not open its stream as {ALPN} does")
                return
            self._opened = True
            data = data[len(OPEN):]
            quic = self.quic
            self.stream._opened(_aioquic_stream(quic, STREAM_ID), 0, len(OPEN))
            quic.credit[STREAM_ID] = self.stream._granted
            self._maybe_ready()
        self.stream._on_data(data, fin)

    def _maybe_ready(self) -> None:
        if self._handshaken and self._opened and self.ended is None and not self.established:
            self.established = True
            self._server.ready(self)

    def _on_connection_id(self, cid: bytes, *, issued: bool) -> None:
        self._server.route(cid, self if issued else None)

    def _end(self, reason: str) -> None:
        super()._end(reason)
        self._server.pending.discard(self)

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        super()._on_terminated(event)
        self._server.forget(self)


def _client_certificate_problem(
    chain: list[x509.Certificate], cas: list[x509.Certificate]
) -> str | None:
    """Why the client's chain does not pass mTLS, or None when it does."""
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    if not chain:
        return "it showed none, and this listener requires one issued by its client CA"
    verifier = PolicyBuilder().store(Store(cas)).build_client_verifier()
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        return f"not issued by the client CA for client use: {exc}"
    return None


# ---- the dialer ---------------------------------------------------------------------


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def _udp_socket(family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        except OSError:
            pass  # over the system's limit: the default works too
    return sock


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


def _positive(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0 seconds, got {value!r}")


def _port(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be from 0 to 65535, got {value!r}")


def _pin(value: str | None) -> str | None:
    return None if value is None else normalize_pin(value)


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


# ---- the listener -------------------------------------------------------------------


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


def _parse_url(
    url: str, known: dict[str, Callable[[str], Any]]
) -> tuple[str, int, dict[str, Any]]:
    parts = urlsplit(url)
    if parts.scheme != "quic":
        raise ValueError(f"{url!r} is not a quic URL: expected quic://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port must be a number from 0 to 65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} names no host: expected quic://HOST:PORT")
    if parts.path not in ("", "/") or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: expected quic://HOST:PORT, with options after '?' only")
    options: dict[str, Any] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            raise ValueError(
                f"{url!r}: unknown option {name!r} (known: {', '.join(sorted(known))})"
            )
        if name in options:
            raise ValueError(f"{url!r}: option {name!r} is given twice")
        try:
            options[name] = known[name](text)
        except ValueError:
            kind = "a number" if known[name] is not str else "text"
            raise ValueError(f"{url!r}: option {name!r} must be {kind}, got {text!r}") from None
    return host, DEFAULT_PORT if port is None else port, options


#: This module's dialer, for the `latis.transports` registry.
DIALER = QuicDialer
#: This module's listener, for the `latis.transports` registry.
LISTENER = QuicListener
