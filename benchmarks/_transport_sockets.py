"""The tcp and unix transports for bench.py: their floors and latis over them.

`raw_round_trips` measures plain trio sockets (no latis): an echo server in a
child process. `latis_unit_stream` dials a real `latis-unit --listen` child
(echo agent) with the transport's dialer. Children end when their stdin
closes (the raw echo) or on SIGTERM (the unit). Nothing here prints.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from _child import line_child

__all__ = ["latis_unit_stream", "raw_round_trips"]

#: trio alone: echo every read back, until stdin ends. Prints where it listens.
RAW_ECHO = """
import functools, os, sys, trio

async def echo(stream):
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass

async def main(where):
    async with trio.open_nursery() as nursery:
        if where == "tcp":
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
            print(listeners[0].socket.getsockname()[1], flush=True)
        else:
            sock = trio.socket.socket(trio.socket.AF_UNIX)
            await sock.bind(where)
            sock.listen()
            nursery.start_soon(trio.serve_listeners, echo, [trio.SocketListener(sock)])
            print(where, flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1])
"""


async def _open(kind: str, where: str) -> trio.SocketStream:
    if kind == "tcp":
        return await trio.open_tcp_stream("127.0.0.1", int(where))
    return await trio.open_unix_socket(where)


async def raw_round_trips(kind: str, n: int, size: int = 100) -> list[float]:
    """`n` round trips (seconds each) of `size` bytes through a plain socket echo."""
    with tempfile.TemporaryDirectory(prefix="lb") as tmp:
        target = "tcp" if kind == "tcp" else os.path.join(tmp, "echo.sock")
        async with line_child([sys.executable, "-c", RAW_ECHO, target], f"{kind} echo") as where:
            stream = await _open(kind, where)
            payload = b"x" * size
            times = []
            async with stream:
                for _ in range(n):
                    t0 = time.perf_counter()
                    await stream.send_all(payload)
                    got = 0
                    while got < size:
                        got += len(await stream.receive_some(65536))
                    times.append(time.perf_counter() - t0)
    return times


@asynccontextmanager
async def latis_unit_stream(kind: str) -> AsyncIterator[trio.abc.Stream]:
    """A stream to a `latis-unit --listen` child over `kind` (tcp or unix)."""
    from latis_core import dialer_from_url

    with tempfile.TemporaryDirectory(prefix="lb") as tmp:
        address = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix:{tmp}/unit.sock"
        env = {**os.environ, "LATIS_HOME": tmp}
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(functools.partial(
                trio.run_process,
                [sys.executable, "-m", "latis_core._unit.cli", "--listen", address],
                stderr=subprocess.PIPE, env=env, check=False,
            ))
            assert process.stderr is not None
            said = b""
            while b"listening on" not in said:
                said += await process.stderr.receive_some()
            if kind == "tcp":
                port = re.search(rb"\(port (\d+)\)", said).group(1).decode()  # type: ignore[union-attr]
                address = f"tcp://127.0.0.1:{port}"
            _, dialer = dialer_from_url(address)
            opened: Any = dialer.connect()
            async with opened as stream:
                yield stream
            process.terminate()
