"""The ssh transport's benchmark helpers, for benchmarks/bench.py.

Each helper starts its own throwaway sshd on 127.0.0.1 (tests/sshd.py: bench.py
puts tests/ on the path) and stops it when done. They print nothing.

- `raw_round_trips`: bytes to `cat` on the host through `SshDialer`'s own
  stream (asyncssh on trio-asyncio, driven from trio exactly as the transport
  does), no latis: the floor under the ssh rows.
- `raw_round_trips_asyncio`: the same through plain asyncio asyncssh (in a
  thread of its own), for reference: what the trio bridge costs.
- `latis_unit_stream`: a stream to `latis-unit --stdio` (this Python) on the
  host, for the latis rows over ssh.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from sshd import running_sshd, sshd_unavailable

__all__ = ["latis_unit_stream", "raw_round_trips", "raw_round_trips_asyncio"]

#: The unit on the host: this Python, this checkout.
UNIT = [sys.executable, "-m", "latis_core._unit.cli", "--stdio"]
#: Round trips run first and not counted (caches, the SSH window, the JIT-less warm-up).
WARMUP = 20


@asynccontextmanager
async def _sshd() -> AsyncIterator[Any]:
    why = sshd_unavailable()
    if why is not None:
        raise RuntimeError(f"no sshd for the ssh benchmarks: {why}")
    manager = running_sshd()
    # Starting and stopping block (keygen, a poll for the port): in a thread.
    server = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)


def _dialer(server: Any, command: list[str]) -> Any:
    from latis_transports.ssh import SshDialer

    return SshDialer(
        server.host,
        port=server.port,
        user=server.user,
        identity=(server.client_key,),
        host_key=server.host_key,
        command=command,
    )


async def raw_round_trips(n: int, size: int = 100) -> list[float]:
    """Time `n` round trips of `size` bytes to `cat` over ssh, from trio (seconds each)."""
    payload = b"x" * size
    times: list[float] = []
    async with _sshd() as server, _dialer(server, ["cat"]).connect() as stream:
        for i in range(WARMUP + n):
            start = time.perf_counter()
            await stream.send_all(payload)
            got = 0
            while got < size:
                got += len(await stream.receive_some())
            if i >= WARMUP:
                times.append(time.perf_counter() - start)
    return times


async def raw_round_trips_asyncio(n: int, size: int = 100) -> list[float]:
    """Time `n` round trips of `size` bytes to `cat` over ssh with plain asyncio asyncssh."""
    async with _sshd() as server:
        return await trio.to_thread.run_sync(_asyncio_round_trips, server, n, size)


def _asyncio_round_trips(server: Any, n: int, size: int) -> list[float]:
    import asyncssh

    async def run() -> list[float]:
        payload = b"x" * size
        times: list[float] = []
        async with asyncssh.connect(
            server.host,
            server.port,
            username=server.user,
            client_keys=[server.client_key],
            known_hosts=([asyncssh.import_public_key(server.host_key)], [], []),
            agent_forwarding=False,
        ) as conn:
            process = await conn.create_process("cat", encoding=None)
            for i in range(WARMUP + n):
                start = time.perf_counter()
                process.stdin.write(payload)
                got = 0
                while got < size:
                    got += len(await process.stdout.read(65536))
                if i >= WARMUP:
                    times.append(time.perf_counter() - start)
            process.stdin.write_eof()
            await process.wait_closed()
        return times

    # A thread outside trio: asyncio's own loop, even with trio-asyncio loaded.
    return asyncio.run(run())


@asynccontextmanager
async def latis_unit_stream() -> AsyncIterator[trio.abc.Stream]:
    """Yield a stream to `latis-unit --stdio` (this Python) over ssh on loopback."""
    async with _sshd() as server, _dialer(server, UNIT).connect() as stream:
        yield stream
