"""Heartbeats: the keep-alive clock of a connection, for either side.

A side that hears nothing for `heartbeat` seconds sends a `ping`; any byte
received restarts the silence, and none within `heartbeat_timeout` seconds
of the ping ends the connection. Silence is measured from the last byte
received (the connection is fed the arrival time, `Connection.receive_data`).

`Heartbeats` keeps the clocks of many connections in one task: a side that
holds thousands of them (a unit's controllers, a listener's dialed-in units,
the daemon's clients) pays a heap entry per connection, not a task and a
cancel scope (~3 KiB each). A connection alone has a `Heartbeats` of its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable

import trio

from latis_core._errors import ConnectionClosed
from latis_core._wire.connection import HEARTBEAT, HEARTBEAT_TIMEOUT, Connection

__all__ = ["HEARTBEAT", "HEARTBEAT_TIMEOUT", "Beat", "Heartbeats"]

log = logging.getLogger("latis.heartbeat")


class Beat:
    """One connection's place on a `Heartbeats` clock (`Heartbeats.remove` ends it)."""

    __slots__ = ("conn", "silent", "write")

    def __init__(
        self,
        conn: Connection,
        write: Callable[[bytes], None],
        silent: Callable[[ConnectionClosed], None],
    ) -> None:
        self.conn: Connection | None = conn
        self.write = write
        self.silent = silent


class Heartbeats:
    """The keep-alive clocks of many connections, kept by one task in `nursery`.

    The task runs while any connection is on the clock (it is started by the
    first `add` and ends once none is left). A connection's deadline is looked
    at again when it comes: a byte heard since then moves it on, a ping that
    went unanswered calls its `silent` callback.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._heap: list[tuple[float, int, Beat]] = []
        self._order = itertools.count()
        self._running = False
        #: When the task wakes next (inf while it waits for an `add`).
        self._next = math.inf
        self._wake = trio.Event()

    def add(
        self,
        conn: Connection,
        write: Callable[[bytes], None],
        silent: Callable[[ConnectionClosed], None],
    ) -> Beat | None:
        """Start `conn`'s clock (None if it has none): `write` sends its pings,
        `silent` is called once if a ping goes unanswered."""
        frame = conn.handle_timer(trio.current_time())
        if frame:
            write(frame)
        beat = Beat(conn, write, silent)
        if not self._push(beat):
            return None
        if not self._running:
            self._running = True
            self._nursery.start_soon(self._run)
        return beat

    @staticmethod
    def remove(beat: Beat | None) -> None:
        """Stop a connection's clock (its entry is dropped when its deadline comes;
        what it refers to is let go now)."""
        if beat is not None:
            beat.conn = None
            beat.write = beat.silent = _nothing

    def _push(self, beat: Beat) -> bool:
        assert beat.conn is not None
        deadline = beat.conn.get_timer()
        if deadline is None:
            return False
        heapq.heappush(self._heap, (deadline, next(self._order), beat))
        if deadline < self._next:
            self._wake.set()
        return True

    async def _run(self) -> None:
        heap = self._heap
        try:
            while heap:
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, beat = heapq.heappop(heap)
                    self._tick(beat, now)
                if not heap:
                    break
                self._next = heap[0][0]
                self._wake = trio.Event()
                with trio.move_on_at(self._next):
                    await self._wake.wait()
        finally:
            self._running = False
            self._next = math.inf

    def _tick(self, beat: Beat, now: float) -> None:
        conn = beat.conn
        if conn is None or conn.closed:
            return
        try:
            frame = conn.handle_timer(now)
        except ConnectionClosed as exc:
            beat.conn = None
            try:
                beat.silent(exc)
            except Exception:
                log.exception("a connection's silence could not be handled")
            return
        try:
            if frame:
                beat.write(frame)
        except Exception:
            # One connection's failure is its own: the clock goes on for the others.
            log.exception("a keep-alive ping could not be sent")
        self._push(beat)


def _nothing(*_: object) -> None:
    return None
