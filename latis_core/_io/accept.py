"""Serving a listener that anyone may reach: bounded, timed, counted.

A listener is open to whoever can reach it, so until a connection has
finished its handshake (and, where asked, proven who it is) it holds a
*pending* slot: there are at most `max_pending` of them, and at most
`max_pending_per_host` for one client address. A connection beyond either
bound waits, holding nothing but its socket, in a bounded waiting room for a
slot, at most `max_wait` seconds; while the room is full the listener accepts
nothing (the kernel's backlog holds the rest, at no cost). The room holds what
the measured rate serves within `max_wait` (at least `max_pending`, at most
`max_waiting`). One that waited in vain is *refused with a time*: the
owner's `refuse(stream, retry_after)` tells it when to come back (cmdr's
listener: an `error` `limit_reached` with `retry_after`), and those times are
handed out like a bakery's tickets, one per expected free slot at the rate
slots have been freeing, so that a fleet that was refused comes back spread
out instead of all at once. Refusals in progress are bounded too; beyond that
bound a connection is closed at once. A connection that does not finish in
time is closed by the handshake timeout of whoever serves it. Refusals are
counted, and logged as one summary line per interval, not one line each.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

__all__ = ["Gate", "ListenerStats", "RefusalLog", "Refuser", "bound_port", "peer_of",
           "serve_listener"]

log = logging.getLogger("latis.accept")

#: accept() errors that mean "out of resources for now": wait and go on.
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: New connections a second from one address, by default, past the burst. Not
#: WireGuard's 20: a fleet behind one NAT address must reconnect at the pace the
#: TLS handshakes allow (~330/s on 2 cores), and the pending bounds per address
#: already keep one address from taking every slot.
RATE_PER_HOST = 500.0
#: New connections from one address at once before the rate applies.
BURST_PER_HOST = 1000
#: Addresses remembered by the rate limit before idle ones are forgotten.
_MAX_BUCKETS = 10_000
#: Seconds between two summaries of refused connections in the log.
SUMMARY_INTERVAL = 10.0
#: Bounds on the retry time given to a refused connection, in seconds.
RETRY_MIN, RETRY_MAX = 1.0, 60.0
#: Seconds over which the rate of freed slots is measured.
_RATE_WINDOW = 5.0


def peer_of(stream: trio.abc.Stream) -> tuple[str, int] | str | None:
    """The address of the other end of `stream`, where the transport knows it."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    address = getattr(inner, "peer_address", None)
    if address is not None:
        return address  # type: ignore[no-any-return]
    if isinstance(inner, trio.SocketStream):
        try:
            name = inner.socket.getpeername()
        except OSError:
            return None
        if isinstance(name, tuple):
            return (str(name[0]), int(name[1]))
        return "unix"
    return None


#: `tcp_info.tcpi_state` of a connection the client has already closed (Linux).
_TCP_CLOSE_WAIT = 8


def _given_up(stream: trio.abc.Stream) -> bool:
    """Whether the client closed this connection before we got to it (it waited in the
    kernel's backlog past its own timeout): serving it would cost a TLS handshake for
    nobody. One cheap syscall; False where the platform cannot tell."""
    inner: Any = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None or not isinstance(inner, trio.SocketStream):
        return False
    try:
        state = inner.socket.getsockopt(socket.IPPROTO_TCP, tcp_info, 1)
    except (OSError, ValueError):
        return False
    return bool(state) and state[0] == _TCP_CLOSE_WAIT


def bound_port(listener: object) -> int | None:
    """The port a listener is bound to (useful after listening on port 0)."""
    while listener is not None:
        port = getattr(listener, "port", None)
        if isinstance(port, int):
            return port
        listener = getattr(listener, "transport_listener", None)
    return None


def _host(address: tuple[str, int] | str | None) -> str:
    if isinstance(address, tuple):
        return address[0]
    return address or "?"


@attrs.define
class ListenerStats:
    """What a listener has seen: connections accepted and refused, by reason."""

    accepted: int = 0
    refused: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "refused": dict(self.refused)}


class _Waiter:
    __slots__ = ("admitted", "gone", "host")

    def __init__(self, host: str) -> None:
        self.host = host
        self.admitted = trio.Event()
        self.gone = False


