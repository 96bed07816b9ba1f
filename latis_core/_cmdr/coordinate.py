"""Coordination: one task to several units' agents at once, their events as they come.

Each agent gets a session of its own (an agent named twice gets two sessions,
told apart by its label: `fast`, `fast#2`); every prompt runs in the controller,
so it is stored and can be followed like any other. Events go to `on_event` in
the order they arrive: `started` (with the session), `chunk`s, `input` when an
agent asks something (the prompt waits for an answer from elsewhere: `latis
attach`), and one `ended` per agent with its outcome. One agent failing never
stops the others. Cancelling the coordination cancels every prompt it started.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from latis_core._errors import LatisError, error_code

if TYPE_CHECKING:
    from latis_core._cmdr.controller import Controller

__all__ = ["CoordinationEvent", "agent_labels", "coordinate"]


@attrs.frozen
class CoordinationEvent:
    """Something that happened to one agent of a coordination."""

    #: "started", "chunk", "input" or "ended".
    type: str
    #: The agent's label (its unit, with `#N` when the unit is named again).
    agent: str
    unit: str
    session: str | None = None
    text: str = ""
    #: ("ended") "complete", "cancelled" or "error".
    outcome: str | None = None
    #: ("ended" with "error") what failed.
    error: str | None = None
    #: (chunks) the chunk's kind, None for plain text.
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data (members that are unset are left out)."""
        return {k: v for k, v in attrs.asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoordinationEvent:
        """Read an event written by `to_dict` (unknown members are ignored)."""
        names = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def agent_labels(units: Sequence[str]) -> list[str]:
    """A label per entry: the unit's name, with `#N` from its second mention on."""
    seen: dict[str, int] = {}
    labels = []
    for unit in units:
        seen[unit] = seen.get(unit, 0) + 1
        labels.append(unit if seen[unit] == 1 else f"{unit}#{seen[unit]}")
    return labels


async def coordinate(
    controller: Controller,
    task: str,
    units: Sequence[str],
    on_event: Callable[[CoordinationEvent], None],
) -> list[CoordinationEvent]:
    """Send `task` to each unit's agent in its own session; return each one's `ended` event.

    Raises:
        ValueError: no units were named.
    """
    if not units:
        raise ValueError("coordinate needs at least one unit")
    labels = agent_labels(units)
    ended: dict[str, CoordinationEvent] = {}
    running: dict[str, int] = {}

    async def one(label: str, unit: str) -> None:
        session: str | None = None
        outcome, error = "error", None
        try:
            created = await controller.create_session(unit)
            session = str(created["session"])
            on_event(CoordinationEvent("started", label, unit, session))
            record = await controller.start_prompt(session, task)
            running[label] = record.id
            async for kind, payload in controller.follow(record.id):
                if kind == "chunk":
                    on_event(CoordinationEvent("chunk", label, unit, session, payload.text,
                                               kind=payload.kind))
                elif kind == "input":
                    on_event(CoordinationEvent("input", label, unit, session, payload.question))
                else:
                    outcome = {"complete": "complete", "cancelled": "cancelled"}.get(
                        payload.get("outcome"), "error")
                    if outcome == "error":
                        error = f"{payload.get('code')}: {payload.get('message')}"
        except (LatisError, LookupError, OSError) as exc:
            # One agent failing (unknown unit, unreachable, the agent's error)
            # must not stop the others.
            error = error_code(exc)[1]
        finally:
            running.pop(label, None)
        event = CoordinationEvent("ended", label, unit, session, outcome=outcome, error=error)
        ended[label] = event
        on_event(event)

    try:
        async with trio.open_nursery() as nursery:
            for label, unit in zip(labels, units, strict=True):
                nursery.start_soon(one, label, unit)
    finally:
        # Cancelled (the caller went away, or Ctrl-C): stop what still runs.
        with trio.CancelScope(shield=True):
            for prompt_id in list(running.values()):
                await controller.cancel(prompt_id)
    return [ended[label] for label in labels]
