"""The container transport for bench.py: its floor and latis over it.

Each helper starts its own container (from the tests' image,
tests/podman_image.py, built here if absent: a busybox rootfs, the host's
Python and this checkout mounted read-only at their own paths) and removes it
on leaving. `raw_round_trips` measures `podman exec -i CTR cat` alone (no
latis); `latis_unit_stream` dials `python -m latis_core._unit.cli --stdio`
in the container through `ContainerDialer`. podman needs the settings of
.ci/containers.conf here: CONTAINERS_CONF points there unless it is set.
bench.py puts tests/ on the path and skips this row without podman or busybox.
Nothing here prints.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from podman_image import IMAGE, containers_env, ensure_image, python_mounts

__all__ = ["latis_unit_stream", "raw_round_trips"]

ENGINE = "podman"


async def _podman(*args: str) -> None:
    with trio.fail_after(120):
        result = await trio.run_process(
            [ENGINE, *args], capture_stdout=True, capture_stderr=True,
            env=containers_env(), check=False,
        )
    if result.returncode != 0:
        error = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{ENGINE} {args[0]} failed: {error}")


@asynccontextmanager
async def _container() -> AsyncIterator[str]:
    """A running container of our own; removed on leaving."""
    await trio.to_thread.run_sync(ensure_image)
    name = f"latis-bench-{uuid.uuid4().hex[:8]}"
    mounts = [arg for mount in python_mounts() for arg in ("-v", mount)]
    sleeper = [sys.executable, "-c", "import time; time.sleep(100000)"]
    await _podman("run", "-d", "--init", "--name", name, *mounts, IMAGE, *sleeper)
    try:
        yield name
    finally:
        with trio.CancelScope(shield=True):
            await _podman("rm", "-f", "-t", "0", name)


async def raw_round_trips(n: int, size: int = 100) -> list[float]:
    """`n` round trips of `size` bytes through `podman exec -i CTR cat`; seconds each."""
    from latis_transports.local import open_local

    payload = b"x" * size
    times = []
    async with _container() as name:
        argv = [ENGINE, "exec", "-i", name, "/bin/busybox", "cat"]
        async with open_local(argv, env=containers_env(), stderr=subprocess.DEVNULL) as stream:
            send, receive, clock = stream.send_all, stream.receive_some, time.perf_counter
            for _ in range(n):
                start = clock()
                await send(payload)
                got = 0
                while got < size:
                    data = await receive()
                    if not data:
                        raise RuntimeError("cat in the container ended")
                    got += len(data)
                times.append(clock() - start)
    return times


@asynccontextmanager
async def latis_unit_stream() -> AsyncIterator[trio.abc.Stream]:
    """A stream, through `ContainerDialer`, to a latis echo unit in a container of its own."""
    from latis_transports.container import ContainerDialer

    command = (sys.executable, "-m", "latis_core._unit.cli", "--stdio")
    async with _container() as name:
        async with ContainerDialer(name, engine=ENGINE, command=command).connect() as stream:
            yield stream
