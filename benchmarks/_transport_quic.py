"""QUIC rows for benchmarks/bench.py: the transport alone, and latis over it.

Both serve from a child process on 127.0.0.1 (a fresh self-signed
certificate, pinned by the client here):

- `raw_round_trips`: bytes through the quic transport's own streams, echoed
  by the child (`python _transport_quic.py raw-echo CERT KEY`): what QUIC
  costs here (aioquic, driven by trio), with no latis framing or protocol.
- `latis_unit_stream`: a stream to a latis unit with the echo agent, served
  by the child over `QuicListener` (`python _transport_quic.py unit CERT KEY`).

A child prints its port on one line, then serves until its stdin reaches
EOF, so none outlives the benchmark. Nothing here prints.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from _child import line_child
from latis_transports.quic import QuicDialer, QuicListener, QuicStream

#: Round trips made before the measured ones (the first ones settle the path).
WARMUP = 20


@asynccontextmanager
async def _child(role: str) -> AsyncIterator[QuicDialer]:
    """Start the child serving `role`; yield a dialer to it (pinned)."""
    from latis_core._os.tls import self_signed

    with tempfile.TemporaryDirectory(prefix="latis-bench-quic-") as tmp:
        files = self_signed(tmp, ["127.0.0.1"])
        argv = [sys.executable, __file__, role, str(files.cert), str(files.key)]
        async with line_child(argv, f"quic {role}") as port:
            yield QuicDialer("127.0.0.1", int(port), fingerprint=files.fingerprint)


async def _round_trip(stream: QuicStream, payload: bytes) -> None:
    await stream.send_all(payload)
    missing = len(payload)
    while missing:
        data = await stream.receive_some()
        if not data:
            raise RuntimeError("the quic echo child closed the stream")
        missing -= len(data)


async def raw_round_trips(n: int, size: int = 100) -> list[float]:
    """Time `n` round trips of `size` bytes through a QUIC stream echoed by a child.

    Returns:
        The seconds each took, after `WARMUP` unmeasured ones.
    """
    payload = b"x" * size
    clock = time.perf_counter
    times = []
    async with _child("raw-echo") as dialer, dialer.connect() as stream:
        for _ in range(WARMUP):
            await _round_trip(stream, payload)
        for _ in range(n):
            start = clock()
            await _round_trip(stream, payload)
            times.append(clock() - start)
    return times


@asynccontextmanager
async def latis_unit_stream() -> AsyncIterator[trio.abc.Stream]:
    """A QUIC stream to a latis unit (echo agent) served in a child process."""
    async with _child("unit") as dialer, dialer.connect() as stream:
        yield stream


# ---- the child ----------------------------------------------------------------------


async def _until_stdin_closes() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with stdin:
        while await stdin.receive_some():
            pass


async def _echo(stream: trio.abc.Stream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def _serve(role: str, cert: str, key: str) -> None:
    from latis_agents.echo import EchoAgent

    from latis_core._unit.unit import open_unit

    options = QuicListener("127.0.0.1", 0, cert=cert, key=key)
    async with open_unit(EchoAgent()) as unit, options.listen() as listener:
        handler = _echo if role == "raw-echo" else unit.serve
        print(listener.port, flush=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, handler, [listener])
            await _until_stdin_closes()
            nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("raw-echo", "unit"):
        print("usage: _transport_quic.py raw-echo|unit CERT KEY", file=sys.stderr)
        return 2
    trio.run(_serve, argv[0], argv[1], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
