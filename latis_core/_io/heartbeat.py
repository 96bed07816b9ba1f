"""Heartbeats: the loop that keeps a connection's keep-alive clock, for either side.

A side that hears nothing for `heartbeat` seconds sends a `ping`; any byte
received restarts the silence, and none within `heartbeat_timeout` seconds
of the ping ends the connection. Silence is measured from the last byte
received (the connection is fed the arrival time, `Connection.receive_data`).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from latis_core._wire.connection import HEARTBEAT, HEARTBEAT_TIMEOUT, Connection

__all__ = ["HEARTBEAT", "HEARTBEAT_TIMEOUT", "heartbeat"]


async def heartbeat(conn: Connection, write: Callable[[bytes], None]) -> None:
    """Keep `conn`'s keep-alive clock until it has none; `write` sends a ping.

    Raises:
        ConnectionClosed: nothing arrived within the timeout of a ping.
    """
    write(conn.handle_timer(trio.current_time()))
    while not conn.closed:
        deadline = conn.get_timer()
        if deadline is None:
            return
        await trio.sleep_until(deadline)
        frame = conn.handle_timer(trio.current_time())
        if frame:
            write(frame)
