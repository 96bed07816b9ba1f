"""Test helpers for the sans-IO layer (in the style of h11's tests/helpers.py).

`ConnectionPair` holds a cmdr-side and a unit-side `Connection` and moves bytes
between them, so a test says what one side sends and asserts what the other
side received::

    pair = ConnectionPair()
    pair.handshake()
    assert pair.send(Role.CMDR, Ping(1)) == [Ping(1)]
    assert pair.send(Role.UNIT, Pong(1)) == [Pong(1)]

`frame_of` and `raw_frame` build frames by hand, for bytes a well-behaved
`Connection` would refuse to send (deliver them with `ConnectionPair.deliver`).
"""

from __future__ import annotations

from typing import Any

import orjson

from latis_core import (
    CLOSED,
    NEED_DATA,
    AgentInfo,
    Connection,
    Hello,
    Message,
    Role,
    Violation,
    encode,
    encode_frame,
)

__all__ = ["UNIT_HELLO", "ConnectionPair", "drain", "frame_of", "raw_frame"]

#: The hello the unit side answers with in `ConnectionPair.handshake`.
UNIT_HELLO = Hello(
    role=Role.UNIT.value,
    unit="test-unit",
    agent=AgentInfo("echo", "1.0"),
    capabilities=("stream",),
)

Event = Message | Violation | object  # object: the NEED_DATA / CLOSED sentinels


def drain(conn: Connection) -> list[Event]:
    """Return every event `conn` has ready, in order.

    Stops at NEED_DATA (not included) or at CLOSED (included, as the last item).
    """
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if event is CLOSED:
            return events


def frame_of(msg: Message) -> bytes:
    """Return the frame carrying `msg`, with none of `Connection.send`'s checks."""
    return encode_frame(encode(msg))


def raw_frame(obj: Any) -> bytes:
    """Return a frame whose payload is `obj` as JSON (bytes are used as they are)."""
    payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return encode_frame(payload)


class ConnectionPair:
    """A cmdr `Connection` and a unit `Connection` wired to each other.

    Args:
        **kwargs: passed to both `Connection`s (max_frame, keepalive, ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        self.cmdr = Connection(Role.CMDR, **kwargs)
        self.unit = Connection(Role.UNIT, **kwargs)

    def conn(self, role: Role) -> Connection:
        """Return the connection of side `role`."""
        return self.cmdr if role is Role.CMDR else self.unit

    def peer(self, role: Role) -> Connection:
        """Return the connection on the other side from `role`."""
        return self.unit if role is Role.CMDR else self.cmdr

    def send(self, role: Role, *msgs: Message) -> list[Event]:
        """Send `msgs` from side `role`; return the events the other side got."""
        conn = self.conn(role)
        data = b"".join(conn.send(msg) for msg in msgs)
        return self.deliver(self.peer(role).our_role, data)

    def deliver(self, to: Role, data: bytes) -> list[Event]:
        """Feed `data` to side `to` (`b""` is end of stream); return its events."""
        conn = self.conn(to)
        conn.receive_data(data)
        return drain(conn)

    def handshake(self, unit_hello: Hello = UNIT_HELLO) -> None:
        """Exchange `hello` both ways (cmdr's default, then `unit_hello`)."""
        cmdr_hello = Hello()
        assert self.send(Role.CMDR, cmdr_hello) == [cmdr_hello]
        assert self.send(Role.UNIT, unit_hello) == [unit_hello]
        assert self.cmdr.handshake_done and self.unit.handshake_done
