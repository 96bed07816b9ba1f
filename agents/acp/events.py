"""A running prompt's events: the session/update notifications, permission
questions and the prompt's own response, queued in the order they came."""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

#: Events (updates, questions) queued for a running prompt before reading pauses.
QUEUE_LIMIT = 1024

# What a prompt's event queue carries.
_UPDATE, _PERMISSION, _RESULT, _FAILED, _ELICIT = range(5)


class _Events:
    """A session's queue of events for its running prompt (one consumer).

    `put` never blocks; the reader waits for space (`wait_space`) before it
    puts an update, so that a slow controller slows the agent down.
    """

    __slots__ = ("_space", "_wake", "items")

    def __init__(self) -> None:
        self.items: deque[tuple[Any, ...]] = deque()
        self._wake: trio.Event | None = None
        self._space: trio.Event | None = None

    def put(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    async def get(self) -> tuple[Any, ...]:
        items = self.items
        while not items:
            self._wake = trio.Event()
            await self._wake.wait()
        item = items.popleft()
        if self._space is not None and len(items) < QUEUE_LIMIT:
            self.release()
        return item

    async def wait_space(self) -> None:
        self._space = space = trio.Event()
        await space.wait()

    def release(self) -> None:
        space = self._space
        if space is not None:
            self._space = None
            space.set()
