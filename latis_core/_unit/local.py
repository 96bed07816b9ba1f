"""Units in reach of this process: served in it, or started as a child over stdio.

`connect_agent` serves an agent object as a unit in this trio run (tests,
notebooks); `connect_local` starts a `latis-unit --stdio` (or any unit command)
as a child process and speaks to it. Both hand back the same `UnitClient` that
`connect` makes over any stream.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from latis_core._errors import ConnectError
from latis_core._io.client import UnitClient, connect
from latis_core._io.pair import socket_stream_pair
from latis_core._plugins.agent import Agent
from latis_core._plugins.registry import load_transport
from latis_core._unit.unit import serve_unit
from latis_core._util import unwrap_group

__all__ = ["connect_agent", "connect_local", "unit_command"]


@asynccontextmanager
async def connect_agent(agent: Agent, **kwargs: Any) -> AsyncIterator[UnitClient]:
    """Serve `agent` as a unit in this process and speak to it (for tests and notebooks).

    The unit runs in this trio run, over a kernel socket pair; leaving the
    block ends both. `kwargs` are as for `connect`.
    """
    if not isinstance(agent, Agent):
        hint = ": for a function, PythonAgent(fn)" if callable(agent) else ""
        raise TypeError(f"connect_agent needs an Agent, got {type(agent).__name__}{hint}")
    ours, theirs = socket_stream_pair()
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_unit, theirs, agent)
            try:
                async with connect(ours, **kwargs) as unit:
                    yield unit
            finally:
                nursery.cancel_scope.cancel()


def unit_command(
    agent: str = "echo", options: Mapping[str, str] | None = None, *, args: Sequence[str] = ()
) -> list[str]:
    """Return the command line of a `latis-unit --stdio` for this Python.

    Args:
        agent: the agent's name.
        options: the agent's options (`-o KEY=VALUE`).
        args: more arguments for `latis-unit`.
    """
    argv = [sys.executable, "-m", "latis_core._unit.cli", "--stdio", "--agent", agent]
    for key, value in (options or {}).items():
        argv += ["-o", f"{key}={value}"]
    return argv + list(args)


@asynccontextmanager
async def connect_local(
    argv: Sequence[str] | None = None,
    *,
    agent: str = "echo",
    options: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stderr: int | None = None,
    grace: float = 5.0,
    **kwargs: Any,
) -> AsyncIterator[UnitClient]:
    """Start a unit as a child process and speak to it over its stdin/stdout.

    Args:
        argv: the unit's command line; by default a `latis-unit --stdio`
            of this Python with `agent` and `options`.
        agent: the agent, when `argv` is not given.
        options: its options, when `argv` is not given.
        env, cwd, stderr, grace: as for `latis_transports.open_local`.
        **kwargs: as for `connect`.

    Raises:
        ConnectError: the unit could not be started, or the handshake failed.
    """
    if isinstance(argv, str):
        raise TypeError("argv is the command line as a list of words, not a str: "
                        "for example ['latis-unit', '--stdio']")
    if argv is None:
        kwargs.setdefault("label", f"local unit (latis-unit --agent {agent})")
        argv = unit_command(agent, options)
    kwargs.setdefault("label", f"local unit {argv[0]!r}" if argv else "local unit")
    with unwrap_group():
        async with _relayed(argv, env, cwd, stderr, grace, kwargs) as unit:
            yield unit


@asynccontextmanager
async def _relayed(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    cwd: str | None,
    stderr: int | None,
    grace: float,
    kwargs: dict[str, Any],
) -> AsyncIterator[UnitClient]:
    """`connect_local`'s work, in a nursery of its own: the unit's stderr relayed."""
    open_local = load_transport("local").open_local
    async with trio.open_nursery() as nursery:
        tail = None
        if stderr is None:
            # Its stderr comes through here (to ours, as before: in a notebook, the
            # cell's), so that a unit that exits says why in the error, not only on
            # a terminal the user may not see (a notebook server's).
            tail, stderr = await nursery.start(_relay_stderr)
        try:
            async with open_local(argv, env=env, cwd=cwd, stderr=stderr, grace=grace) as stream:
                if tail is not None:
                    os.close(stderr)  # (the child has its copy)
                try:
                    async with connect(stream, **kwargs) as unit:
                        yield unit
                except ConnectError as exc:
                    code = await _exit_code(stream.process)
                    if code is None:
                        raise
                    said = _last_line(tail)
                    raise ConnectError(f"{exc} (the unit exited with code {code}"
                                       f"{': ' + said if said else ''})") from exc
        finally:
            nursery.cancel_scope.cancel()


async def _relay_stderr(*, task_status: Any) -> None:
    """Copy a pipe to our stderr, keeping its last bytes; started with (tail, write end)."""
    read_end, write_end = os.pipe()
    tail = bytearray()
    async with trio.lowlevel.FdStream(read_end) as pipe:
        task_status.started((tail, write_end))
        while data := await pipe.receive_some():
            tail += data
            del tail[:-_TAIL]
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(data.decode("utf-8", "replace"))
                sys.stderr.flush()


#: Bytes of a unit's stderr kept for its error message.
_TAIL = 4096


def _last_line(tail: bytearray | None) -> str:
    """Why a unit exited, from the end of its stderr: the last line that says
    `error` (latis-unit's own is followed by a line of usage), else the last."""
    if not tail:
        return ""
    lines = [line.strip() for line in bytes(tail).decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1]


async def _exit_code(process: trio.Process) -> int | None:
    with trio.move_on_after(0.5):
        await process.wait()
    return process.returncode
