"""The strategy interface: how a coordination's agents work together.

A strategy is a class registered in the entry-point group `latis.strategies`
(`parallel`, `pipeline`, `roundtable`, `lead` are built in). The controller
builds it as `Strategy(options)` (the `--merge-with`, `--rounds`, ... of the
CLI, as strings; unknown or bad ones raise `ValueError`), calls its
`check(labels)` if it has one (the agents' labels: an option that names an
agent who is not there raises `ValueError`, before anything starts), and awaits
`run(team)`. The strategy only decides who gets which text when: the `Team`
runs each prompt in the agent's session, streams its events, stores it,
applies the timeouts and routes `@agent` messages (when `routes` is true).

An agent that fails (its prompt errors, its unit disconnects, it times out)
is reported by the team and left out from then on: `ask` returns None and
`alive()` no longer lists it. The team decides whether the whole task still
succeeds (`--require`); a strategy raises `StrategyFailed` only when it
cannot go on at all (a lead whose plan never parses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

from latis_core._errors import StrategyFailed

__all__ = ["Strategy", "StrategyFailed", "Team"]


class Team(Protocol):
    """The agents of one coordination, by label (`fast`, `fast#2`), as a strategy sees them."""

    #: The task the user gave.
    task: str
    #: Every agent's label, in the order they were named.
    labels: Sequence[str]

    def alive(self) -> list[str]:
        """The labels of the agents that have not failed, in the order named."""
        ...

    async def ask(self, label: str, text: str, *, step: str = "") -> str | None:
        """Prompt one agent (waiting while it is busy); its reply's text, or None if it failed.

        `step` names the step in the events and the record (`round 2`, `plan`).
        """
        ...

    async def ask_each(self, prompts: Mapping[str, str], *, step: str = "") -> dict[str, str]:
        """Prompt several agents at once; the replies of those that did not fail."""
        ...

    def note(self, text: str) -> None:
        """Report something about the coordination itself (a `note` event)."""
        ...


@runtime_checkable
class Strategy(Protocol):
    """How the agents of a coordination work together (see the module docstring)."""

    #: Whether replies may address another agent (`@label text`) and be routed.
    routes: ClassVar[bool]

    def __init__(self, options: Mapping[str, str]) -> None: ...

    async def run(self, team: Team) -> str | None:
        """Drive the team; return the final answer, or None when there is none
        (each agent's answer stands on its own)."""
        ...
