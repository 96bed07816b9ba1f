"""One QUIC connection driven by trio: `_Connection` feeds aioquic datagrams and
timers and sends what it has to send; `_ClientConnection` checks the server's
pin and opens the stream, `_ServerConnection` checks the client's certificate
(mTLS) and waits for the stream to open."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from aioquic.quic.connection import NetworkAddress
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
from aioquic.quic.packet import QuicErrorCode, QuicFrameType
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from latis_core._errors import ConnectError
from latis_core._os.tls import check_pin

from .constants import ABORTED, ALPN, BAD_CERTIFICATE, OPEN, STREAM_ID
from .internals import (
    _aioquic_asked_for_certificate,
    _aioquic_closed_by_peer,
    _aioquic_closing,
    _aioquic_peer_certificates,
    _aioquic_stream,
    _Quic,
)
from .stream import QuicStream, _Signal

if TYPE_CHECKING:
    from .endpoint import _Server


log = logging.getLogger("latis.transports.quic")

#: Ping uids: the one that confirms a client certificate was accepted, keep-alives.
_CONFIRM, _KEEPALIVE = 1, 2


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
