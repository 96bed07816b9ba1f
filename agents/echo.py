"""The `echo` agent: answers a prompt with its own words, one chunk per word.

For tests and demos. Options (`latis-unit --agent echo -o KEY=VALUE`):

- `delay`: seconds to wait before each chunk (default 0), so a prompt takes
  long enough to be cancelled or watched;
- `ask`: a question to ask the human before answering; the answer's words are
  echoed before the prompt's;
- `repeat`: echo the prompt this many times (default 1), for long streams;
- `remember`: `1` to remember the conversation: each answer starts with the
  session's previous prompt, `(you said: ...)`, so a demo shows that two
  prompts share a session's context.

Each may also be given per session (`session.create` options, `latis session
new -o KEY=VALUE`): a session's value replaces the unit's for that session's
prompts; other session options are ignored.
"""

from __future__ import annotations

import difflib
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
        remember: each answer starts with the session's previous prompt.
    """

    info: ClassVar[AgentInfo] = AgentInfo("echo", __version__)
    capabilities: ClassVar[tuple[str, ...]] = ("input",)

    def __init__(
        self, *, delay: float = 0.0, ask: str | None = None, repeat: int = 1,
        remember: bool = False,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        self.delay = delay
        self.ask = ask
        self.repeat = repeat
        self.remember = remember

    @classmethod
    def from_options(cls, options: Mapping[str, str], command: Sequence[str] = ()) -> EchoAgent:
        _no_command("echo", command)
        known = set(_OPTIONS)
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
        return cls(delay=delay, ask=options.get("ask") or None, repeat=repeat,
                   remember=_flag(options.get("remember", "0")))

    async def open_session(self, session_id: str, options: Mapping[str, Any]) -> AgentSession:
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:  # (a typo would otherwise be a session without the option, silently)
            close = difflib.get_close_matches(unknown[0], _OPTIONS, 1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"echo agent: unknown option {unknown[0]!r} ({hint}known: "
                             f"{', '.join(sorted(_OPTIONS))})")
        own = {k: v for k, v in options.items() if v is not None}
        if not own:
            return _EchoSession(self, self.remember)
        unit = {"delay": str(self.delay), "repeat": str(self.repeat), "ask": self.ask or "",
                "remember": "1" if self.remember else "0"}
        agent = EchoAgent.from_options(unit | {k: str(v) for k, v in own.items()})
        return _EchoSession(agent, agent.remember)


#: The echo agent's options (per unit, and per session).
_OPTIONS = ("delay", "ask", "repeat", "remember")


def _flag(value: object) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"echo agent: option 'remember' must be 1 or 0, got {value!r}")


class _EchoSession(AgentSession):
    def __init__(self, agent: EchoAgent, remember: bool = False) -> None:
        self._agent = agent
        self._remember = remember
        self._previous: str | None = None

    async def prompt(self, text: str, reply: Reply) -> None:
        agent = self._agent
        # Each word is a chunk with its space (the last without), made before
        # the loop, and a repeat shares the words' strings: a long stream
        # measures the unit, not this loop, in the memory of a list.
        before: list[str] = []
        if self._remember:
            said = (self._previous or "").split()
            if said:
                before = ["(you", "said:", *said[:-1], said[-1] + ")"]
            self._previous = text
        if agent.ask is not None:
            answer = await reply.ask(agent.ask)
            before = answer.split() + before
        spaced = [word + " " for word in text.split()]
        chunks = [word + " " for word in before] + spaced * agent.repeat
        if not chunks:
            return
        chunks[-1] = chunks[-1][:-1]
        delay = agent.delay
        send = reply.send
        for chunk in chunks:
            if delay:
                await trio.sleep(delay)
            await send(chunk)