class Gate:
    """Counts pending connections, in all and per client address; queues the overflow;
    paces new connections per address over time (a token bucket: `rate_per_host` a
    second, up to `burst_per_host` at once; WireGuard's handshake limiter is the model).

    Args:
        max_pending: connections in their handshake at most.
        max_pending_per_host: the same, per client address.
        rate_per_host: new connections a second one address may make past the burst
            (0: no limit); faster ones are closed, unanswered.
        burst_per_host: see `rate_per_host`.
        max_waiting: connections waiting for a slot at most (default: 8 per slot).
        max_wait: seconds a connection waits for a slot before it is refused.
    """

    def __init__(
        self,
        max_pending: int,
        max_pending_per_host: int,
        rate_per_host: float = RATE_PER_HOST,
        burst_per_host: int = BURST_PER_HOST,
        *,
        max_waiting: int | None = None,
        max_wait: float = 5.0,
    ) -> None:
        self.max_pending = max_pending
        self.max_pending_per_host = max_pending_per_host
        self.rate_per_host = rate_per_host
        self.burst_per_host = burst_per_host
        #: host -> (tokens, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}
        self.max_waiting = 8 * max_pending if max_waiting is None else max_waiting
        self.max_wait = max_wait
        self.pending = 0
        self.waiting = 0
        self._per_host: collections.Counter[str] = collections.Counter()
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._freed: collections.deque[float] = collections.deque()  # when slots freed
        self._next_ticket = 0.0
        self._room_event = trio.Event()

    def too_fast(self, host: str, now: float) -> bool:
        """Take a token for a new connection from `host`; True if it has none left."""
        if self.rate_per_host <= 0:
            return False
        burst = float(self.burst_per_host)
        tokens, then = self._buckets.get(host, (burst, now))
        tokens = min(burst, tokens + (now - then) * self.rate_per_host)
        if tokens < 1:
            self._buckets[host] = (tokens, now)
            return True
        self._buckets[host] = (tokens - 1, now)
        if len(self._buckets) > _MAX_BUCKETS:
            # Forget the hosts whose buckets have filled up again (as good as new).
            full = (self.burst_per_host - 1) / self.rate_per_host
            self._buckets = {h: b for h, b in self._buckets.items() if now - b[1] < full}
        return False

    def full(self, host: str) -> str | None:
        """Why `host` cannot have a slot now, or None if it can."""
        if self.pending >= self.max_pending:
            return f"{self.pending} connections are already in their handshake"
        if self._per_host[host] >= self.max_pending_per_host:
            return f"{self._per_host[host]} connections from {host} are already in their handshake"
        if self.waiting:
            return f"{self.waiting} connections are waiting for a slot"  # first come, first served
        return None

    def _room_for(self, host: str) -> bool:
        """Whether a slot is free for `host` (the bounds only: not who waits)."""
        return self.pending < self.max_pending and self._per_host[host] < self.max_pending_per_host

    def admit(self, host: str) -> str | None:
        """Take a slot for `host` now; return None, or why there is none."""
        why = self.full(host)
        if why is None:
            self._take(host)
        return why

    def _take(self, host: str) -> None:
        self.pending += 1
        self._per_host[host] += 1

    def release(self, host: str) -> None:
        """Give back `host`'s slot: to the first waiter that may take it."""
        self.pending -= 1
        self._per_host[host] -= 1
        if not self._per_host[host]:
            del self._per_host[host]
        now = trio.current_time()
        self._freed.append(now)
        while self._freed and self._freed[0] < now - _RATE_WINDOW:
            self._freed.popleft()
        self._wake()

    def _wake(self) -> None:
        queue = self._queue
        while queue and queue[0].gone:
            queue.popleft()
        if not queue or self.pending >= self.max_pending:
            return
        for waiter in queue:  # the first whose host has room (nearly always the first)
            if not waiter.gone and self._room_for(waiter.host):
                queue.remove(waiter)
                self.waiting -= 1
                self._room_event.set()
                self._take(waiter.host)
                waiter.admitted.set()
                return

    def rate(self) -> float:
        """Slots freed per second lately (at least 1): over the last `_RATE_WINDOW`
        seconds, or since the first of them if they began since (a listener just
        started, or a fleet back after a quiet spell: counted over the whole
        window, it would look that many times slower, and be told to wait and
        kept out of the waiting room as if it were)."""
        freed = self._freed
        if not freed:
            return 1.0
        span = max(trio.current_time() - freed[0], 1.0)
        return max(len(freed) / span, 1.0)

    def room(self) -> int:
        """How many may wait now: what the rate serves within `max_wait`, within bounds.

        At least `max_pending` (a listener that just started has no rate yet, and
        that is when a fleet dials in), at most `max_waiting`.
        """
        return min(self.max_waiting, max(self.max_pending, int(self.rate() * self.max_wait)))

    async def wait_for_room(self) -> None:
        """Return once the waiting room has space (until then, accept nothing: the
        kernel's backlog holds new connections, which costs us nothing)."""
        while self.waiting >= self.room():
            self._room_event = trio.Event()
            await self._room_event.wait()

    async def wait(self, host: str) -> bool:
        """Wait for a slot for `host` up to `max_wait`; True once it holds one, False
        if it should be refused (no slot freed for it in time)."""
        if self.admit(host) is None:
            return True
        waiter = _Waiter(host)
        self._queue.append(waiter)
        self.waiting += 1
        if self._room_for(host):
            # It may take a slot at once: the others waiting could not (their
            # hosts are at their bound), or they would hold one already. Not
            # looked for otherwise: going through the whole queue at every
            # arrival was ~7% of cmdr's samples (py-spy) while a fleet of one
            # address redialed (thousands waiting, each arrival walking past them).
            self._wake()
        try:
            with trio.move_on_after(self.max_wait):
                await waiter.admitted.wait()
        finally:
            if not waiter.admitted.is_set():
                waiter.gone = True
                self.waiting -= 1
                self._room_event.set()
        return True if waiter.admitted.is_set() else False

    def retry_after(self) -> float:
        """When a connection refused now should come back: the next free ticket, in seconds.

        Tickets are spaced at the rate slots free up, after everyone already waiting,
        so refused connections return spread out rather than as one wave.
        """
        now = trio.current_time()
        rate = self.rate()
        ticket = max(self._next_ticket, now + self.waiting / rate + RETRY_MIN)
        self._next_ticket = ticket + 1 / rate
        return min(max(ticket - now, RETRY_MIN), RETRY_MAX)


