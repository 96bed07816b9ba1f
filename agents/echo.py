"""The `echo` agent: answers a prompt with its own words, one chunk per word.

For tests and demos. Options (`latis-unit --agent echo -o KEY=VALUE`):

- `delay`: seconds to wait before each chunk (default 0), so a prompt takes
  long enough to be cancelled or watched;
- `ask`: a question to ask the human before answering; the answer's words are
  echoed before the prompt's;
- `repeat`: echo the prompt this many times (default 1), for long streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import trio

from latis_core._plugins.agent import Agent, AgentSession, Reply, _no_command
from latis_core._version import __version__
from latis_core._wire.messages import AgentInfo

__all__ = ["EchoAgent"]


class EchoAgent(Agent):
    """Echoes each prompt back, one chunk per word.

    Args:
        delay: seconds before each chunk.
        ask: a question asked before answering, or None.
        repeat: how many times the prompt is echoed.
    """

    info: ClassVar[AgentInfo] = AgentInfo("echo", __version__)
    capabilities: ClassVar[tuple[str, ...]] = ("input",)

    def __init__(self, *, delay: float = 0.0, ask: str | None = None, repeat: int = 1) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        self.delay = delay
        self.ask = ask
        self.repeat = repeat

    @classmethod
    def from_options(cls, options: Mapping[str, str], command: Sequence[str] = ()) -> EchoAgent:
        _no_command("echo", command)
        known = {"delay", "ask", "repeat"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"echo agent: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        try:
            delay = float(options.get("delay", 0.0))
        except ValueError:
            raise ValueError(
                f"echo agent: option 'delay' must be a number of seconds, "
                f"got {options['delay']!r}"
            ) from None
        try:
            repeat = int(options.get("repeat", 1))
        except ValueError:
            raise ValueError(
                f"echo agent: option 'repeat' must be a whole number, got {options['repeat']!r}"
            ) from None
        return cls(delay=delay, ask=options.get("ask") or None, repeat=repeat)

    async def open_session(self, session_id: str, options: Mapping[str, Any]) -> AgentSession:
        return _EchoSession(self)


class _EchoSession(AgentSession):
    def __init__(self, agent: EchoAgent) -> None:
        self._agent = agent

    async def prompt(self, text: str, reply: Reply) -> None:
        agent = self._agent
        words = text.split() * agent.repeat
        if agent.ask is not None:
            answer = await reply.ask(agent.ask)
            words = answer.split() + words
        last = len(words) - 1
        delay = agent.delay
        send = reply.send
        for i, word in enumerate(words):
            if delay:
                await trio.sleep(delay)
            await send(word if i == last else word + " ")
