"""`QuicStream`: the trio stream of one QUIC connection (its one bidirectional
stream), with its statistics and the small guards and signals it waits on."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import attrs
import trio
from aioquic.quic.stream import QuicStream as _AioquicStream

from .constants import READ_SIZE, STREAM_ID
from .internals import _aioquic_connection_window

if TYPE_CHECKING:
    from .connection import _Connection


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
