"""Error codes of the wire protocol and the exceptions latis raises.

Our exception hierarchy (each error's `code` is what the daemon answers with)::

    LatisError                   (internal)
    ├── ProtocolError            a message broke the protocol (carries .code)
    │   ├── LocalProtocolError   we were about to break it: a bug or a misuse
    │   └── RemoteProtocolError  the other side broke it
    ├── RequestError             the other side answered a request with `error` (its code)
    ├── TransportError           the bytes could not get through (unreachable)
    │   ├── ConnectError         a connection could not be opened
    │   │   ├── AuthRefused      a proof of identity failed in the handshake (unauthorized)
    │   │   ├── UnitNotConnected a unit the controller should talk to is not connected
    │   │   └── CmdrUnreachable  the cmdr daemon is not running and could not be started
    │   └── ConnectionClosed     an open connection ended
    ├── ConfigError              a config file is wrong (latis_core._cmdr.config: each problem
    │                            with file, line, unit and key)
    ├── StateError               the state database refused a change (latis_core._cmdr.state)
    ├── ProvisionError           a provisioner failed (provision_failed)
    ├── AgentError               an agent adapter failed (agent_error): AcpError,
    │                            OpenAIError, ... in latis_agents
    ├── StrategyFailed           a coordination's strategy cannot go on (coordination_failed)
    ├── DaemonRunning            another daemon already holds this user's lock
    └── AlreadyAnswered          a question was answered first by someone else (already_answered)

A caller's own mistakes (a bad argument, a call after close) stay `TypeError`,
`ValueError` or trio's `ClosedResourceError`, as in trio and attrs.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "AgentError",
    "AuthRefused",
    "AlreadyAnswered",
    "CmdrUnreachable",
    "ConnectError",
    "ConnectionClosed",
    "DaemonRunning",
    "ErrorCode",
    "LatisError",
    "LocalProtocolError",
    "ProtocolError",
    "ProvisionError",
    "RemoteProtocolError",
    "RequestError",
    "StrategyFailed",
    "TransportError",
    "UnitNotConnected",
    "error_code",
]


class ErrorCode(enum.StrEnum):
    """The `code` of an `error` message. The values are PROTOCOL.md's."""

    #: A frame that is not text: its payload is not valid UTF-8, or the
    #: connection ended in the middle of a frame.
    BAD_FRAME = "bad_frame"
    #: A frame's declared length is over the receiver's limit. Fatal: the
    #: receiver answers and closes the connection without reading the payload.
    FRAME_TOO_LARGE = "frame_too_large"
    #: The payload is not JSON, not an object, has no `type`, has a field of the
    #: wrong kind, or is a message the sender's role may not send.
    BAD_MESSAGE = "bad_message"
    #: The payload's `type` is not a message type of this protocol.
    UNKNOWN_TYPE = "unknown_type"
    #: A request came before the `hello` handshake finished.
    HANDSHAKE_REQUIRED = "handshake_required"
    #: The two sides speak different protocol versions. Fatal.
    VERSION_MISMATCH = "version_mismatch"
    #: Both sides claim the same role in `hello` (two units, or two cmdrs). Fatal.
    ROLE_MISMATCH = "role_mismatch"
    #: A request names a session the unit does not have.
    UNKNOWN_SESSION = "unknown_session"
    #: A reply names a request that is not in flight, or a resume names a
    #: prompt the unit no longer has.
    UNKNOWN_REQUEST = "unknown_request"
    #: A prompt was sent to a session that is still answering another one.
    SESSION_BUSY = "session_busy"
    #: The sender failed to prove who it is. Fatal: the connection closes.
    UNAUTHORIZED = "unauthorized"
    #: A `hello` without the proof of identity this side asks for; the error
    #: carries the challenge (`auth`), and the controller may send a new
    #: `hello` that answers it.
    AUTH_REQUIRED = "auth_required"
    #: A limit was reached: too many sessions, or a replay asked for chunks the
    #: unit no longer keeps.
    LIMIT_REACHED = "limit_reached"
    #: The agent behind the unit failed while handling the request.
    AGENT_ERROR = "agent_error"
    #: Anything else that went wrong inside the sender: a bug.
    INTERNAL = "internal"
    #: (cmdr daemon) No unit of that name in config.
    UNKNOWN_UNIT = "unknown_unit"
    #: (cmdr daemon) The unit could not be reached (not connected, or the dial failed).
    UNREACHABLE = "unreachable"
    #: (cmdr daemon) The unit's provisioner failed (create, start, stop or destroy).
    PROVISION_FAILED = "provision_failed"
    #: (cmdr daemon) The unit a prompt ran on is gone (its process exited, or
    #: its connection stayed down past `unit_lost_after`): the prompt ended.
    UNIT_LOST = "unit_lost"
    #: (cmdr daemon) A coordination failed as a whole: fewer agents succeeded
    #: than `require` asks, it timed out, or its strategy could not go on.
    COORDINATION_FAILED = "coordination_failed"
    #: (cmdr daemon) A question was answered already; the message names who
    #: answered it and when.
    ALREADY_ANSWERED = "already_answered"
    #: (cmdr daemon) The config file does not read (the message has a line per
    #: problem, with file and line); the config served before stays served.
    BAD_CONFIG = "bad_config"


