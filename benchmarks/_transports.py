"""Every transport, side by side: its own raw echo, and latis over it (bench.py rows).

For each transport, in each round: the raw round trip (the transport alone, no
latis: trio sockets, trio-websocket, an asyncssh channel to `cat`, an aioquic
stream, `podman exec … cat`), then latis's `unit.ping()` and a streamed
prompt through a real unit served over that transport. Rounds interleave the
transports, so a noisy moment hits them all. A transport that cannot run here
(no sshd, no podman) is skipped with the reason.
"""

from __future__ import annotations

import importlib
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

import latis_core

#: The streamed prompt's words: one chunk each, echoed over and over (the echo
#: agent's `repeat`), as in bench.py's `stream_latis`.
STREAM_WORDS = [f"latency{i}" for i in range(10)]

#: name -> (module, how its raw row is made, what it is)
TRANSPORTS: dict[str, tuple[str, str]] = {
    "unix": ("_transport_sockets", "trio unix socket echo"),
    "tcp": ("_transport_sockets", "trio TCP echo (loopback)"),
    "websocket": ("_transport_websocket", "trio-websocket echo"),
    "quic": ("_transport_quic", "aioquic stream echo (our trio driver)"),
    "ssh": ("_transport_ssh", "asyncssh channel to cat, through trio-asyncio"),
    "container": ("_transport_container", "podman exec -i CTR cat"),
}


def _functions(name: str) -> tuple[
    Callable[[int], Awaitable[list[float]]],
    Callable[[], AbstractAsyncContextManager[trio.abc.Stream]],
]:
    module = importlib.import_module(TRANSPORTS[name][0])
    if module.__name__ == "_transport_sockets":
        return (
            lambda n: module.raw_round_trips(name, n),
            lambda: module.latis_unit_stream(name),
        )
    return module.raw_round_trips, module.latis_unit_stream


def _unavailable(name: str) -> str | None:
    if name == "ssh":
        from sshd import sshd_unavailable

        return sshd_unavailable()
    if name == "container":
        import shutil

        if shutil.which("podman") is None:
            return "podman is not installed"
        if shutil.which("busybox") is None:
            return "busybox is not installed (the raw row runs its cat in the container)"
    return None


async def _latis(
    opener: Callable[[], AbstractAsyncContextManager[trio.abc.Stream]],
    n: int,
    warmup: int,
    words: int,
) -> tuple[float, float]:
    """Median ping (µs) and streamed chunks per second through a unit over a transport."""
    async with opener() as stream, latis_core.connect(stream) as unit:
        for _ in range(warmup):
            await unit.ping()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await unit.ping()
            times.append(time.perf_counter() - t0)
        # As bench.py's `stream_latis` over stdio: ten words echoed `repeat` times.
        repeat = max(1, words // len(STREAM_WORDS))
        session = await unit.create_session(repeat=str(repeat))
        t0 = time.perf_counter()
        count = 0
        async for _chunk in session.prompt(" ".join(STREAM_WORDS)):
            count += 1
        elapsed = time.perf_counter() - t0
        assert count == repeat * len(STREAM_WORDS), (count, repeat)
    return statistics.median(times) * 1e6, count / elapsed


async def measure(
    *, n: int, warmup: int, rounds: int, words: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Per transport: {"raw": [µs per round], "latis": [µs], "stream": [chunks/s]},
    or {"skipped": why}."""
    out: dict[str, Any] = {}
    for name in TRANSPORTS:
        why = _unavailable(name)
        if why is None:
            try:
                _functions(name)
            except ImportError as exc:
                why = f"cannot import: {exc}"
        out[name] = {"skipped": why} if why else {"raw": [], "latis": [], "stream": []}
    for round_ in range(rounds):
        for name, row in out.items():
            if "skipped" in row:
                continue
            log(f"transports: {name}, round {round_ + 1}/{rounds}")
            raw_fn, opener = _functions(name)
            raw = await raw_fn(n + warmup)
            row["raw"].append(statistics.median(raw[warmup:]) * 1e6)
            ping, rate = await _latis(opener, n, warmup, words)
            row["latis"].append(ping)
            row["stream"].append(rate)
    return out


def describe(name: str) -> str:
    return TRANSPORTS[name][1]
