"""What the state file holds, as Python values: the rows `StateDB` returns, the
states a connection and a prompt go through, and how a row of each table reads
(the SELECT and the function that turns its tuple into a row).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, NamedTuple

from latis_core._wire.enums import RequestId
from latis_core._wire.enums import State as SessionState

if TYPE_CHECKING:
    from latis_core._wire.auth import Enrollment

__all__ = [
    "COORDINATION_SELECT",
    "INPUT_SELECT",
    "PROMPT_SELECT",
    "SESSION_SELECT",
    "UNIT_SELECT",
    "ChunkRow",
    "ConnectionRow",
    "ConnectionState",
    "CoordinationRow",
    "EnrollmentRow",
    "InputRow",
    "PromptRow",
    "PromptState",
    "SessionRow",
    "TranscriptEntry",
    "UnitRow",
    "chunk_row",
    "coordination_row",
    "input_row",
    "json_column",
    "prompt_row",
    "session_row",
    "unit_row",
]


class ConnectionState(enum.StrEnum):
    """How the controller is connected to a unit."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: Not connected, and not trying (the unit is down, or was never reached).
    DISCONNECTED = "disconnected"
    #: Was connected; the unit stopped answering (missed heartbeats).
    UNREACHABLE = "unreachable"


class PromptState(enum.StrEnum):
    """Where a prompt is: running, or how it ended."""

    RUNNING = "running"
    #: `response.complete`.
    COMPLETE = "complete"
    #: `response.cancelled`, or its session closed while it ran.
    CANCELLED = "cancelled"
    #: `error`.
    ERROR = "error"


class UnitRow(NamedTuple):
    """A unit. `id` tells apart units that had the same name at different times."""

    id: int
    name: str
    #: The provisioner's type ("process", "container"), or None for a unit
    #: that is only dialed or accepted.
    provisioner: str | None
    config: dict[str, Any]
    created_at: float
    updated_at: float
    destroyed_at: float | None


class ConnectionRow(NamedTuple):
    """How a unit is connected."""

    unit: str
    state: ConnectionState
    #: What carries it, for people: "unix:/run/…/u1.sock", "dial ssh://host".
    transport: str
    #: When `state` last changed.
    since: float
    #: When `set_connection` was last called for the unit (a heartbeat, say).
    last_seen: float
    error: str | None


class SessionRow(NamedTuple):
    """A session of a unit (its id is the unit's session id)."""

    id: str
    unit: str
    state: SessionState
    created_at: float
    closed_at: float | None
    #: `UnitRow.id` of the unit it belongs to.
    unit_id: int


class PromptRow(NamedTuple):
    """A prompt sent to a session, and how it ended."""

    id: int
    session: str
    #: The id the prompt was sent with on the unit's connection.
    request_id: RequestId
    text: str
    state: PromptState
    started_at: float
    ended_at: float | None
    #: How many chunks the unit said the prompt produced (None while it runs).
    chunks: int | None
    #: "code: message" for a prompt that ended in an error.
    error: str | None


class ChunkRow(NamedTuple):
    """One chunk of a reply."""

    prompt: int
    seq: int
    text: str
    kind: str | None
    data: dict[str, Any] | None


class InputRow(NamedTuple):
    """A question the agent asked during a prompt, and the answer if there is one."""

    prompt: int
    number: int
    question: str
    options: tuple[str, ...]
    kind: str | None
    answer: str | None
    asked_at: float
    answered_at: float | None


class CoordinationRow(NamedTuple):
    """A stored coordination: what was asked, how, how it ended, and its events."""

    id: str
    task: str
    strategy: str
    #: The settings it ran with (options, require, timeouts, max_hops).
    settings: dict[str, Any]
    #: The units named, in order (a unit named twice is listed twice).
    units: list[str]
    #: running, complete, error or cancelled.
    state: str
    final: str | None
    error: str | None
    started_at: float
    ended_at: float | None
    #: Every event but the chunks, in order (`CoordinationEvent.to_dict`).
    events: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return self._asdict()


class TranscriptEntry(NamedTuple):
    """One prompt of a session's transcript, with its reply and questions."""

    prompt: PromptRow
    chunks: list[ChunkRow]
    inputs: list[InputRow]

    @property
    def answer(self) -> str:
        """The answer's text: the chunks without a `kind`, in order."""
        return "".join(chunk.text for chunk in self.chunks if chunk.kind is None)


class EnrollmentRow(NamedTuple):
    """An enrollment as the state holds it (`StateDB.enrollment`)."""

    #: The unit's name.
    unit: str
    #: Its id and secret (the secret empty when retired or listed).
    enrollment: Enrollment
    #: "new" (never used), "pending" (waits for approval), "active", or "retired".
    state: str
    #: When a `new` one stops being usable, or None.
    expires_at: float | None
    #: Where and when it was first used.
    seen_from: str | None
    seen_at: float | None
    #: Why it was retired (revoked, rejected, replaced, rotated, destroyed), or None.
    retired: str | None = None


# -- reading a row of each table ----------------------------------------------------

UNIT_SELECT = (
    "SELECT id, name, provisioner, config, created_at, updated_at, destroyed_at FROM units"
)
SESSION_SELECT = (
    "SELECT s.id, u.name, s.state, s.created_at, s.closed_at, s.unit"
    " FROM sessions s JOIN units u ON u.id = s.unit"
)
PROMPT_SELECT = (
    "SELECT id, session, request_id, text, state, started_at, ended_at, chunks, error FROM prompts"
)
INPUT_SELECT = (
    "SELECT i.prompt, i.number, i.question, i.options, i.kind, i.answer, i.asked_at,"
    " i.answered_at FROM inputs i"
)

COORDINATION_SELECT = (
    "SELECT id, task, strategy, settings, units, state, final, error, started_at, ended_at"
    " FROM coordinations"
)


def json_column(text: str | bytes) -> Any:
    """A JSON column's value. orjson is imported on first use, here and in the
    store: with what it imports itself (uuid, dataclasses, inspect) it took
    longer than `latis status` takes to read 10,000 units that have no sessions."""
    import orjson

    return orjson.loads(text)


def unit_row(row: Any) -> UnitRow:
    id, name, provisioner, config, created_at, updated_at, destroyed_at = row
    return UnitRow(
        id, name, provisioner, json_column(config), created_at, updated_at, destroyed_at
    )


def session_row(row: Any) -> SessionRow:
    id, unit, state, created_at, closed_at, unit_id = row
    return SessionRow(id, unit, SessionState(state), created_at, closed_at, unit_id)


def prompt_row(row: Any) -> PromptRow:
    id, session, request_id, text, state, started_at, ended_at, chunks, error = row
    return PromptRow(
        id,
        session,
        json_column(request_id),
        text,
        PromptState(state),
        started_at,
        ended_at,
        chunks,
        error,
    )


def chunk_row(row: Any) -> ChunkRow:
    prompt, seq, text, kind, data = row
    return ChunkRow(prompt, seq, text, kind, None if data is None else json_column(data))


def coordination_row(row: Any, events: list[dict[str, Any]]) -> CoordinationRow:
    id, task, strategy, settings, units, state, final, error, started_at, ended_at = row
    return CoordinationRow(
        id, task, strategy, json_column(settings), json_column(units), state, final, error,
        started_at, ended_at, events,
    )


def input_row(row: Any) -> InputRow:
    prompt, number, question, options, kind, answer, asked_at, answered_at = row
    return InputRow(
        prompt,
        number,
        question,
        tuple(json_column(options)),
        kind,
        answer,
        asked_at,
        answered_at,
    )
