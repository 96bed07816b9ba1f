"""Units in reach of this process: served in it, or started as a child over stdio.

`connect_agent` serves an agent object as a unit in this trio run (tests,
notebooks); `connect_local` starts a `latis-unit --stdio` (or any unit command)
as a child process and speaks to it. Both hand back the same `UnitClient` that
`connect` makes over any stream.
"""

from __future__ import annotations

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
    open_local = load_transport("local").open_local
    if argv is None:
        argv = unit_command(agent, options)
    kwargs.setdefault("label", f"local unit {argv[0]!r}" if argv else "local unit")
    async with open_local(argv, env=env, cwd=cwd, stderr=stderr, grace=grace) as stream:
        try:
            async with connect(stream, **kwargs) as unit:
                yield unit
        except ConnectError as exc:
            code = await _exit_code(stream.process)
            if code is None:
                raise
            raise ConnectError(f"{exc} (the unit exited with code {code})") from exc


async def _exit_code(process: trio.Process) -> int | None:
    with trio.move_on_after(0.5):
        await process.wait()
    return process.returncode