class RefusalLog:
    """Refused connections as one log line per interval: counts by reason and host."""

    def __init__(self, label: str, interval: float = SUMMARY_INTERVAL) -> None:
        self.label = label
        self.interval = interval
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._example: dict[str, str] = {}

    def note(self, reason: str, host: str, why: str) -> None:
        """Count one refusal (`why` is kept as the reason's example)."""
        self._counts[reason, host] += 1
        self._example.setdefault(reason, why)

    def flush(self) -> None:
        """Log what was counted since the last flush (nothing if nothing was)."""
        if not self._counts:
            return
        total = sum(self._counts.values())
        parts = [f"{n} {reason} from {host}" for (reason, host), n in self._counts.most_common(5)]
        if len(self._counts) > 5:
            parts.append(f"{len(self._counts) - 5} more sources")
        examples = "; ".join(f"{reason}: {why}" for reason, why in self._example.items())
        log.warning("%s: refused %d connection%s in the last %g s (%s) (%s)", self.label, total,
                    "" if total == 1 else "s", self.interval, ", ".join(parts), examples)
        self._counts.clear()
        self._example.clear()

    async def run(self) -> None:
        """Flush every interval, forever (and once more when cancelled)."""
        try:
            while True:
                await trio.sleep(self.interval)
                self.flush()
        finally:
            self.flush()


class _Refusing:
    """Refusals in progress (`limiter`) and queued for one (`queued`, at most `max_queued`).

    A refusal costs a TLS handshake: they take turns, and a connection that finds
    the queue full is closed bare.
    """

    def __init__(self, at_once: int, max_queued: int) -> None:
        self.limiter = trio.CapacityLimiter(at_once)
        self.max_queued = max_queued
        self.queued = 0


#: `refuse(stream, retry_after)`: tell a refused connection when to come back
#: (bounded in time by the caller; the stream is closed after).
Refuser = Callable[[trio.abc.Stream, float], Awaitable[None]]
#: Seconds a refusal may take (TLS handshake included) before the stream is cut.
REFUSE_TIMEOUT = 3.0


Handler = Callable[[trio.abc.Stream, tuple[str, int] | str | None, Callable[[], None]],
                   Awaitable[None]]


