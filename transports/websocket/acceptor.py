"""`WebSocketAcceptor`: the accepting side of a websocket listener. It serves
each TCP connection's websocket handshake (bounded in number and time),
answers other paths 404 and a full queue 503, and queues the rest for
`accept()`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio
from trio.lowlevel import checkpoint

from .reader import RECEIVE_SIZE, _ReaderTask
from .stream import WebSocketStream, _peer_address

if TYPE_CHECKING:
    from trio_websocket import WebSocketRequest


log = logging.getLogger("latis.transport.websocket")

#: Seconds a client of a listener gets from TCP connect to its upgrade request.
HANDSHAKE_TIMEOUT = 10.0


class WebSocketAcceptor(trio.abc.Listener[WebSocketStream]):
    """The accepting side of a `WebSocketListener`: `accept()` returns the next
    connection whose websocket handshake is done.

    Attributes:
        port: the port bound (useful after listening on port 0).
        path: the path served.
        max_pending: the bound on connections waiting for `accept()`, and on
            those in their handshake.
    """

    def __init__(self, port: int, path: str, max_pending: int, max_message: int) -> None:
        self.port = port
        self.path = path
        self.max_pending = max_pending
        self._max_message = max_message
        self._pending = 0
        self._handshaking = 0
        self._closed = False
        self._send, self._receive = trio.open_memory_channel[WebSocketStream](max_pending)

    async def accept(self) -> WebSocketStream:
        """Wait for the next connection and return it.

        Raises:
            trio.ClosedResourceError: the listener was closed.
        """
        if self._closed:
            await checkpoint()
            raise trio.ClosedResourceError("this listener was closed")
        try:
            stream = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("this listener was closed") from None
        self._pending -= 1
        return stream

    async def aclose(self) -> None:
        """Stop handing out connections; close those still waiting."""
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        self._send.close()
        waiting = []
        while True:
            try:
                waiting.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        self._receive.close()
        async with trio.open_nursery() as nursery:
            for stream in waiting:
                nursery.start_soon(stream.aclose)  # each within CLOSE_TIMEOUT

    async def handle(self, transport: trio.abc.Stream) -> None:
        """Serve one TCP connection: its websocket handshake, then hand it to `accept`
        and wait until it is closed. Never raises: one client's trouble is its own."""
        from trio_websocket import ConnectionClosed

        peer = _peer_address(transport)
        try:
            if self._handshaking >= self.max_pending:
                log.warning(
                    "websocket client %s refused: %d connections are in their handshake",
                    peer,
                    self._handshaking,
                )
                return
            async with trio.open_nursery() as nursery:
                try:
                    await self._serve(transport, peer, _ReaderTask(nursery))
                except ConnectionClosed:
                    log.debug("websocket client %s left during the handshake", peer)
                nursery.cancel_scope.cancel()
        except Exception:
            log.warning("websocket connection from %s failed", peer, exc_info=True)
        finally:
            await trio.aclose_forcefully(transport)

    async def _serve(
        self, transport: trio.abc.Stream, peer: tuple[str, int], reader: _ReaderTask
    ) -> None:
        from trio_websocket import wrap_server_stream

        request: WebSocketRequest | None = None
        self._handshaking += 1
        try:
            with trio.move_on_after(HANDSHAKE_TIMEOUT), reader.cancel_on_end():
                request = await wrap_server_stream(
                    reader.nursery,
                    transport,
                    max_message_size=self._max_message,
                    receive_buffer_size=RECEIVE_SIZE,
                )
        finally:
            self._handshaking -= 1
        if request is None:
            log.debug("websocket client %s sent no upgrade request", peer)
            return
        stream = await self._admit(request, transport, peer)
        if stream is not None:
            # The reader task runs in this task's nursery: keep it for as
            # long as the stream is open, or the connection lasts.
            with reader.cancel_on_end():
                await stream.closed.wait()

    async def _admit(
        self, request: WebSocketRequest, transport: trio.abc.Stream, peer: tuple[str, int]
    ) -> WebSocketStream | None:
        path = urlsplit(request.path).path
        if path != self.path:
            log.info("websocket client %s asked for %s: not found", peer, path)
            await request.reject(404, body=b"no latis websocket at this path")
            return None
        if self._closed or self._pending >= self.max_pending:
            log.warning(
                "websocket client %s refused: %d connections already wait to be accepted",
                peer,
                self._pending,
            )
            await request.reject(503, body=b"too many connections wait to be accepted")
            return None
        self._pending += 1
        try:
            connection = await request.accept()
            stream = WebSocketStream(connection, transport, peer, self._max_message)
            # Never blocks: the channel holds max_pending, and at most that
            # many are counted in _pending.
            self._send.send_nowait(stream)
        except BaseException:
            self._pending -= 1
            raise
        return stream
