"""Scripted agents for the coordination tests, run by real `latis-unit` processes
(`--agent python -o target=team_agents:NAME -o path=tests/`).

Each logs what its unit received to the file `$TEAM_LOG` (one JSON line per
event: `unit` from `$TEAM_NAME`, `session`, `event`, `text`), so a test asserts
who received what, in which order, as the units saw it. Replies come from
`$TEAM_REPLIES` (a JSON list: the Nth prompt of a session gets the Nth, the
last one repeats) or are `NAME answer N`.

Run as a script, this file is `latis-unit` itself, with one fault a test may
inject: `$TEAM_MEMINFO` names the file the unit's capacity probe reads instead
of /proc/meminfo, so a test decides how much memory the unit reports free.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import trio

__all__ = ["answer", "ask", "fail", "vanish"]


def _name() -> str:
    return os.environ.get("TEAM_NAME", "agent")


def log(ctx: Any, event: str, text: str = "") -> None:
    """Append one event to `$TEAM_LOG` (one write: lines of concurrent units do not mix)."""
    path = os.environ.get("TEAM_LOG")
    if not path:
        return
    line = (
        json.dumps({"unit": _name(), "session": ctx.session_id, "event": event, "text": text})
        + "\n"
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _reply(ctx: Any) -> str:
    count = ctx.memory["prompts"] = ctx.memory.get("prompts", 0) + 1
    replies = json.loads(os.environ.get("TEAM_REPLIES", "[]"))
    if replies:
        return str(replies[min(count, len(replies)) - 1])
    return f"{_name()} answer {count}"


def _prompts_logged() -> int:
    try:
        with open(os.environ["TEAM_LOG"], encoding="utf-8") as f:
            return sum(json.loads(line)["event"] == "prompt" for line in f)
    except (KeyError, OSError):
        return 0


def _gate_open() -> bool:
    gate = os.environ.get("TEAM_GATE")
    return not gate or os.path.exists(gate)


async def _hold() -> None:
    """Wait while the test holds the agents: until `$TEAM_BARRIER` prompts are in the
    log (all agents were prompted at once), and until the file `$TEAM_GATE` exists."""
    barrier = int(os.environ.get("TEAM_BARRIER", "0"))
    with trio.move_on_after(30):  # a barrier never met shows as a missing line in the log
        while _prompts_logged() < barrier:
            await trio.sleep(0.02)
    while not _gate_open():
        await trio.sleep(0.02)
    delay = float(os.environ.get("TEAM_DELAY", "0"))
    if delay:
        await trio.sleep(delay)


async def answer(text: str, ctx: Any) -> AsyncIterator[str]:
    """Log the prompt, say the first word of the reply, hold (`_hold`), say the rest.

    A cancelled prompt (`prompt.cancel`) logs `cancelled`."""
    log(ctx, "prompt", text)
    reply = _reply(ctx)
    head, _, tail = reply.partition(" ")
    try:
        yield head + (" " if tail else "")
        await _hold()
        if tail:
            yield tail
    except trio.Cancelled:
        log(ctx, "cancelled", text)
        raise
    log(ctx, "done", reply)


async def fail(text: str, ctx: Any) -> AsyncIterator[str]:
    """Log the prompt, say a word, hold (`_hold`), then fail it."""
    log(ctx, "prompt", text)
    yield "starting "
    await _hold()
    raise RuntimeError("scripted failure")


async def vanish(text: str, ctx: Any) -> AsyncIterator[str]:
    """Log the prompt, say a word, hold (`_hold`), then end the unit's process: its
    connection drops."""
    log(ctx, "prompt", text)
    yield "going "
    await _hold()
    os._exit(3)


async def ask(text: str, ctx: Any) -> AsyncIterator[str]:
    """Log the prompt, ask the human which colour, answer with what they said."""
    log(ctx, "prompt", text)
    said = await ctx.ask("which colour?")
    log(ctx, "answered", said)
    yield f"{_name()} paints it {said}"


if __name__ == "__main__":
    import sys

    from latis_core._os import capacity
    from latis_core._unit.cli import main

    capacity._MEMINFO = os.environ.get("TEAM_MEMINFO", capacity._MEMINFO)
    sys.exit(main())
