"""The controller's events, fanned out to every browser's event stream.

One listener on the controller (session states, unit connections) for all
browsers: an event is encoded once, as a server-sent event, and appended to
each open stream's queue; the stream's task wakes, takes everything queued
at once and writes it in one piece. Nothing polls. A browser that stops
reading cannot hold memory: past `LIMIT` queued events its queue is dropped
and it is told to `resync` (read the state again).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson
import trio

if TYPE_CHECKING:
    from latis_core._cmdr.controller import Controller, UnitRuntime

__all__ = ["KEEPALIVE", "LIMIT", "Hub", "sse"]

#: Events queued for one browser before it is told to resync instead.
LIMIT = 4096
#: Seconds of quiet after which a stream sends a comment (proxies, dead peers).
KEEPALIVE = 15.0


def sse(event: str, data: Any, id: int | None = None) -> bytes:
    """One server-sent event: `event`, then `data` as JSON on one line."""
    head = b"" if id is None else b"id: %d\n" % id
    return head + b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _Queue:
    """What one browser has not read yet."""

    __slots__ = ("overflow", "pending", "wake")

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.overflow = False
        self.wake = trio.Event()

    def push(self, data: bytes) -> None:
        if len(self.pending) >= LIMIT:
            self.pending.clear()
            self.overflow = True
        else:
            self.pending.append(data)
        self.wake.set()


class Hub:
    """Session and unit events for the dashboard's `/api/v1/events` streams."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        #: The number of the last event published (a page compares snapshots with it).
        self.seq = 0
        self._queues: set[_Queue] = set()
        self._unit_of: dict[str, str] = {}
        self._removers = [
            ctl.add_state_listener(self._on_session),
            ctl.add_unit_listener(self._on_unit),
        ]

    def close(self) -> None:
        """Stop listening to the controller (open streams end at their next wake)."""
        for remove in self._removers:
            remove()
        self._removers = []
        for queue in self._queues:
            queue.wake.set()
        self._queues.clear()

    @property
    def streams(self) -> int:
        """How many event streams are open."""
        return len(self._queues)

    def _publish(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        data["seq"] = self.seq
        if not self._queues:
            return
        encoded = sse(event, data)
        for queue in self._queues:
            queue.push(encoded)

    def _on_session(self, sid: str, state: str) -> None:
        unit = self._unit_of.get(sid)
        if unit is None:
            # First sight of this session: the controller holds it while it is open.
            held = self.ctl.sessions.get(sid)
            unit = held.unit if held is not None else None
            if unit is not None and state != "closed":
                self._unit_of[sid] = unit
        if state == "closed":
            self._unit_of.pop(sid, None)
        self._publish("session", {"session": sid, "state": state, "unit": unit, "at": time.time()})

    def _on_unit(self, rt: UnitRuntime) -> None:
        self._publish(
            "unit", {"unit": rt.name, "connection": rt.state, "error": rt.error, "at": rt.since}
        )

    async def stream(self) -> AsyncIterator[bytes]:
        """One browser's events: `ready` (with the current `seq`), then as they come."""
        queue = _Queue()
        self._queues.add(queue)
        try:
            yield sse("ready", {"seq": self.seq})
            while self._removers:
                with trio.move_on_after(KEEPALIVE):
                    await queue.wake.wait()
                if not self._removers:
                    return
                if queue.overflow:
                    queue.overflow = False
                    queue.pending.clear()
                    queue.wake = trio.Event()
                    yield sse("resync", {"seq": self.seq})
                elif queue.pending:
                    batch, queue.pending = queue.pending, []
                    queue.wake = trio.Event()
                    yield b"".join(batch)
                else:
                    yield b": keepalive\n\n"
        finally:
            self._queues.discard(queue)
