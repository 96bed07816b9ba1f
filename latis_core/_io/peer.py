"""The peer: one multiplexed connection, from the side that sends requests.

Any number of requests are in flight on one connection. Each has a waiter
holding its replies in a bounded queue. Reading follows a leader/follower
scheme when the link allows it (`Link.can_lead`): a task that waits for a
reply reads the stream itself, and hands every frame that is not its own to
the waiter it belongs to, waking it directly. It leads only while it is the
one task of its trio run that waits for a reply: with many waiting at once
(a controller running 100 prompts), each connection's idle reader reads, as
handing the stream to a leader and back costs more than the hop it saves.
When nobody leads, an idle reader task owns the stream, for replies, for
pings from the other side and for the end of the stream. On other links the
idle reader does all the reading.

Backpressure: when a waiter's queue is over `queue_limit`, reading stops
until its consumer catches up. The other side then blocks on its writes.

Writes never block and never cut a frame (see `_link`); a streamed request
that is left early, or whose scope is cancelled, sends `prompt.cancel`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Self

import attrs
import trio
from trio.lowlevel import (
    Abort,
    Task,
    checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from latis_core._errors import (
    FATAL_CODES,
    AuthRefused,
    ConnectError,
    ConnectionClosed,
    ErrorCode,
    LatisError,
    RemoteProtocolError,
    RequestError,
)
from latis_core._io.heartbeat import Beat, Heartbeats
from latis_core._io.link import HIGH_WATER, SPIN, Interrupted, Link, gathered, open_link
from latis_core._io.server import HANDSHAKE_MAX_FRAME
from latis_core._util import unwrap_group
from latis_core._wire.auth import METHOD, is_challenge, new_challenge, prove, verify
from latis_core._wire.codec import chunk_of
from latis_core._wire.connection import CLOSED, NEED_DATA, Connection, Violation
from latis_core._wire.frames import DEFAULT_MAX_FRAME
from latis_core._wire.messages import (
    Error,
    Hello,
    Message,
    Ping,
    Pong,
    PromptCancel,
    RequestId,
    ResponseChunk,
    Role,
)

__all__ = ["Peer", "ReplyStream", "open_peer"]

log = logging.getLogger("latis.peer")
# A library's logs go where its user's logging sends them, and nowhere when it is
# not configured (Python's last-resort handler would print warnings, and the
# failures raised anyway, to stderr: twice in a notebook). Every connection
# imports this module, so every "latis.*" logger of a script has the handler.
logging.getLogger("latis").addHandler(logging.NullHandler())
#: A refused hello with one of these codes is a failed proof of identity.
_AUTH_CODES = (ErrorCode.UNAUTHORIZED, ErrorCode.AUTH_REQUIRED)

#: Per trio run, how many tasks wait for a reply now, on any connection (a
#: one-item list). One alone leads its connection's reads: its reply skips
#: the hop through the reader task. With others waiting too, it parks and the
#: reader wakes it: cancelling and re-arming each connection's reader costs
#: more than the hops save (100 agents at once in the library's controller:
#: ~25% of the round).
_WAITING: trio.lowlevel.RunVar[list[int]] = trio.lowlevel.RunVar("latis_waiting")


def _waiting() -> list[int]:
    try:
        return _WAITING.get()
    except LookupError:
        count = [0]
        _WAITING.set(count)
        return count

#: Replies queued for one request before reading pauses.
QUEUE_LIMIT = 4096
#: Seconds a cancelled stream waits for the other side to end it.
CANCEL_TIMEOUT = 5.0


class _Waiter:
    """One request in flight: its queued replies and the task waiting for them."""

    __slots__ = ("discard", "events", "final", "id", "over", "reading", "sink", "task")

    def __init__(self, rid: RequestId) -> None:
        self.id = rid
        self.events: deque[Any] = deque()
        #: The task parked until an event arrives, if any.
        self.task: Task | None = None
        #: Takes replies in the reading task while `task` waits (`ReplyStream.on_ready`).
        self.sink: Callable[[], object] | None = None
        #: Whether this waiter's task leads and waits in read().
        self.reading = False
        self.final = False
        self.discard = False
        self.over = False


async def _cancelled() -> bool:
    """Whether the calling task is cancelled, without a deadline walk (which recurses
    through every enclosing scope: a thousand connections nested in one exit stack
    are that deep). Cancellation is level-triggered: the caller's next checkpoint
    outside our shield raises it again."""
    try:
        await checkpoint_if_cancelled()
    except trio.Cancelled:
        return True
    return False


class Peer:
    """One connection to a unit (or any side that answers requests).

    Made by `open_peer`; the library's `UnitClient` wraps one. All methods
    must be called from the trio thread that opened it.
    """

    def __init__(
        self,
        conn: Connection,
        link: Link,
        *,
        queue_limit: int = QUEUE_LIMIT,
        cancel_timeout: float = CANCEL_TIMEOUT,
        label: str = "unit",
    ) -> None:
        self.conn = conn
        self.link = link
        self.queue_limit = queue_limit
        self.cancel_timeout = cancel_timeout
        #: Names the other side in error messages.
        self.label = label
        #: The fatal error the other side sent before it closed, if it did.
        self.closed_because: str | None = None
        self._waiters: dict[RequestId, _Waiter] = {}
        self._parked: dict[_Waiter, None] = {}
        self._leader: _Waiter | None = None
        self._reader_task: Task | None = None
        self._reader_scope: trio.CancelScope | None = None
        self._over = 0
        self._error: LatisError | None = None
        self._thread = threading.get_ident()
        self._token = trio.lowlevel.current_trio_token()
        self._closing = False
        self._closed = trio.Event()
        # One scope per task of ours: aclose() ends them, not the caller's block.
        self._scopes: list[trio.CancelScope] = []

    # ---- public ----------------------------------------------------------------

    @property
    def remote(self) -> Hello:
        """The other side's `hello`."""
        hello = self.conn.their_hello
        if hello is None:
            raise RuntimeError("the handshake has not finished")
        return hello

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._error is not None

    @property
    def why_closed(self) -> str | None:
        """Why the connection ended (None while it lives)."""
        return None if self._error is None else str(self._error)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended."""
        await self._closed.wait()

    def next_id(self) -> int:
        """Return a fresh request id."""
        return self.conn.next_id()

    async def request(self, msg: Message) -> Message:
        """Send request `msg` and return its final reply.

        Raises:
            RequestError: the other side answered with `error`.
            ConnectionClosed: the connection ended first.
            LocalProtocolError: `msg` may not be sent now (a bug).
        """
        if self.link.buffered > HIGH_WATER:
            await self.link.wait_drained()
        w = self._start(msg)
        try:
            ev = await self._next_event(w)
        except BaseException:
            self._abandon(w, cancel=False)
            raise
        if type(ev) is Error:
            raise RequestError(ev.code, ev.message, ev.id, ev.auth)
        return ev  # type: ignore[no-any-return]

    def stream(self, msg: Message) -> ReplyStream:
        """Send streamed request `msg`; return the iterator of its replies."""
        return ReplyStream(self, self._start(msg))

    def send_nowait(self, msg: Message) -> None:
        """Send a message that gets no reply (`prompt.cancel`, `input.reply`)."""
        self._raise_if_closed()
        self._write(self.conn.send(msg))

    async def aclose(self) -> None:
        """Close the connection: what is queued is sent (within `cancel_timeout`),
        requests in flight fail with `ConnectionClosed`, the stream is closed and
        every task of the connection ends. Idempotent."""
        if self._closing:
            await trio.lowlevel.checkpoint()
            return
        self._closing = True
        # A closing handshake (websocket, QUIC) waits for the other side. Not
        # when the connection already failed (broken, or silent past the
        # heartbeat: nobody answers), nor when our caller is cancelled (a
        # controller leaving: so are the transport's tasks that would read the
        # answer). Waiting would take the whole timeout for nothing (and hold
        # up a redial): the stream is closed forcefully then.
        forceful = self._error is not None or await _cancelled()
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self.cancel_timeout
            await self.link.flush()
            self._fail(ConnectionClosed("the connection was closed"))
            for task_scope in self._scopes:
                task_scope.cancel()
            if forceful:
                with trio.CancelScope() as forcefully:  # trio.aclose_forcefully, for a Link
                    forcefully.cancel()
                    await self.link.aclose()
            else:
                await self.link.aclose()

    async def ping(self) -> float:
        """Send `ping`; return the round trip in seconds."""
        start = time.perf_counter()
        await self.request(Ping(self.conn.next_id()))
        return time.perf_counter() - start

    # ---- requests --------------------------------------------------------------

    def _raise_if_closed(self) -> None:
        if self._error is not None:
            raise ConnectionClosed(str(self._error)) from self._error

    def _start(self, msg: Any) -> _Waiter:
        self._raise_if_closed()
        frame = self.conn.send(msg)
        w = _Waiter(msg.id)
        self._waiters[msg.id] = w
        self._write(frame)
        return w

    def _expect(self, rid: RequestId) -> _Waiter:
        # For a reply stream that a request opens under another id (resume).
        w = _Waiter(rid)
        self._waiters[rid] = w
        return w

    async def _next_event(self, w: _Waiter) -> Any:
        """Return w's next reply, waiting (and reading, when it may) as needed."""
        events = w.events
        if not events:
            waiting = _waiting()
            waiting[0] += 1
            try:
                while not events:
                    if self._error is not None:
                        raise ConnectionClosed(
                            f"{self._error} (request {w.id!r} was in flight)"
                        ) from self._error
                    if self._leader is None and self.link.can_lead and not self._over:
                        if waiting[0] == 1:
                            await self._lead(w)
                            continue
                        # Not leading (others wait too): the reader reads, not
                        # left parked for a leader that will not come.
                        self._wake_reader()
                    await self._park(w)
            finally:
                waiting[0] -= 1
        return self._pop(w)

    def _pop(self, w: _Waiter) -> Any:
        """w's next reply, which is here (a failure of the request is raised)."""
        events = w.events
        ev = events.popleft()
        if w.over and len(events) <= self.queue_limit // 2:
            w.over = False
            self._unpause()
        if type(ev) is dict:  # a plain chunk, queued as its object (`_feed`)
            return chunk_of(ev)
        if isinstance(ev, BaseException):
            raise ev
        return ev

    def _abandon(self, w: _Waiter, *, cancel: bool) -> None:
        """Stop caring for w's replies; with `cancel`, ask the other side to stop."""
        if w.over:
            w.over = False
            self._unpause()
        w.events.clear()
        if w.final:
            return
        w.discard = True
        if cancel and self._error is None and self.conn.in_flight(w.id):
            self._write(self.conn.send(PromptCancel(w.id)))

    # ---- waiting and reading -------------------------------------------------------

    async def _park(self, w: _Waiter) -> None:
        w.task = current_task()
        self._parked[w] = None

        def abort(_: Any) -> Abort:
            w.task = None
            self._parked.pop(w, None)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def _wake(self, w: _Waiter) -> None:
        task = w.task
        if task is not None:
            w.task = None
            del self._parked[w]
            reschedule(task)
        elif w.reading:
            # w leads and waits in read() (the idle reader got w's event first,
            # in the moment w took over): stop its read.
            w.reading = False
            self.link.interrupt()

    async def _lead(self, w: _Waiter) -> None:
        self._leader = w
        if self._reader_task is None:
            # The idle reader may be in a read: stopping it unregisters it from
            # the fd at once (it goes back to waiting for the lead).
            self.link.interrupt()
        read = self.link.read
        try:
            while not w.events and self._error is None and not self._over:
                w.reading = True
                try:
                    data = await read(SPIN)
                except Interrupted:
                    continue
                finally:
                    w.reading = False
                self._feed(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(ConnectionClosed(f"connection to {self.label} broke: {exc}"), exc)
        finally:
            self._leader = None
            self._pass_lead()

    def _pass_lead(self) -> None:
        if self._error is not None:
            for w in list(self._parked):
                self._wake(w)
        elif self._over:
            return
        elif self._parked:
            self._wake(next(iter(self._parked)))
            return
        self._wake_reader()

    def _wake_reader(self) -> None:
        task = self._reader_task
        if task is not None:
            self._reader_task = None
            reschedule(task)

    def _unpause(self) -> None:
        self._over -= 1
        if not self._over and self._leader is None:
            self._pass_lead()

    async def _idle_reader(self) -> None:
        read = self.link.read
        # One scope for the reader's life, cancelled by `_fail`; a leader that takes
        # over stops a read with the link's `interrupt` (a scope per read cost more
        # than the rest of a read with a few replies in it: 100 agents at once).
        with trio.CancelScope() as scope:
            self._reader_scope = scope
            try:
                while self._error is None:
                    if self._leader is not None or self._over:
                        self._reader_task = current_task()

                        def abort(_: Any) -> Abort:
                            self._reader_task = None
                            return Abort.SUCCEEDED

                        await wait_task_rescheduled(abort)
                        continue
                    try:
                        data = await read()
                    except Interrupted:
                        continue  # a leader took over the reading
                    self._feed(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # What is queued cannot go out either: without this, `aclose` would
                # wait `cancel_timeout` for a flush that never ends (a TLS handshake
                # that failed in this read leaves trio's writer waiting for it),
                # holding the listener's handshake slot all that while.
                self.link._fail(exc)
                self._fail(ConnectionClosed(f"connection to {self.label} broke: {exc}"), exc)
            finally:
                self._reader_scope = None

    def _feed(self, data: bytes | bytearray | memoryview) -> None:
        conn = self.conn
        waiters = self._waiters
        conn.receive_data(data, trio.current_time())
        # Waiters with a sink, told once the whole read is decoded: a batch a call.
        sinks: dict[_Waiter, None] = {}
        while True:
            # (Plain chunks as their objects: made messages when taken, so a
            # read's thousand chunks in a queue are no work for the GC.)
            events = conn.next_events(lazy=True)
            ev: Any = events.pop()  # the chunks come first, then one event of another kind
            if events:
                self._queue_chunks(events, sinks)
            if ev is NEED_DATA:
                if sinks:
                    self._run_sinks(sinks)
                return
            if ev is CLOSED:
                self._fail(ConnectionClosed(f"{self.label} closed the connection"))
                return
            cls = type(ev)
            if cls is Violation:
                self._on_violation(ev)
                if self._error is not None:
                    return
                continue
            if cls is Ping:
                self._write(conn.send(Pong(ev.id)))
                continue
            rid = ev.id
            w = waiters.get(rid)
            if w is None:
                if cls is Error:
                    log.warning("error from %s: %s: %s", self.label, ev.code, ev.message)
                    if ev.code in FATAL_CODES:
                        # The other side closes after it: say why to whoever waits.
                        self.closed_because = f"{ev.code}: {ev.message}"
                        self._fail(
                            ConnectionClosed(
                                f"{self.label} closed the connection ({self.closed_because})"
                            )
                        )
                        return
                continue  # a keep-alive pong, or a reply we stopped caring for
            if cls is not ResponseChunk and not conn.in_flight(rid):
                w.final = True
                del waiters[rid]
            if not w.discard:
                w.events.append(ev)
                self._queued(w, sinks)

    def _queue_chunks(self, chunks: list[Any], sinks: dict[_Waiter, None]) -> None:
        """Queue a read's chunks (plain ones as their objects) to their waiters
        (a run of one prompt's chunks looks its waiter up once), then tell each
        waiter once. (A chunk is never a request's final reply: no in-flight
        lookup.)"""
        waiters = self._waiters
        told: dict[_Waiter, None] = {}
        rid: Any = None
        w: _Waiter | None = None
        for chunk in chunks:
            cid = chunk["id"] if type(chunk) is dict else chunk.id
            if cid != rid or w is None:
                rid = cid
                w = waiters.get(rid)
                if w is None or w.discard:
                    w = None
                    continue
                told[w] = None
            w.events.append(chunk)
        for w in told:
            self._queued(w, sinks)

    def _queued(self, w: _Waiter, sinks: dict[_Waiter, None]) -> None:
        """w has replies queued: pause reading when it is over its limit; wake
        its task, or mark its sink to run once the read is decoded."""
        if not w.over and len(w.events) > self.queue_limit:
            w.over = True
            self._over += 1
        if w.sink is not None:
            sinks[w] = None
        elif w.task is not None or w.reading:  # (else nobody to wake: no call)
            self._wake(w)

    def _run_sinks(self, sinks: dict[_Waiter, None]) -> None:
        # What the takers write (a daemon's followers) leaves together, a write
        # per connection for this whole read.
        with gathered():
            self._take_all(sinks)

    def _take_all(self, sinks: dict[_Waiter, None]) -> None:
        for w in sinks:
            sink = w.sink
            # Only while its task waits for replies (parked, or leading this very
            # read): a task busy with an earlier reply takes the next ones itself,
            # in order. The final reply is always its task's.
            if sink is not None and not w.final and (w.task is not None or self._leader is w):
                try:
                    sink()
                except Exception:  # (a bug: logged; its task takes the replies)
                    log.exception("request %r: taking replies failed", w.id)
                    w.sink = None
            if w.events:
                self._wake(w)

    def _on_violation(self, v: Violation) -> None:
        log.warning("%s broke the protocol: %s: %s", self.label, v.code, v.message)
        if v.reply is not None:
            self._write(self.conn.send(v.reply))
        exc = RemoteProtocolError(v.message, v.code, v.id)
        w = self._waiters.get(v.id) if v.id is not None else None
        if w is not None and not w.discard:
            # The reply was unreadable: that request fails, the others go on.
            w.events.append(exc)
            self._wake(w)
            w.discard = True
            if self.conn.in_flight(w.id):
                self._cancel_if_streamed(w)
        if v.fatal:
            self._fail(exc)

    def _cancel_if_streamed(self, w: _Waiter) -> None:
        try:
            self._write(self.conn.send(PromptCancel(w.id)))
        except LatisError:
            pass  # not a streamed request: its one reply will be dropped

    def _write(self, frame: bytes) -> None:
        try:
            self.link.write(frame)
        except trio.BrokenResourceError as exc:
            self.conn.send_failed()
            self._fail(ConnectionClosed(f"connection to {self.label} broke: {exc}"), exc)

    def _fail(self, exc: LatisError, cause: BaseException | None = None) -> None:
        if self._error is not None:
            return
        if cause is not None:
            exc.__cause__ = cause
        self._error = exc
        self._closed.set()
        for w in list(self._waiters.values()):
            self._wake(w)
        for w in list(self._parked):
            self._wake(w)
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        self._wake_reader()

    # ---- closing ---------------------------------------------------------------

    def _spawn(self, nursery: trio.Nursery, fn: Callable[[], Awaitable[None]]) -> None:
        scope = trio.CancelScope()
        self._scopes.append(scope)

        async def run() -> None:
            with scope:
                await fn()

        nursery.start_soon(run)

    def _silent(self, exc: ConnectionClosed) -> None:
        log.warning("%s went silent: %s; dropping the connection", self.label, exc)
        self._fail(ConnectionClosed(f"{self.label} went silent: {exc}"))

    def _abandon_from_gc(self, w: _Waiter) -> None:
        if threading.get_ident() == self._thread:
            self._abandon(w, cancel=True)
        else:
            try:
                self._token.run_sync_soon(self._abandon_quietly, w)
            except trio.RunFinishedError:
                pass

    def _abandon_quietly(self, w: _Waiter) -> None:
        try:
            self._abandon(w, cancel=True)
        except LatisError:
            pass


#: `ReplyStream._next_here`: no reply to take at once.
NOT_HERE: Final = object()


class ReplyStream:
    """The replies to one streamed request, as an async iterator.

    Iteration ends at the request's final reply: normally for
    `response.complete` or `response.cancelled` (see `final`), with
    `RequestError` for `error`. Leaving early (`aclose`, the end of an
    `async with`, or dropping the iterator) or cancelling the task while it
    waits sends `prompt.cancel`; `aclose` and cancellation then wait up to
    `Peer.cancel_timeout` for the request's end.
    """

    __slots__ = ("__weakref__", "_count", "_keep", "_peer", "_w", "final")

    def __init__(self, peer: Peer, w: _Waiter) -> None:
        self._peer = peer
        self._w = w
        self._count = 0
        self._keep = False
        #: The final reply, once iteration has ended.
        self.final: Message | None = None

    @property
    def id(self) -> RequestId:
        """The request id."""
        return self._w.id

    @property
    def done(self) -> bool:
        """Whether the final reply has been taken (or the stream abandoned)."""
        return self.final is not None or self._w.discard

    @property
    def ready(self) -> int:
        """How many replies have arrived and wait to be taken (taking them needs no wait)."""
        return len(self._w.events)

    @property
    def ending(self) -> bool:
        """Whether the final reply is here and is all that is left: the next
        `__anext__` ends the iteration without waiting."""
        w = self._w
        return bool(w.final) and len(w.events) == 1 and self.final is None

    def take_ready(self, cls: type, limit: int) -> list[Any]:
        """Up to `limit` replies of class `cls` that are here, in order, without
        waiting: those before the first of another class, never the final one.

        For a consumer that takes a batch at a time (the controller's pump):
        one call, not an `__anext__` a reply.
        """
        w = self._w
        events = w.events
        if w.discard or self.final is not None:
            return []
        keep = 1 if w.final else 0  # the final reply is left to `__anext__`
        out: list[Any] = []
        # (A plain chunk waits as its object: a dict.)
        queued = (dict, cls) if cls is ResponseChunk else (cls,)
        while len(events) > keep and len(out) < limit and type(events[0]) in queued:
            ev = events.popleft()
            out.append(chunk_of(ev) if type(ev) is dict else ev)
        if out and w.over and len(events) <= self._peer.queue_limit // 2:
            w.over = False
            self._peer._unpause()
        return out

    def _next_here(self) -> Any:
        """The next reply if it is here, is not the final one, and may be taken
        at a cancel point alone (not every 64th: a schedule point is due then);
        else `NOT_HERE`. The caller then awaits `checkpoint_if_cancelled` (and
        `_cancel_and_wait` on `Cancelled`), without the awaits of `__anext__`:
        per chunk, they cost more than the rest."""
        w = self._w
        count = self._count + 1
        if count & 63 and len(w.events) > w.final and self.final is None:
            self._count = count
            return self._peer._pop(w)
        return NOT_HERE

    def on_ready(self, sink: Callable[[], object] | None) -> None:
        """Have `sink` take replies as they arrive, in the task that reads them,
        while the consumer's task waits in `__anext__` (None: stop).

        It runs once per read that brought replies, must not block, and takes
        what it can with `take_ready`; whatever it leaves (a reply of another
        kind, the final one) wakes the waiting task as usual. A consumer that
        handles most replies synchronously so skips a task switch per batch
        (the controller's prompt pump: the daemon's chunks cross one task, not
        two).
        """
        self._w.sink = sink

    def cancel_nowait(self) -> None:
        """Send `prompt.cancel` for this request now, without waiting for its end.

        The request then ends as usual (`response.cancelled`, or its own end if
        that crossed the cancel on the wire). Does nothing once it has ended.
        """
        w = self._w
        peer = self._peer
        if self.final is None and not w.final and peer._error is None and peer.conn.in_flight(w.id):
            peer._write(peer.conn.send(PromptCancel(w.id)))

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Any:
        w = self._w
        if self.final is not None or (w.discard and not w.events):
            raise StopAsyncIteration
        try:
            if w.events:
                # A batch is here already: stay a cancel point, and let others
                # run once every 64 replies (a full checkpoint per reply would
                # cost more than everything else per chunk).
                self._count += 1
                if self._count & 63:
                    await checkpoint_if_cancelled()
                else:
                    await checkpoint()
            ev = await self._peer._next_event(w)
        except trio.Cancelled:
            await self._cancel_and_wait()
            raise
        if w.final and not w.events:
            self.final = ev
            if type(ev) is Error:
                raise RequestError(ev.code, ev.message, ev.id, ev.auth)
            raise StopAsyncIteration
        return ev

    def detach(self) -> None:
        """From now on, leaving or cancelling stops following, not the request.

        For a controller that owns the request and may stop (or restart)
        while the request should run on: it re-attaches later.
        """
        self._keep = True

    async def aclose(self) -> None:
        """Stop the request (unless it has ended) and wait for its end.

        After `detach`, only stop following it.
        """
        await self._cancel_and_wait()
        await checkpoint()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _cancel_and_wait(self) -> None:
        w = self._w
        if self.final is not None or w.discard:
            return
        peer = self._peer
        if self._keep:
            peer._abandon(w, cancel=False)
            return
        self.cancel_nowait()
        # Wait (bounded) for the final reply, so the other side has really
        # stopped; replies before it are dropped.
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + peer.cancel_timeout
            try:
                while not (w.final and not w.events):
                    ev = await peer._next_event(w)
                    if w.final and not w.events and type(ev) is not Error:
                        self.final = ev
            except LatisError:
                pass
        peer._abandon(w, cancel=False)

    def __del__(self) -> None:
        try:
            w = self._w
        except AttributeError:
            return
        if self.final is None and not w.final and not w.discard and not self._keep:
            self._peer._abandon_from_gc(w)


@asynccontextmanager
async def open_peer(
    stream: trio.abc.Stream,
    *,
    hello: Hello | None = None,
    max_frame: int = DEFAULT_MAX_FRAME,
    handshake_timeout: float = 10.0,
    keepalive: float | None = None,
    keepalive_timeout: float = 10.0,
    queue_limit: int = QUEUE_LIMIT,
    cancel_timeout: float = CANCEL_TIMEOUT,
    label: str = "unit",
    token: bytes | None = None,
    strict: bool = False,
    heartbeats: Heartbeats | None = None,
) -> AsyncIterator[Peer]:
    """Run the cmdr side of a connection over `stream`, handshake first.

    Args:
        stream: the byte stream to the unit; closed on exit.
        hello: our `hello` (its id, protocol and role are fixed).
        max_frame: the largest payload we accept.
        handshake_timeout: seconds to wait for the unit's `hello`.
        keepalive: seconds of silence before a `ping`; None for none.
        keepalive_timeout: seconds to wait for an answer to it.
        queue_limit: replies queued per request before reading pauses.
        cancel_timeout: seconds a cancelled stream waits for its end.
        label: names the other side in error messages.
        token: the unit's token, proven when the unit asks (`auth_required`);
            the unit must then prove it back. A unit that does not ask is
            refused: it is not the unit the token belongs to.
        strict: refuse anything but the handshake until it is done, with
            frames limited to `HANDSHAKE_MAX_FRAME` (a listener's rule for a
            unit that dialed in and has not proven itself yet).
        heartbeats: the clock that keeps the keep-alive (one task for many
            connections: a listener's); None: a clock of this connection's own.

    Raises:
        ConnectError: the handshake failed (with the unit's reason).
    """
    hello = hello or Hello()
    hello = Hello(
        0,
        hello.protocol,
        Role.CMDR.value,
        hello.unit,
        hello.name,
        hello.agent,
        hello.capabilities,
        max_frame,
        hello.auth,
    )
    conn = Connection(
        Role.CMDR,
        max_frame=max_frame,
        keepalive=keepalive,
        keepalive_timeout=keepalive_timeout,
        strict=strict,
        handshake_max_frame=HANDSHAKE_MAX_FRAME if strict else None,
    )
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            link = open_link(stream, nursery)
            peer = Peer(
                conn, link, queue_limit=queue_limit, cancel_timeout=cancel_timeout, label=label
            )
            peer._spawn(nursery, peer._idle_reader)
            beat: Beat | None = None
            try:
                await _handshake(peer, hello, handshake_timeout, token)
                if keepalive is not None:
                    beat = (heartbeats or Heartbeats(nursery)).add(
                        conn, peer._write, peer._silent)
                yield peer
            finally:
                Heartbeats.remove(beat)
                await peer.aclose()
                nursery.cancel_scope.cancel()


async def _handshake(peer: Peer, hello: Hello, limit: float, token: bytes | None) -> None:
    with trio.move_on_after(limit) as scope:
        try:
            try:
                reply = await peer.request(hello)
                if token is not None:
                    raise AuthRefused(
                        f"{peer.label} did not ask for its token: it is not the unit the "
                        f"token belongs to, or it runs without --token-file"
                    )
            except RequestError as exc:
                if exc.code != ErrorCode.AUTH_REQUIRED:
                    raise
                reply = await _prove(peer, hello, token, exc)
        except RequestError as exc:
            refused = AuthRefused if exc.code in _AUTH_CODES else ConnectError
            raise refused(f"{peer.label} refused the handshake: {exc}") from exc
        except ConnectionClosed as exc:
            why = f" ({peer.closed_because})" if peer.closed_because else ""
            # (An `unauthorized` before the close: our proof was refused.)
            code = (peer.closed_because or "").partition(":")[0]
            refused = AuthRefused if code in _AUTH_CODES else ConnectError
            raise refused(
                f"{peer.label} closed the connection during the handshake{why}"
            ) from exc
        except RemoteProtocolError as exc:
            raise ConnectError(f"{peer.label} broke the handshake: {exc.code}: {exc}") from exc
    if scope.cancelled_caught:
        raise ConnectError(f"no hello from {peer.label} within {limit:g} s")
    if peer.conn.their_hello is None:
        raise ConnectError(f"{peer.label} answered hello with {reply.TYPE}")


async def _prove(peer: Peer, hello: Hello, token: bytes | None, asked: RequestError) -> Message:
    """Answer a unit's `auth_required` with a new hello; check the unit's proof back."""
    challenge = (asked.auth or {}).get("challenge")
    if token is None:
        raise AuthRefused(
            f"{peer.label} asks for proof of its token: give the token file "
            f"(token_file in the unit's dial table, --token-file to latis connect, "
            f"token= to latis_core.connect)"
        )
    if not isinstance(challenge, str) or not is_challenge(challenge):
        raise ConnectError(f"{peer.label} asked for proof with a malformed challenge")
    ours = new_challenge()
    proof = prove(token, Role.CMDR.value, challenge)
    reply = await peer.request(
        attrs.evolve(hello, auth={"method": METHOD, "proof": proof, "challenge": ours})
    )
    theirs = (peer.remote.auth or {}).get("proof")
    if not verify(token, Role.UNIT.value, ours, "", theirs):
        raise AuthRefused(
            f"{peer.label} did not prove it knows the token: it is not the unit it claims to be"
        )
    return reply
