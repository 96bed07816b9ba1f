"""The transport interface: how a byte stream to a unit is made.

A transport moves bytes and knows nothing of messages. Every dialer and
listener, built in or from a plugin (entry-point group `latis.transports`),
has this shape; the protocol runs over the streams they yield, unchanged.

Streams with a file descriptor of their own (trio sockets, pipes) are read
and written directly. Any other stream may offer two things that save a task
hop per message (see `_link.StreamLink`): `send_nowait(data) -> bool` (take
all of `data` now; return whether more may be sent before
`wait_send_all_might_not_block`) and `cancel_safe_receive = True` (a
cancelled `receive_some` loses nothing, and raises `trio.BusyResourceError`
before taking anything when another task still receives).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, Self, runtime_checkable

import trio

__all__ = ["Dialer", "Listener"]


@runtime_checkable
class Dialer(Protocol):
    """Opens a byte stream to one unit (cmdr dials out).

    `async with dialer.connect() as stream:` yields a `trio.abc.Stream`; leaving
    the block closes it and releases whatever the dialer started (a process, an
    SSH channel). Failing to connect raises `ConnectError`.

    A transport module exposes its dialer class as `DIALER`: an attrs class
    whose fields are the options of its config table (`[units.X.dial]`).
    """

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build the dialer from an address (`tcp://host:port?fingerprint=…`).

        Raises:
            ValueError: the address is not one this transport reads.
        """
        ...

    def connect(self) -> AbstractAsyncContextManager[trio.abc.Stream]:
        """Open the stream."""
        ...

    def describe(self) -> str:
        """Say how this dialer reaches its unit, for messages (`ssh: user@host`)."""
        ...


@runtime_checkable
class Listener(Protocol):
    """Accepts units that dial in (units behind NAT, ephemeral boxes).

    `async with listener.listen() as accepting:` yields a
    `trio.abc.Listener[trio.abc.Stream]`; each accepted stream carries one unit.

    A transport module exposes its listener class as `LISTENER` (an attrs class,
    as for `DIALER`). Options that bound who may connect are read where present:
    `host`, `max_pending`, `max_pending_per_host`, `cert`, `tls`.
    """

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build the listener from an address (`tcp://0.0.0.0:7447`).

        Raises:
            ValueError: the address is not one this transport reads.
        """
        ...

    def listen(self) -> AbstractAsyncContextManager[trio.abc.Listener[trio.abc.Stream]]:
        """Start listening."""
        ...

    def describe(self) -> str:
        """Say where this listener listens, for messages (`tcp: 0.0.0.0:7447`)."""
        ...
