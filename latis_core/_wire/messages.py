"""Every message of the protocol, one attrs class per `type` (frozen, but for
`ResponseChunk`: see there).

Each class names its wire `type` in `TYPE`. Field names are the JSON keys;
a field that defaults to None (or an empty container) is left out on the wire
when it has that value. PROTOCOL.md describes each field; the docstrings here
are the short form.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeAlias, get_args

import attrs

from latis_core._wire.enums import PROTOCOL_VERSION, RequestId, Role, State

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "Ack",
    "AgentInfo",
    "Call",
    "Error",
    "Hello",
    "InputReply",
    "InputRequest",
    "Message",
    "Ping",
    "Pong",
    "PromptCancel",
    "PromptSend",
    "RequestId",
    "ResponseCancelled",
    "ResponseChunk",
    "ResponseComplete",
    "Role",
    "SessionCreate",
    "SessionDestroy",
    "SessionResume",
    "State",
    "StateGet",
    "StateSubscribe",
    "StateUpdate",
]


@attrs.frozen
class AgentInfo:
    """The agent behind a unit."""

    name: str
    version: str = ""


@attrs.frozen
class Hello:
    """First message each way. cmdr sends it; the unit answers with its own."""

    TYPE: ClassVar[str] = "hello"
    id: RequestId = 0
    protocol: int = PROTOCOL_VERSION
    role: str = Role.CMDR.value
    #: The unit's name (in the unit's hello).
    unit: str | None = None
    #: The controller's name (in cmdr's hello).
    name: str | None = None
    agent: AgentInfo | None = None
    capabilities: tuple[str, ...] = ()
    #: The largest frame payload the sender accepts, in bytes.
    max_frame: int | None = None
    #: Proof of identity: a challenge, or the answer to one (PROTOCOL.md section 5.4).
    auth: dict[str, Any] | None = None


@attrs.frozen
class SessionCreate:
    """Open a new session on the unit's agent."""

    TYPE: ClassVar[str] = "session.create"
    id: RequestId
    #: Agent-specific options (for example a working directory or a model).
    options: dict[str, Any] | None = None


@attrs.frozen
class SessionResume:
    """Reattach to an existing session, and optionally to its last prompt.

    With `prompt`, the prompt sent with that request id is reattached: the
    unit sends its chunks after `seq` (all of them if `seq` is None), then
    the rest live, under that id.
    """

    TYPE: ClassVar[str] = "session.resume"
    id: RequestId
    session: str
    prompt: RequestId | None = None
    seq: int | None = None


@attrs.frozen
class SessionDestroy:
    """End a session, cancelling its prompt if one runs."""

    TYPE: ClassVar[str] = "session.destroy"
    id: RequestId
    session: str


@attrs.frozen
class Ack:
    """The answer to `session.*`: `data` holds at least `session` and `state`."""

    TYPE: ClassVar[str] = "ack"
    id: RequestId
    data: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class PromptSend:
    """Send text to a session; answered by chunks and one final message."""

    TYPE: ClassVar[str] = "prompt.send"
    id: RequestId
    session: str
    text: str


@attrs.frozen
class PromptCancel:
    """Cancel the streamed request `id` (a prompt or a state subscription). No reply."""

    TYPE: ClassVar[str] = "prompt.cancel"
    id: RequestId


# Not frozen, unlike every other message: attrs' frozen `__init__` sets each
# field through `object.__setattr__`, ~0.5 µs a chunk on Python 3.11 (a sixth of
# what a client spends per chunk), where plain slots take ~0.2. Hashable as the
# frozen ones are; latis never changes a chunk once made, and neither should you.
@attrs.define(unsafe_hash=True)
class ResponseChunk:
    """One piece of a prompt's answer. `seq` counts 0, 1, 2, ... per prompt.

    Treat it as read-only, like every message (it is the one class that is not
    frozen, for speed)."""

    TYPE: ClassVar[str] = "response.chunk"
    id: RequestId
    seq: int
    text: str = ""
    #: None for plain text; otherwise what the chunk is ("tool_call", "plan", ...).
    kind: str | None = None
    #: Structured content of a non-text chunk.
    data: dict[str, Any] | None = None


