"""The websocket transport for bench.py: its floor and latis over it.

`raw_round_trips` measures trio-websocket alone (no latis): binary messages
to an echo server in a child process. `latis_unit_stream` dials a latis
echo unit served over `WebSocketListener` in a child process, through
`WebSocketDialer`. Both run on 127.0.0.1; each child prints its port, then
serves until its stdin reaches EOF, so none outlives the benchmark. Nothing
here prints.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from _child import line_child
from trio_websocket import open_websocket_url

__all__ = ["latis_unit_stream", "raw_round_trips"]

#: trio-websocket alone: echo every message back, until stdin ends.
RAW_ECHO = """
import os, trio
from trio_websocket import ConnectionClosed, serve_websocket

async def echo(request):
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass

async def main():
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, None)
        print(server.port, flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()

trio.run(main)
"""

#: A latis echo unit over WebSocketListener, until stdin ends.
LATIS_UNIT = """
import os, trio
from latis_agents.echo import EchoAgent
from latis_core._unit.unit import open_unit
from latis_transports.websocket import WebSocketListener

async def main():
    listener = WebSocketListener("127.0.0.1", 0)
    async with open_unit(EchoAgent()) as unit, listener.listen() as accepting:
        print(accepting.port, flush=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, unit.serve, [accepting])
            stdin = trio.lowlevel.FdStream(os.dup(0))
            while await stdin.receive_some():
                pass
            nursery.cancel_scope.cancel()

trio.run(main)
"""


@asynccontextmanager
async def _child(source: str) -> AsyncIterator[int]:
    """Run `source` in a child Python; yield the port it prints; end it on leaving."""
    async with line_child([sys.executable, "-c", source], "websocket") as port:
        yield int(port)


async def raw_round_trips(n: int, size: int = 100) -> list[float]:
    """`n` round trips of `size` bytes with trio-websocket alone; seconds each."""
    payload = b"x" * size
    times = []
    async with _child(RAW_ECHO) as port:
        async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            send, receive, clock = ws.send_message, ws.get_message, time.perf_counter
            for _ in range(n):
                start = clock()
                await send(payload)
                await receive()
                times.append(clock() - start)
    return times


@asynccontextmanager
async def latis_unit_stream() -> AsyncIterator[trio.abc.Stream]:
    """A stream, through `WebSocketDialer`, to a latis echo unit in a child process."""
    from latis_transports.websocket import WebSocketDialer

    async with _child(LATIS_UNIT) as port:
        async with WebSocketDialer(f"ws://127.0.0.1:{port}/latis").connect() as stream:
            yield stream
