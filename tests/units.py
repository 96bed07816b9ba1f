"""Real units for transport tests: one that listens, and the conversation every
transport must carry."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import attrs
import trio

import latis_core

#: `latis-unit` of this Python.
UNIT = [sys.executable, "-m", "latis_core._unit.cli"]


@attrs.frozen
class ListeningUnit:
    """A `latis-unit --listen` process: the port it got and the TLS pin it printed."""

    process: trio.Process | subprocess.Popen[str]
    port: int | None
    fingerprint: str | None


@asynccontextmanager
async def listening_unit(home: Path, address: str, *args: str) -> AsyncIterator[ListeningUnit]:
    """`latis-unit --listen ADDRESS ARGS` (echo agent, 10 ms a word), until the block ends.

    With port 0 in ADDRESS, the port it got is read from what it says on start.
    """
    env = {**os.environ, "LATIS_HOME": str(home / "unit-home")}
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [*UNIT, "--listen", address, "--agent", "echo", "-o", "delay=0.01", *args],
                stderr=subprocess.PIPE,
                env=env,
                check=False,
            )
        )
        assert process.stderr is not None
        said = b""
        with trio.fail_after(20):
            while b"listening on" not in said:
                data = await process.stderr.receive_some()
                assert data, said.decode()
                said += data
        text = said.decode()
        port = re.search(r"\(port (\d+)\)", text)
        pin = re.search(r"TLS certificate (sha256:[0-9a-f]{64})", text)

        async def drain() -> None:  # keep its stderr flowing
            assert process.stderr is not None
            while await process.stderr.receive_some():
                pass

        nursery.start_soon(drain)
        try:
            yield ListeningUnit(
                process, int(port.group(1)) if port else None, pin.group(1) if pin else None
            )
        finally:
            process.terminate()


async def conversation(unit: latis_core.UnitClient) -> None:
    """What every transport must carry: the handshake is done; a session, a streamed
    prompt, a prompt cancelled mid-stream, and the state after it."""
    assert unit.agent.name == "echo"
    session = await unit.create_session()
    assert await session.prompt("one two three").text() == "one two three"
    words = " ".join(f"w{i}" for i in range(200))
    stream = session.prompt(words)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.aclose()
    assert stream.outcome == "cancelled"
    assert await session.state() == "idle"
    assert (await unit.state()).state == "idle"
    await session.destroy()


@contextmanager
def listening_process(home: Path, address: str, *args: str) -> Iterator[ListeningUnit]:
    """`listening_unit` for code that is not async: a `latis-unit --listen` child (its
    `process` is a `subprocess.Popen`), stopped when the block ends."""
    env = {**os.environ, "LATIS_HOME": str(home / "unit-home")}
    child = subprocess.Popen(
        [*UNIT, "--listen", address, "--agent", "echo", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert child.stderr is not None
        text = ""
        while "listening on" not in text:
            line = child.stderr.readline()
            assert line, f"the unit exited: {text}"
            text += line
        port = re.search(r"\(port (\d+)\)", text)
        pin = re.search(r"TLS certificate (sha256:[0-9a-f]{64})", text)
        yield ListeningUnit(
            child,
            int(port.group(1)) if port else None,
            pin.group(1) if pin else None,
        )
    finally:
        child.terminate()
        child.wait(10)
