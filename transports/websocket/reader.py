"""`_ReaderTask`: where the websocket transport runs trio-websocket's reader task
(so that a peer hanging up during the handshake ends the wait), and how much
that task reads from the socket at a time."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import cast

import trio

log = logging.getLogger("latis.transport.websocket")

#: Bytes read from the socket at a time: trio-websocket's default (4 KiB)
#: takes thousands of reads for one big message.
RECEIVE_SIZE = 64 * 1024


class _ReaderTask:
    """Stands in for the nursery that trio-websocket's `wrap_*_stream` start
    their reader task in (they only call `start_soon`).

    trio-websocket waits for the opening handshake even when its reader task
    has ended because the peer hung up (its own `open_websocket` relies on a
    timeout for that), and the reader raises `ConnectionRejected` into its
    nursery. This runs the reader in `nursery`, keeps what it raised in
    `error`, and when it ends cancels the scopes handed out by `cancel_on_end`.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._scopes: list[trio.CancelScope] = []
        self.ended = False
        self.error: Exception | None = None

    def start_soon(
        self, async_fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        self._nursery.start_soon(self._run, async_fn, *args, name=name)

    async def _run(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        from trio_websocket import ConnectionRejected

        try:
            await async_fn(*args)
        except Exception as exc:
            # The connection is over either way: the caller sees it end.
            if not isinstance(exc, ConnectionRejected):
                log.warning("a websocket reader task failed", exc_info=True)
            self.error = exc
        finally:
            self.ended = True
            for scope in self._scopes:
                scope.cancel()
            self._scopes.clear()

    def cancel_on_end(self) -> trio.CancelScope:
        """A cancel scope that is cancelled when the reader task ends."""
        scope = trio.CancelScope()
        if self.ended:
            scope.cancel()
        else:
            self._scopes.append(scope)
        return scope

    @property
    def nursery(self) -> trio.Nursery:
        """This object, typed as what trio-websocket asks for."""
        return cast(trio.Nursery, self)
