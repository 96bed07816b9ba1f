"""Links: the byte layer under a connection, on trio.

A link does two things for the peer and the unit server:

- `write` and `cork` never block and never cut a frame. Bytes are queued in
  order; a short-lived flush task drains the queue. `write` first tries to
  write at once (a request or a reply goes out with no task hop); `cork`
  leaves the bytes for the flush task, so a burst of chunks goes out in a few
  large writes. `wait_drained` is the backpressure.
- Inside `gathered()`, writes to an fd link are queued and leave together when
  it ends, one write per link: a read that carries chunks of many prompts,
  published to followers on one connection, is one write to that connection,
  not one per prompt.
- `read` waits for bytes and returns what is there.

`FdLink` works on the raw file descriptors of pipes and sockets, so reads are
cancel-safe: a task that is waiting for a reply may read for itself
(`can_lead`), which saves the hop through a reader task that costs more than
the whole codec. `StreamLink` works on any `trio.abc.Stream` (TLS, SSH,
websockets, QUIC, memory streams); it does the same where the stream says it
can (`send_nowait`, `cancel_safe_receive`), else one reader task reads, and
the unit's reader sends its own answers (`hold`, `unhold`, `send_held`)
rather than waking the flush task.
"""

from __future__ import annotations

import errno
import os
import threading

