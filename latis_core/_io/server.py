"""The serving side of a connection: what a unit and the cmdr daemon share.

`ServerConnection` reads requests and dispatches each through a fixed table
(message class -> handler: never a lookup by name), answers with `send` (now)
or `cork` (with the next batch), and turns a handler's failure into an
`internal` error for that request while the connection goes on.
`serve_stream` runs one over a stream and closes it cleanly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from latis_core._errors import ConnectionClosed, ErrorCode, LocalProtocolError
from latis_core._io.heartbeat import HEARTBEAT_TIMEOUT, Beat, Heartbeats
from latis_core._io.link import SPIN, Link, open_link
from latis_core._wire.connection import CLOSED, NEED_DATA, Connection
from latis_core._wire.messages import Error, Message, Role

__all__ = ["HANDSHAKE_MAX_FRAME", "ServerConnection", "serve_stream"]

log = logging.getLogger("latis.server")

Handler = Callable[[Any, Any], None]

#: The largest frame a peer may send before it has proven itself: room for any hello.
HANDSHAKE_MAX_FRAME = 64 * 1024


class ServerConnection:
    """One connection, served in the unit role."""

    #: Message class -> handler(connection, message). Set by subclasses.
    HANDLERS: Mapping[type, Handler] = {}

    def __init__(self, link: Link, conn: Connection) -> None:
        self.link = link
        self.conn = conn
        self.closed = False
        #: Set by `end`: stop reading; what was sent still leaves.
        self.ending = False
        #: Called once, when the handshake is done (a listener frees a slot).
        self.on_handshake: Callable[[], None] | None = None
        #: The handshake deadline's wait, ended when the handshake is done (its
        #: task then ends, instead of holding memory for `handshake_timeout`).
        self.handshake_wait: trio.CancelScope | None = None

    def send(self, msg: Message) -> None:
        """Write `msg` now (after whatever is queued)."""
        self._put(msg, self.link.write)

    def send_frames(self, frames: list[bytes]) -> None:
        """Write frames made by `frame` or `frame_chunk` now, in one write."""
        if frames:
            self._write(b"".join(frames), self.link.write)

    def cork(self, msg: Message) -> None:
        """Queue `msg`; it leaves with the next batch."""
        self._put(msg, self.link.cork)

    def end(self) -> None:
        """End the connection after the messages already sent (a refused peer)."""
        self.ending = True

    def _put(self, msg: Message, put: Callable[[bytes], object]) -> None:
        frame = self.frame(msg)
        if frame is not None:
            self._write(frame, put)

    def frame(self, msg: Message) -> bytes | None:
        """`msg` encoded, or None when it cannot go (closed, or refused by the
        connection: logged)."""
        if self.closed:
            return None
        try:
            return self.conn.send(msg)
        except LocalProtocolError as exc:
            log.error("not sent: %s", exc)
            return None

    def frame_chunk(self, rid: Any, seq: int, text: str) -> bytes | None:
        """`frame(ResponseChunk(rid, seq, text))` without making the message (a
        follower forwards chunks by the thousand)."""
        if self.closed:
            return None
        try:
            return self.conn.send_chunk(rid, seq, text)
        except LocalProtocolError as exc:
            log.error("not sent: %s", exc)
            return None

    def _write(self, data: bytes, put: Callable[[bytes], object]) -> None:
        try:
            put(data)
        except trio.BrokenResourceError:
            self.closed = True

    async def run(self) -> None:
        """Read and answer requests until the stream ends or must close."""
        conn = self.conn
        link = self.link
        read = link.read
        while True:
            try:
                # The next request often follows within microseconds: spin first.
                data = await read(SPIN)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            # Our answers to what was read go out from this task, just below.
            link.hold()
            try:
                go_on = self._handle(data)
            finally:
                if link.unhold():
                    await link.send_held()
            if not go_on:
                return
            if self.handshake_wait is not None and conn.handshake_done:
                self.handshake_wait.cancel()
                self.handshake_wait = None
            if self.on_handshake is not None and conn.handshake_done:
                self.on_handshake()
                self.on_handshake = None

    def _handle(self, data: bytes | bytearray | memoryview) -> bool:
        """Answer every request in `data`; False once the connection must end."""
        conn = self.conn
        handlers = self.HANDLERS
        conn.receive_data(data, trio.current_time())
        while True:
            ev = conn.next_event()
            if ev is NEED_DATA:
                return True
            if ev is CLOSED:
                return False
            try:
                handlers[type(ev)](self, ev)
            except Exception as exc:
                log.exception("failed to handle %s", ev)
                rid = getattr(ev, "id", None)
                if rid in conn.requests_received:
                    self.send(Error(rid, ErrorCode.INTERNAL.value, f"{type(exc).__name__}: {exc}"))
            if conn.closed or self.ending:
                return False

    def detach(self) -> None:
        """Called once the connection has ended; subclasses let go of it here."""
        self.closed = True


async def serve_stream(
    stream: trio.abc.Stream,
    make: Callable[[Link, Connection, trio.Nursery], ServerConnection],
    *,
    max_frame: int,
    started: Callable[[ServerConnection], Awaitable[None]] | None = None,
    strict: bool = False,
    handshake_timeout: float | None = None,
    keepalive: float | None = None,
    keepalive_timeout: float = HEARTBEAT_TIMEOUT,
    heartbeats: Heartbeats | None = None,
    label: str = "a peer",
) -> None:
    """Serve one connection over `stream` until it ends, then close `stream`.

    `make(link, conn, nursery)` builds the connection object; tasks it starts
    in `nursery` end with the connection.

    With `strict` (a side that asks for proof of identity), nothing but the
    handshake is accepted before it is done, frames are limited to
    `HANDSHAKE_MAX_FRAME` until then, and any refusal closes the connection.
    A connection whose handshake is not done within `handshake_timeout`
    seconds is closed. With `keepalive`, a `ping` follows that many seconds
    of silence, and the connection is closed when nothing answers it within
    `keepalive_timeout` (`label` names the other side in the log); its clock
    is kept by `heartbeats` when given (one task for many connections), else by
    a clock of its own.
    """
    conn = Connection(
        Role.UNIT,
        max_frame=max_frame,
        keepalive=keepalive,
        keepalive_timeout=keepalive_timeout,
        strict=strict,
        handshake_max_frame=HANDSHAKE_MAX_FRAME if strict else None,
    )
    async with trio.open_nursery() as nursery:
        link = open_link(stream, nursery)
        served = make(link, conn, nursery)
        if handshake_timeout is not None:
            served.handshake_wait = trio.CancelScope()
            nursery.start_soon(_handshake_deadline, served, handshake_timeout, nursery)
        beat: Beat | None = None
        if keepalive is not None:
            beat = (heartbeats or Heartbeats(nursery)).add(
                conn, functools.partial(_ping, served),
                functools.partial(_silent, served, label, nursery))
        if started is not None:
            await started(served)
        try:
            await served.run()
        finally:
            Heartbeats.remove(beat)
            served.detach()
            with trio.CancelScope(shield=True) as scope:
                # Let a last error (say, frame_too_large) reach the controller.
                scope.deadline = trio.current_time() + 5
                await link.flush()
                nursery.cancel_scope.cancel()
                await link.aclose()


def _ping(served: ServerConnection, frame: bytes) -> None:
    if frame and not served.closed:
        try:
            served.link.write(frame)
        except trio.BrokenResourceError:
            served.closed = True


def _silent(
    served: ServerConnection, label: str, nursery: trio.Nursery, exc: ConnectionClosed
) -> None:
    log.warning("%s went silent: %s; closed the connection", label, exc)
    served.end()
    nursery.cancel_scope.cancel()


async def _handshake_deadline(
    served: ServerConnection, seconds: float, nursery: trio.Nursery
) -> None:
    if served.handshake_wait is not None:
        with served.handshake_wait:
            await trio.sleep(seconds)
    if not served.conn.handshake_done:
        log.warning("closed a connection that did not finish hello within %g s", seconds)
        served.end()
        nursery.cancel_scope.cancel()