#: Errors after which the connection is closed; after any other error the
#: connection keeps serving (one bad message costs one error, nothing more).
FATAL_CODES = frozenset(
    {
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.VERSION_MISMATCH,
        ErrorCode.ROLE_MISMATCH,
        ErrorCode.UNAUTHORIZED,
    }
)


class LatisError(Exception):
    """Base class of every error latis raises on purpose."""

    #: The wire code this error is answered with, when a daemon reports it.
    code: ErrorCode | str = ErrorCode.INTERNAL


class ProtocolError(LatisError):
    """A message broke the protocol.

    Attributes:
        code: the `ErrorCode` that answers it on the wire.
        request_id: the id of the request it belongs to, or None.
        message_type: the offending message's `type`, when it could be read.
    """

    code: ErrorCode

    def __init__(
        self,
        message: str,
        code: ErrorCode = ErrorCode.BAD_MESSAGE,
        request_id: object = None,
        message_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.message_type = message_type

    @property
    def message(self) -> str:
        return str(self)


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol: a bug in latis or a misuse of it."""


class RemoteProtocolError(ProtocolError):
    """The other side broke the protocol."""


class RequestError(LatisError):
    """The other side answered a request with an `error` message.

    Attributes:
        code: the error code as sent (an `ErrorCode` when it is one we know).
        request_id: the id of the request that failed.
        auth: the error's `auth` member (a challenge), if it had one.
    """

    def __init__(
        self,
        code: str,
        message: str,
        request_id: object = None,
        auth: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.auth = auth
        try:
            self.code: ErrorCode | str = ErrorCode(code)
        except ValueError:
            self.code = code
        self.message = message
        self.request_id = request_id


class TransportError(LatisError):
    """The bytes could not get through."""

    code = ErrorCode.UNREACHABLE


class ConnectError(TransportError):
    """A connection to a unit could not be opened."""


class ConnectionClosed(TransportError):
    """The connection ended (closed by either side, broken, or gone silent)."""


class AuthRefused(ConnectError):
    """A proof of identity failed in a handshake: the other side refused ours, asked
    for one we cannot give (no token), or gave none that holds (`unauthorized`)."""

    code = ErrorCode.UNAUTHORIZED


class UnitNotConnected(ConnectError):
    """A unit the controller should talk to is not connected (the message says
    how it is reached and what was last seen)."""


class CmdrUnreachable(ConnectError):
    """The cmdr daemon is not running and could not be started (or reached)."""


class ProvisionError(LatisError):
    """A provisioner could not do what was asked (the message says why, naming the unit)."""

    code = ErrorCode.PROVISION_FAILED


class AgentError(LatisError):
    """An agent adapter failed: the agent could not start, or broke its own protocol."""

    code = ErrorCode.AGENT_ERROR


class StrategyFailed(LatisError):
    """A coordination's strategy cannot go on (a lead whose plan never parses, say)."""

    code = ErrorCode.COORDINATION_FAILED


class DaemonRunning(LatisError):
    """Another daemon already holds this user's lock."""


class AlreadyAnswered(LatisError):
    """A question was answered already (the message says by whom and when)."""

    code = ErrorCode.ALREADY_ANSWERED


def error_code(exc: BaseException) -> tuple[str, str]:
    """The wire code and message that report `exc` to a client: the one mapping
    from exceptions to codes (the daemon answers every failed request with it).

    A `LookupError` (no such unit, session or plugin) is `unknown_unit`; any
    other exception that is not a `LatisError` is a bug: `internal`, with its type.
    A group of one exception (however deep: nurseries wrap) is that exception.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, RequestError):
        return str(exc.code), exc.message
    if isinstance(exc, LatisError):
        return str(exc.code), str(exc)
    if isinstance(exc, LookupError):
        return ErrorCode.UNKNOWN_UNIT.value, str(exc.args[0]) if exc.args else repr(exc)
    return ErrorCode.INTERNAL.value, f"{type(exc).__name__}: {exc}"