import trio
from trio.lowlevel import (
    Abort,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

__all__ = [
    "SPIN", "FdLink", "Interrupted", "Link", "StreamLink", "gathered", "open_link", "raw_fds",
]

#: Scheduler passes a reader waiting for an answer spends looking for it before
#: sleeping in epoll (measured: 4 passes take a round trip from 2.9x to 1.9x
#: the pipe floor on a 2-core machine; the cost is ~10 µs of CPU per wait).
#: With one CPU the other process cannot answer while we spin: no spinning.
SPIN = 4 if len(os.sched_getaffinity(0)) > 1 else 0
#: A link whose spins found nothing this many times in a row stops spinning
#: (the other side is far, or shares our core), ...
SPIN_MISSES = 2
#: ... and tries again once every this many reads, in case that changed.
SPIN_PROBE = 32
#: Bytes read in one call on an fd link, into one buffer per thread.
READ_SIZE = 1024 * 1024
#: A queue of unsent bytes above this makes `wait_drained` wait ...
HIGH_WATER = 256 * 1024
#: ... until it is below this.
LOW_WATER = 64 * 1024

_local = threading.local()


class Interrupted(Exception):
    """`read` was stopped by `interrupt`; no bytes were taken."""


def _scratch() -> tuple[bytearray, memoryview]:
    # Every fd link of a thread reads into one buffer: reading and feeding the
    # decoder happen with no await between, and the decoder copies what it keeps.
    try:
        return _local.scratch  # type: ignore[no-any-return]
    except AttributeError:
        buf = bytearray(READ_SIZE)
        _local.scratch = (buf, memoryview(buf))
        return _local.scratch  # type: ignore[no-any-return]


class gathered:  # noqa: N801 (used as a function: `with gathered():`)
    """Writes to fd links inside leave when the outermost `gathered` ends: one
    write per link for all of them (what does not fit goes to its flush task).

    For a task that, without awaiting, writes to many links or many times to
    one: the peer's reader handing one read's replies to their takers. Per
    thread (each trio run has its own). A link that fails in that write
    fails as if the write had: its next write or read says so.
    """

    __slots__ = ("_outer",)

    def __enter__(self) -> None:
        self._outer = getattr(_local, "gather", None)
        if self._outer is None:
            _local.gather = []

    def __exit__(self, *exc_info: object) -> None:
        if self._outer is not None:
            return
        links: list[FdLink] = _local.gather
        _local.gather = None
        for link in links:
            link._send_gathered()


def raw_fds(stream: trio.abc.Stream) -> tuple[int, int] | None:
    """Return (read fd, write fd) under `stream`, or None if it has none of its own."""
    if isinstance(stream, trio.SocketStream):
        fd = stream.socket.fileno()
        return fd, fd
    # A StapledStream, or anything shaped like one (a process's stdin and stdout).
    send_stream = getattr(stream, "send_stream", None)
    receive_stream = getattr(stream, "receive_stream", None)
    if send_stream is not None and receive_stream is not None:
        rfd = _fd_of(receive_stream)
        wfd = _fd_of(send_stream)
        if rfd is not None and wfd is not None:
            return rfd, wfd
    return None


def _fd_of(stream: object) -> int | None:
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    fd_stream = getattr(trio.lowlevel, "FdStream", None)
    if fd_stream is not None and isinstance(stream, fd_stream):
        return stream.fileno()  # type: ignore[no-any-return]
    return None


class Link:
    """What the peer and the unit server need from a byte stream."""

    #: Whether `read` is cancel-safe, so that any task may call it.
    can_lead: bool = False

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        self.stream = stream
        self._nursery = nursery
        self._out = bytearray()
        self._flushing = False
        self._drained: trio.Event | None = None
        self.error: BaseException | None = None

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet written."""
        return len(self._out)

    def write(self, data: bytes | memoryview) -> None:
        """Queue `data` after everything queued before; try to send it now.

        Raises:
            trio.BrokenResourceError: the stream has failed.
        """
        self.cork(data)

    def cork(self, data: bytes | memoryview) -> int:
        """Queue `data`; the flush task sends it once the caller yields.

        Returns the bytes now queued (`buffered`).

        Raises:
            trio.BrokenResourceError: the stream has failed.
        """
        if self.error is not None:
            raise trio.BrokenResourceError("the stream has failed") from self.error
        out = self._out
        out += data
        if not self._flushing:
            self._flushing = True
            self._start_flush()
        return len(out)

    def _start_flush(self) -> None:
        self._nursery.start_soon(self._flush)

    def hold(self) -> None:
        """Queue what is written from now on until `unhold`, without waking
        the flush task: for a task that will send it itself, soon."""

    def unhold(self) -> bool:
        """End `hold`; True if something was held: then await `send_held`."""
        return False

    async def send_held(self) -> None:
        """Send what was held, from this task."""
        await trio.lowlevel.checkpoint()

    async def wait_drained(self) -> None:
        """Wait until the queue is under the low-water mark (or the stream fails)."""
        if len(self._out) <= LOW_WATER or self.error is not None:
            await trio.lowlevel.checkpoint()
            return
        if self._drained is None:
            self._drained = trio.Event()
        await self._drained.wait()

    async def flush(self) -> None:
        """Wait until everything queued is written (or the stream fails)."""
        while (self._out or self._flushing) and self.error is None:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()
        await trio.lowlevel.checkpoint()

    def _wake_drained(self, force: bool = False) -> None:
        event = self._drained
        if event is not None and (force or not self._flushing or len(self._out) <= LOW_WATER):
            self._drained = None
            event.set()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._out.clear()
        self._wake_drained(force=True)

    async def _flush(self) -> None:
        raise NotImplementedError

    async def read(self, spin: int = 0) -> bytes | bytearray | memoryview:
        """Wait for bytes and return them; empty at end of stream. A checkpoint.

        Args:
            spin: on fd links, how many scheduler passes to look for bytes
                before sleeping in the kernel. Waking from epoll costs more
                than a few passes when the answer is microseconds away.

        On an fd link the result is a view of a shared buffer: feed it to the
        connection before the next await.

        Raises:
            trio.BrokenResourceError: the stream has failed.
            trio.ClosedResourceError: the stream was closed by us.
        """
        raise NotImplementedError

    def interrupt(self) -> None:
        """Wake the task waiting in `read` with `Interrupted` (fd links only)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the stream at once (queued bytes are dropped: `flush` first)."""
        self._fail(trio.ClosedResourceError("the link was closed"))
        await self.stream.aclose()


class FdLink(Link):
    """A link over raw non-blocking file descriptors (pipes, sockets)."""

    can_lead = True

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery, rfd: int, wfd: int) -> None:
        super().__init__(stream, nursery)
        self._rfd = rfd
        self._wfd = wfd
        self._pollable = True
        self._interrupted = False
        self._waiting: trio.lowlevel.Task | None = None
        #: The task whose read in epoll an interrupt stopped: kept for that read,
        #: whatever reads start after it (`_interrupted` is for the read now).
        self._stopped: trio.lowlevel.Task | None = None
        self._reads = 0
        self._misses = 0
        #: Queued in the current `gathered`, to leave when it ends.
        self._gathered = False
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)

    def write(self, data: bytes | memoryview) -> None:
        if self._gathered:
            self._out += data
            return
        if self._out or self.error is not None:
            self.cork(data)
            return
        gathering: list[FdLink] | None = getattr(_local, "gather", None)
        if gathering is not None:
            self._out += data
            self._gathered = True
            gathering.append(self)
            return
        sent = self._write_now(data)
        if sent < len(data):
            self.cork(memoryview(data)[sent:])

    def _write_now(self, data: bytes | bytearray | memoryview) -> int:
        """Write what the fd takes now; how much (0 when it is full).

        Raises:
            trio.BrokenResourceError: the write failed (the link has failed).
        """
        try:
            return os.write(self._wfd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._fail(exc)
            raise trio.BrokenResourceError(f"write failed: {exc}") from exc

    def _send_gathered(self) -> None:
        """Write what `gathered` queued, now; the rest goes to the flush task."""
        self._gathered = False
        out = self._out
        if self.error is not None or self._flushing or not out:
            return
        try:
            sent = self._write_now(out)
        except trio.BrokenResourceError:
            return  # (failed: its next write or read says so)
        del out[:sent]
        if out:
            self._flushing = True
            self._start_flush()

    async def _flush(self) -> None:
        out = self._out
        wfd = self._wfd
        try:
            while out and self.error is None:
                try:
                    sent = os.write(wfd, out)
                except BlockingIOError:
                    await self._wait_writable(wfd)
                    continue
                except OSError as exc:
                    self._fail(exc)
                    return
                del out[:sent]
                self._wake_drained()
        finally:
            self._flushing = False
            self._wake_drained()

    async def _wait_writable(self, wfd: int) -> None:
        try:
            await trio.lowlevel.wait_writable(wfd)
        except trio.ClosedResourceError:
            # On a socket, an interrupt of the reader wakes us too: then retry.
            # When we closed the stream, error is set and the flush loop ends.
            pass

    def interrupt(self) -> None:
        self._interrupted = True
        waiting = self._waiting
        if waiting is not None:
            self._stopped = waiting
            trio.lowlevel.notify_closing(self._rfd)

    def read_nowait(self) -> bytes | bytearray | memoryview | None:
        """Return the bytes that are there (empty at EOF), or None if there are none."""
        buf, view = _scratch()
        try:
            size = os.readv(self._rfd, (buf,))
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError(f"read failed: {exc}") from exc
        return view[:size]

    async def read(self, spin: int = 0) -> bytes | bytearray | memoryview:
        # An interrupt is for a read in progress: one left from a read that
        # returned before it came is stale. (No task runs between a leader
        # saying it reads and this line.)
        self._interrupted = False
        await checkpoint_if_cancelled()
        read_nowait = self.read_nowait
        if spin:
            self._reads += 1
            if self._misses >= SPIN_MISSES and self._reads % SPIN_PROBE:
                spin = 0
            for _ in range(spin):
                await cancel_shielded_checkpoint()
                if self._interrupted:
                    self._interrupted = False
                    raise Interrupted
                data = read_nowait()
                if data is not None:
                    self._misses = 0
                    return data
            if spin:
                self._misses += 1
        rfd = self._rfd
        me = trio.lowlevel.current_task()
        if self._stopped is me:
            self._stopped = None  # from a read of ours that ended before it came
        while True:
            # An interrupt may come while the read waits, or once epoll has woken
            # it and before it runs: then another task (a leader) may have taken
            # the bytes and be waiting on the fd itself, and its read has cleared
            # `_interrupted`; `_stopped` still names this read.
            if self._interrupted or self._stopped is me:
                self._interrupted = False
                self._stopped = None
                raise Interrupted
            if self._pollable:
                # Which task waits, not just whether one does: a read that
                # ends late (a reader woken by epoll just as a leader took
                # over) must not wipe out the mark of the read after it.
                self._waiting = me
                try:
                    await trio.lowlevel.wait_readable(rfd)
                except trio.ClosedResourceError:
                    # notify_closing: our own interrupt, or the stream closing.
                    if (self._interrupted or self._stopped is me) and self.error is None:
                        self._interrupted = False
                        self._stopped = None
                        raise Interrupted from None
                    raise
                except OSError as exc:
                    if exc.errno != errno.EPERM:
                        raise trio.BrokenResourceError(f"read failed: {exc}") from exc
                    # A regular file (stdin redirected from one) is always readable.
                    self._pollable = False
                finally:
                    if self._waiting is me:
                        self._waiting = None
            else:
                await cancel_shielded_checkpoint()
            data = read_nowait()
            if data is not None:
                if self._stopped is me:
                    self._stopped = None  # it came with the bytes: nothing to stop
                return data


class StreamLink(Link):
    """A link over any `trio.abc.Stream`: TLS, SSH, websockets, QUIC, memory.

    Two optional stream attributes make it faster (our own transports have
    them where they can):

    - `send_nowait(data) -> bool`: take all of `data` now, without waiting;
      return whether more may be sent before `wait_send_all_might_not_block`.
      `write` then sends with no task hop, as on an fd link.
    - `cancel_safe_receive = True`: a cancelled `receive_some` loses nothing,
      so any task may read (`can_lead`) and `interrupt` may cancel a read.
    """

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        super().__init__(stream, nursery)
        self._send_nowait = getattr(stream, "send_nowait", None)
        self.can_lead = getattr(stream, "cancel_safe_receive", False) is True
        self._read_scope: trio.CancelScope | None = None
        # Reads in progress (two only while a cancelled one is leaving), and
        # what a read waits on until the other has left.
        self._reads = 0
        self._read_out: trio.Event | None = None
        self._flusher: trio.lowlevel.Task | None = None
        self._flush_started = False
        # Between hold() and unhold(): queue without waking the flush task.
        self._holding = False
        self._held = False

    def write(self, data: bytes | memoryview) -> None:
        send = self._send_nowait
        if send is None or self._out or self._flushing or self.error is not None:
            self.cork(data)
            return
        try:
            ready = send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc)
            raise trio.BrokenResourceError(f"write failed: {exc}") from exc
        if not ready:
            # The stream is full: what comes next queues until it has room.
            self._flushing = True
            self._start_flush()

    def hold(self) -> None:
        # Only where the flush task would cost a hop: streams with send_nowait
        # write at once anyway.
        self._holding = self._send_nowait is None

    def unhold(self) -> bool:
        self._holding = False
        held, self._held = self._held, False
        return held

    async def send_held(self) -> None:
        """Send what was held in one `send_all`, from this task.

        The unit's reader does, after answering what it read and before it
        reads again: its replies go out without waking the flush task. What
        other tasks queue meanwhile is left to the flush task.
        """
        out = self._out
        try:
            if out and self.error is None:
                data = bytes(out)
                out.clear()
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(exc)
        except BaseException:
            # Cancelled mid-send: the stream may hold half a frame.
            self._fail(trio.BrokenResourceError("a send was cancelled"))
            raise
        finally:
            self._flushing = False
            if out and self.error is None:
                self._flushing = True
                self._start_flush()
            else:
                self._wake_drained()

    def _start_flush(self) -> None:
        if self._holding:
            self._held = True
            return
        # The flush task stays, parked, once started: waking it costs less
        # than starting a task for every reply.
        task = self._flusher
        if task is not None:
            self._flusher = None
            reschedule(task)
        elif not self._flush_started:
            self._flush_started = True
            self._nursery.start_soon(self._flush)

    def _fail(self, exc: BaseException) -> None:
        super()._fail(exc)
        task = self._flusher
        if task is not None:
            self._flusher = None
            reschedule(task)
        if not self.can_lead and self._read_scope is not None:
            self._read_scope.cancel()  # (a leading read is left to `interrupt`)

    def _abort_park(self, _: object) -> Abort:
        self._flusher = None
        return Abort.SUCCEEDED

    async def _flush(self) -> None:
        out = self._out
        stream = self.stream
        send = self._send_nowait
        try:
            while self.error is None:
                try:
                    while out and self.error is None:
                        if send is not None:
                            await stream.wait_send_all_might_not_block()
                            if not out or self.error is not None:
                                break
                        data = bytes(out)
                        out.clear()
                        if send is not None:
                            send(data)
                        else:
                            await stream.send_all(data)
                        self._wake_drained()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._fail(exc)
                self._flushing = False
                self._wake_drained()
                if self.error is not None:
                    return
                self._flusher = current_task()
                await wait_task_rescheduled(self._abort_park)
        finally:
            self._flushing = False
            self._flush_started = False
            self._flusher = None
            self._wake_drained()

    async def read(self, spin: int = 0) -> bytes | bytearray | memoryview:
        receive = self.stream.receive_some
        if not self.can_lead:
            # Only one task reads here, and a failed write ends its read: a TLS
            # handshake that failed in the flush task leaves trio's reader
            # waiting for it for ever, and the peer would never hear.
            if self.error is not None:
                raise trio.BrokenResourceError(f"the stream failed: {self.error}")
            with trio.CancelScope() as scope:
                self._read_scope = scope
                try:
                    data = await receive(READ_SIZE)
                finally:
                    self._read_scope = None
            if scope.cancelled_caught:
                raise trio.BrokenResourceError(f"the stream failed: {self.error}")
            return data
        self._reads += 1
        try:
            with trio.CancelScope() as scope:
                self._read_scope = scope
                try:
                    while True:
                        try:
                            data = await receive(READ_SIZE)
                            break
                        except trio.BusyResourceError:
                            # A read we cancelled is still on its way out of
                            # the stream (rare: it was woken just before).
                            if self._reads == 1:
                                raise
                            self._read_out = self._read_out or trio.Event()
                            await self._read_out.wait()
                finally:
                    # The leaving read must not take the scope of the one after it.
                    if self._read_scope is scope:
                        self._read_scope = None
        finally:
            self._reads -= 1
            if self._read_out is not None:
                self._read_out.set()
                self._read_out = None
        if scope.cancelled_caught:
            raise Interrupted
        return data

    def interrupt(self) -> None:
        scope = self._read_scope
        if scope is not None and self.can_lead:
            scope.cancel()


def open_link(stream: trio.abc.Stream, nursery: trio.Nursery) -> Link:
    """Return the best link for `stream`; its flush tasks run in `nursery`."""
    fds = raw_fds(stream)
    if fds is not None:
        return FdLink(stream, nursery, *fds)
    return StreamLink(stream, nursery)
