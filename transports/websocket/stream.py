"""`WebSocketStream`: the latis byte stream over one WebSocket connection, in
binary messages; and the close codes and timeout of its end."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import checkpoint

if TYPE_CHECKING:
    from trio_websocket import CloseReason, WebSocketConnection


#: Seconds the closing handshake may take before the connection is cut.
CLOSE_TIMEOUT = 5.0
#: Close codes that end the stream cleanly: normal, going away, no status.
CLEAN_CLOSE = frozenset({1000, 1001, 1005})


def _reason(reason: CloseReason | None) -> str:
    if reason is None:
        return "the connection ended"
    text = f"close code {reason.code} ({reason.name})"
    return f"{text}: {reason.reason}" if reason.reason else text


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int]:
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    try:
        name = inner.socket.getpeername()
    except (AttributeError, OSError):
        return ("", 0)
    return (str(name[0]), int(name[1]))


class WebSocketStream(trio.abc.Stream):
    """A byte stream over one WebSocket connection, in binary messages.

    Attributes:
        peer_address: the other end's (host, port).
        connection: the trio-websocket connection underneath.
    """

    def __init__(
        self,
        connection: WebSocketConnection,
        transport: trio.abc.Stream,
        peer_address: tuple[str, int],
        max_message: int,
    ) -> None:
        from trio_websocket import ConnectionClosed

        self.connection = connection
        self.peer_address = peer_address
        # Imported once here, not on every send and receive.
        self._connection_closed = ConnectionClosed
        self._transport = transport
        self._max_message = max_message
        # The message being read, and how much of it receive_some has returned.
        self._message = b""
        self._offset = 0
        self._eof = False
        self._broken: str | None = None
        self._closed = False
        self._sending = False
        self._receiving = False
        #: Set once `aclose` has closed the connection.
        self.closed = trio.Event()

    def __repr__(self) -> str:
        host, port = self.peer_address
        return f"<WebSocketStream peer={host}:{port}>"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` as one binary message, or several if it is over the limit."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            if self._closed:
                await checkpoint()
                raise trio.ClosedResourceError("this stream was closed")
            if self._broken is not None:
                await checkpoint()
                raise trio.BrokenResourceError(self._broken)
            if not data:
                # An empty message would say nothing: send nothing.
                await checkpoint()
                return
            send = self.connection.send_message
            limit = self._max_message
            try:
                if len(data) <= limit:
                    await send(bytes(data))  # no copy for bytes
                else:
                    view = memoryview(data).cast("B")
                    for start in range(0, len(view), limit):
                        await send(bytes(view[start : start + limit]))
            except self._connection_closed as exc:
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed") from None
                raise trio.BrokenResourceError(
                    f"the websocket connection is closed: {_reason(exc.reason)}"
                ) from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        await checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return the next bytes received (at most `max_bytes`); b"" at end of stream."""
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            if self._closed:
                await checkpoint()
                raise trio.ClosedResourceError("this stream was closed")
            if self._offset < len(self._message):
                await checkpoint()
            elif not await self._next_message():
                return b""
            message, start = self._message, self._offset
            if start == 0 and (max_bytes is None or max_bytes >= len(message)):
                self._message = b""
                return message  # the whole message: no copy
            end = len(message) if max_bytes is None else min(start + max_bytes, len(message))
            if end == len(message):
                self._message, self._offset = b"", 0
            else:
                self._offset = end
            return message[start:end]
        finally:
            self._receiving = False

    async def _next_message(self) -> bool:
        """Wait for a non-empty message and keep it in `_message`; False at end of stream."""
        if self._broken is not None:
            await checkpoint()
            raise trio.BrokenResourceError(self._broken)
        if self._eof:
            await checkpoint()
            return False
        while True:
            try:
                message = await self.connection.get_message()
            except self._connection_closed as exc:
                # A closed channel raises without yielding: yield here, as
                # every receive_some must.
                await trio.lowlevel.cancel_shielded_checkpoint()
                if self._closed:
                    raise trio.ClosedResourceError("this stream was closed") from None
                reason = exc.reason
                if reason is not None and reason.code in CLEAN_CLOSE:
                    self._eof = True
                    return False
                self._broken = f"the websocket connection broke: {_reason(reason)}"
                raise trio.BrokenResourceError(self._broken) from exc
            if isinstance(message, str):
                # Text has no place in this byte stream: the peer speaks
                # something else. Say so, and give up on the connection.
                self._broken = "the peer sent a text message: not a latis websocket"
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.connection.aclose(1003, "latis sends binary messages only")
                raise trio.BrokenResourceError(self._broken)
            if message:
                self._message, self._offset = message, 0
                return True

    async def aclose(self) -> None:
        """Close the connection: the closing handshake, then the socket.

        Waits at most `CLOSE_TIMEOUT` seconds for the peer; a cancelled
        `aclose` still closes the socket.
        """
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        self._message, self._offset = b"", 0
        try:
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.connection.aclose()
        finally:
            # trio-websocket leaves the socket open when the peer closed first.
            await trio.aclose_forcefully(self._transport)
            self.closed.set()
