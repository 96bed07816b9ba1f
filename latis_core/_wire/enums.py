"""The protocol's small words: its version, request ids, roles and session states.

Apart from the messages (`latis_core._wire.messages`, which re-exports them)
so that what only stores or shows states (the state store, `latis status`)
does not build the messages' twenty attrs classes (~10 ms at start-up).
"""

from __future__ import annotations

import enum
from typing import TypeAlias

__all__ = ["PROTOCOL_VERSION", "RequestId", "Role", "State"]

#: The protocol version this library speaks.
PROTOCOL_VERSION = 1

#: A request id: a JSON integer or string, chosen by the sender of the request.
RequestId: TypeAlias = int | str


class Role(enum.StrEnum):
    """Which end of a connection a side is."""

    #: The controller: sends requests, gets replies.
    CMDR = "cmdr"
    #: A unit: serves an agent's sessions.
    UNIT = "unit"


class State(enum.StrEnum):
    """The state of a session, or of a unit (the busiest of its sessions)."""

    #: Nothing running.
    IDLE = "idle"
    #: A prompt is being answered.
    BUSY = "busy"
    #: The agent asked the human something and waits for the answer.
    WAITING = "waiting"
    #: The session was destroyed (only in `state.update`, once).
    CLOSED = "closed"
