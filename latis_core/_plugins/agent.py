"""The `Agent` adapter interface: what a unit needs from the agent it wraps.

An adapter is two small classes::

    class MyAgent(Agent):
        info = AgentInfo("mine", "1.0")

        async def open_session(self, session_id, options):
            return MySession()

    class MySession(AgentSession):
        async def prompt(self, text, reply):
            async for piece in produce(text):
                await reply.send(piece)                 # one chunk
            if await reply.ask("Write the file?", options=("yes", "no")) == "yes":
                ...

The unit does the protocol: ids, sequence numbers, state, replay, backpressure.
Cancellation is trio's: when the controller cancels a prompt, `prompt` gets
`trio.Cancelled` at its next checkpoint; clean up in `finally` (with a
shielded, bounded scope if that must await). Any other exception ends the
prompt with an `agent_error`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

from latis_core._wire.messages import AgentInfo

__all__ = ["Agent", "AgentSession", "Reply", "SessionNotFound"]


def _no_command(name: str, command: Sequence[str]) -> None:
    if command:
        raise ValueError(f"{name} agent runs no command (got {' '.join(command)!r} after --)")


class SessionNotFound(LookupError):
    """`Agent.resume_session` has no such session to load."""


class Reply(Protocol):
    """How an agent answers a prompt (given to `AgentSession.prompt`)."""

    @property
    def session_id(self) -> str:
        """The session this prompt belongs to."""
        ...

    async def send(
        self, text: str = "", *, kind: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        """Send one chunk: text, or with `kind` a typed chunk (a tool call, a plan, ...).

        Waits when the controller reads slower than the agent writes. The
        prompt's cancel (`prompt.cancel`, its session's end) raises
        `trio.Cancelled` at the next call; every 64th call is a full
        checkpoint (a cancel from elsewhere, other tasks' turn).
        """
        ...

    async def ask(
        self,
        question: str,
        *,
        options: Sequence[str] = (),
        kind: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        """Ask the human; return the answer.

        `options` are offered; cmdr's inbox holds a person to them (by name, id or
        number), but the unit does not check what comes back: a controller of
        its own may answer anything (PROTOCOL.md §9), so check it if it matters.

        `data` says what the question is about (`tool`, `tool_kind`, `path`,
        `command`, or a structured question's `schema`): cmdr's approval policy
        matches on it and the inbox shows it.

        The session's state is `waiting` until the answer comes.
        """
        ...


class AgentSession(abc.ABC):
    """One conversation with the agent."""

    @abc.abstractmethod
    async def prompt(self, text: str, reply: Reply) -> None:
        """Answer `text` through `reply`. Returning ends the prompt as complete."""

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release what the session holds; called once, when it is destroyed."""


class Agent(abc.ABC):
    """An agent adapter: opens sessions.

    A subclass sets `info`, and `capabilities` if it has any to announce. An
    adapter that can be selected by name (`latis-unit --agent NAME`) is
    registered in the `latis.agents` entry-point group, and is built with
    `from_options` from `-o KEY=VALUE` options.
    """

    info: ClassVar[AgentInfo] = AgentInfo("agent", "")
    capabilities: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_options(cls, options: Mapping[str, str], command: Sequence[str] = ()) -> Agent:
        """Build the agent from text options and, for adapters that run one, the
        agent's command line (the words after `--` of `latis-unit`).

        Raises:
            ValueError: an option is unknown, a value is not valid, or a
                command was given to an adapter that runs none.
        """
        if options:
            raise ValueError(f"{cls.info.name} agent takes no options, got {sorted(options)}")
        _no_command(cls.info.name, command)
        return cls()

    async def start(self) -> None:  # noqa: B027 (optional hook)
        """Start what the agent needs, once, before the unit serves anyone.

        Optional. The unit's `hello` is sent after it, so an adapter that
        learns the agent's own name and version here may set `info`.
        """

    @abc.abstractmethod
    async def open_session(self, session_id: str, options: Mapping[str, Any]) -> AgentSession:
        """Start a session; `options` come from `session.create`.

        Raises:
            ValueError: an option is unknown or its value wrong (the unit answers
                `bad_message` with the message: say which and what is expected).
        """

    async def resume_session(self, session_id: str) -> AgentSession:
        """Load a session this unit does not hold (say, after the unit restarted).

        Raises:
            SessionNotFound: there is no such session (the default).
        """
        raise SessionNotFound(session_id)