async def serve_listener(
    listener: trio.abc.Listener[Any],
    handler: Handler,
    *,
    gate: Gate,
    stats: ListenerStats,
    label: str,
    refuse: Refuser | None = None,
    max_refusing: int | None = None,
    refusals: RefusalLog | None = None,
) -> None:
    """Accept connections forever; serve each in a task of its own.

    `handler(stream, peer, release)` serves one connection and calls
    `release()` once its handshake is done (it is called anyway when the
    handler returns). The handler owns the stream: it closes it. A connection
    that gets no slot is given to `refuse` with its retry time (at most
    `max_refusing` at once, default a quarter of the gate's slots), or closed
    at once without one. Refusals are summarised in the log by `refusals` (the
    owner may note its own there too).
    """
    refusals = refusals or RefusalLog(label)
    refusing = _Refusing(
        max_refusing if max_refusing is not None else max(1, gate.max_pending // 4),
        gate.max_waiting,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(refusals.run)
        try:
            await _accept(listener, handler, gate, stats, label, refusals, refusing, refuse,
                          nursery)
        finally:
            # Closed as soon as nothing more is accepted, not once the connections
            # served have ended: a cmdr stopping with 10,000 units connected takes
            # seconds to end their tasks, and the connections the kernel took in
            # meanwhile (the units redialing) waited for nothing until the process
            # exited. Closed, the port refuses them: they dial again soon.
            with trio.CancelScope(shield=True):
                try:
                    await listener.aclose()
                except Exception as exc:  # (closing is best effort: the owner closes too)
                    log.debug("%s: closing the listener: %s", label, exc)


async def _accept(
    listener: trio.abc.Listener[Any],
    handler: Handler,
    gate: Gate,
    stats: ListenerStats,
    label: str,
    refusals: RefusalLog,
    refusing: _Refusing,
    refuse: Refuser | None,
    nursery: trio.Nursery,
) -> None:
    """`serve_listener`'s loop: accept, then serve, wait or refuse each connection."""
    while True:
        await gate.wait_for_room()
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _TRANSIENT:
                raise
            log.error("%s: accept failed (%s); retrying in 0.1 s", label, exc)
            await trio.sleep(0.1)
            continue
        if _given_up(stream):
            stats.refuse("gone")
            await trio.aclose_forcefully(stream)
            continue
        peer = peer_of(stream)
        host = _host(peer)
        if gate.too_fast(host, trio.current_time()):
            # Silence: a flood from one address gets no answer and costs no handshake.
            stats.refuse("rate_limited")
            refusals.note("rate_limited", host,
                          f"faster than {gate.rate_per_host:g} connections a second")
            await trio.aclose_forcefully(stream)
            continue
        if gate.admit(host) is None:  # the common case, without a task in between
            stats.accepted += 1
            nursery.start_soon(_serve_one, handler, stream, peer, host, gate)
        else:
            nursery.start_soon(
                _wait_or_refuse, handler, stream, peer, host, gate, stats, refusals,
                refuse, refusing,
            )


async def _wait_or_refuse(
    handler: Handler,
    stream: trio.abc.Stream,
    peer: tuple[str, int] | str | None,
    host: str,
    gate: Gate,
    stats: ListenerStats,
    refusals: RefusalLog,
    refuse: Refuser | None,
    refusing: _Refusing,
) -> None:
    """A connection that found no free slot: wait for one, or be told when to come back."""
    why = gate.full(host) or "no slot"
    if await gate.wait(host):
        if _given_up(stream):  # it stopped waiting before we could serve it
            gate.release(host)
            stats.refuse("gone")
            await trio.aclose_forcefully(stream)
            return
        stats.accepted += 1
        await _serve_one(handler, stream, peer, host, gate)
        return
    try:
        if _given_up(stream):
            stats.refuse("gone")
            return
        if refuse is None or refusing.queued >= refusing.max_queued:
            stats.refuse("flood")
            refusals.note("flood", host, why)
            return
        retry_after = gate.retry_after()
        stats.refuse("busy")
        refusals.note("busy", host, f"{why}; told to retry in about {math.ceil(retry_after)} s")
        refusing.queued += 1
        queued = True
        try:
            with trio.move_on_after(REFUSE_TIMEOUT):
                async with refusing.limiter:
                    refusing.queued -= 1
                    queued = False
                    try:
                        await refuse(stream, retry_after)
                    except Exception as exc:  # it did not wait to hear it
                        log.debug("%s: refusing %s failed: %s", refusals.label, host, exc)
        finally:
            if queued:
                refusing.queued -= 1
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_one(
    handler: Handler,
    stream: trio.abc.Stream,
    peer: tuple[str, int] | str | None,
    host: str,
    gate: Gate,
) -> None:
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            gate.release(host)

    try:
        await handler(stream, peer, release)
    except Exception:
        log.exception("serving a connection from %s failed", host)
    finally:
        release()
        await trio.aclose_forcefully(stream)