@attrs.frozen
class ResponseComplete:
    """The prompt finished. `chunks` is how many chunks it sent in all."""

    TYPE: ClassVar[str] = "response.complete"
    id: RequestId
    chunks: int | None = None
    data: dict[str, Any] | None = None


@attrs.frozen
class ResponseCancelled:
    """The streamed request was cancelled. `chunks` is how many were sent first."""

    TYPE: ClassVar[str] = "response.cancelled"
    id: RequestId
    chunks: int | None = None


@attrs.frozen
class StateGet:
    """Ask for the unit's state and its sessions' (or one session's)."""

    TYPE: ClassVar[str] = "state.get"
    id: RequestId
    session: str | None = None


@attrs.frozen
class StateSubscribe:
    """Like `state.get`, then one more `state.update` at every change."""

    TYPE: ClassVar[str] = "state.subscribe"
    id: RequestId
    session: str | None = None


@attrs.frozen
class StateUpdate:
    """The unit's state, and its sessions' (all, or those that changed)."""

    TYPE: ClassVar[str] = "state.update"
    id: RequestId
    state: str
    sessions: dict[str, str] = attrs.field(factory=dict)
    #: (optional; a snapshot of all sessions) what the unit can take: `memory_free`,
    #: `memory_total` (bytes), `cpus`, `sessions`, `max_sessions` (PROTOCOL.md 4.13).
    capacity: dict[str, Any] | None = None


@attrs.frozen
class InputRequest:
    """The agent asks the human something in the middle of prompt `id`."""

    TYPE: ClassVar[str] = "input.request"
    id: RequestId
    #: Numbers the questions of one prompt: 0, 1, 2, ...
    input: int
    question: str
    #: The answers to choose from, if the question has a fixed set.
    options: tuple[str, ...] = ()
    #: "question" (free text) or "permission" (one of `options`).
    kind: str | None = None
    #: What the question is about, for policies and people: `tool`, `tool_kind`,
    #: `path`, `command`, and for a structured question its JSON `schema`.
    data: dict[str, Any] | None = None


@attrs.frozen
class InputReply:
    """The human's answer to question `input` of prompt `id`. No reply."""

    TYPE: ClassVar[str] = "input.reply"
    id: RequestId
    input: int
    text: str


@attrs.frozen
class Ping:
    """Are you there? Either side may send it."""

    TYPE: ClassVar[str] = "ping"
    id: RequestId


@attrs.frozen
class Pong:
    """The answer to `ping`, with its id."""

    TYPE: ClassVar[str] = "pong"
    id: RequestId


@attrs.frozen
class Call:
    """Run a management method of a controller daemon (not of a unit).

    Answered by `ack` (its `data` is the result), after any number of
    `response.chunk`s with `kind` "progress" for long work. A unit answers
    `unknown_type`: it has no methods.
    """

    TYPE: ClassVar[str] = "call"
    id: RequestId
    method: str
    params: dict[str, Any] | None = None


@attrs.frozen
class Error:
    """A request failed, or a message was refused. `id` is None when unknown."""

    TYPE: ClassVar[str] = "error"
    id: RequestId | None
    code: str
    message: str
    #: With `auth_required`: the challenge to answer in a new `hello`.
    auth: dict[str, Any] | None = None
    #: With `limit_reached` from a busy listener, before any `hello`: seconds to
    #: wait before dialing again.
    retry_after: float | None = None


Message: TypeAlias = (
    Hello
    | SessionCreate
    | SessionResume
    | SessionDestroy
    | Ack
    | PromptSend
    | PromptCancel
    | ResponseChunk
    | ResponseComplete
    | ResponseCancelled
    | StateGet
    | StateSubscribe
    | StateUpdate
    | InputRequest
    | InputReply
    | Ping
    | Pong
    | Call
    | Error
)

#: Every message class, by its wire `type`.
MESSAGE_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in get_args(Message)}
