"""latis_core: the latis protocol, the unit server and the library API.

    import latis_core

    async with latis_core.connect_local() as unit:
        session = await unit.create_session()
        async for chunk in session.prompt("hello there"):
            print(chunk.text, end="")

For code that is not async (a notebook, a script), see `latis_core.blocking`.
"""

from __future__ import annotations

from ._agent import Agent as Agent
from ._agent import AgentSession as AgentSession
from ._agent import Reply as Reply
from ._agent import SessionNotFound as SessionNotFound
from ._client import PromptStream as PromptStream
from ._client import Session as Session
from ._client import StateStream as StateStream
from ._client import UnitClient as UnitClient
from ._client import connect as connect
from ._client import connect_local as connect_local
from ._client import unit_command as unit_command
from ._codec import decode as decode
from ._codec import encode as encode
from ._connection import CLOSED as CLOSED
from ._connection import NEED_DATA as NEED_DATA
from ._connection import Connection as Connection
from ._connection import Violation as Violation
from ._echo import EchoAgent as EchoAgent
from ._errors import ConnectError as ConnectError
from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import ErrorCode as ErrorCode
from ._errors import LatisError as LatisError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import RequestError as RequestError
from ._errors import TransportError as TransportError
from ._frames import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
from ._frames import FrameDecoder as FrameDecoder
from ._frames import encode_frame as encode_frame
from ._messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._messages import Ack as Ack
from ._messages import AgentInfo as AgentInfo
from ._messages import Error as Error
from ._messages import Hello as Hello
from ._messages import InputReply as InputReply
from ._messages import InputRequest as InputRequest
from ._messages import Message as Message
from ._messages import Ping as Ping
from ._messages import Pong as Pong
from ._messages import PromptCancel as PromptCancel
from ._messages import PromptSend as PromptSend
from ._messages import RequestId as RequestId
from ._messages import ResponseCancelled as ResponseCancelled
from ._messages import ResponseChunk as ResponseChunk
from ._messages import ResponseComplete as ResponseComplete
from ._messages import Role as Role
from ._messages import SessionCreate as SessionCreate
from ._messages import SessionDestroy as SessionDestroy
from ._messages import SessionResume as SessionResume
from ._messages import State as State
from ._messages import StateGet as StateGet
from ._messages import StateSubscribe as StateSubscribe
from ._messages import StateUpdate as StateUpdate
from ._peer import Peer as Peer
from ._peer import ReplyStream as ReplyStream
from ._peer import open_peer as open_peer
from ._registry import agent_names as agent_names
from ._registry import load_agent as load_agent
from ._registry import make_agent as make_agent
from ._transport import Dialer as Dialer
from ._transport import Listener as Listener
from ._unit import Unit as Unit
from ._unit import open_unit as open_unit
from ._unit import serve_unit as serve_unit
from ._version import __version__ as __version__

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_FRAME",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Ack",
    "Agent",
    "AgentInfo",
    "AgentSession",
    "ConnectError",
    "Connection",
    "ConnectionClosed",
    "Dialer",
    "EchoAgent",
    "Error",
    "ErrorCode",
    "FrameDecoder",
    "Hello",
    "InputReply",
    "InputRequest",
    "LatisError",
    "Listener",
    "LocalProtocolError",
    "Message",
    "Peer",
    "Ping",
    "Pong",
    "PromptCancel",
    "PromptSend",
    "PromptStream",
    "ProtocolError",
    "RemoteProtocolError",
    "ReplyStream",
    "Reply",
    "RequestError",
    "RequestId",
    "ResponseCancelled",
    "ResponseChunk",
    "ResponseComplete",
    "Role",
    "Session",
    "SessionCreate",
    "SessionDestroy",
    "SessionNotFound",
    "SessionResume",
    "State",
    "StateGet",
    "StateStream",
    "StateSubscribe",
    "StateUpdate",
    "TransportError",
    "Unit",
    "UnitClient",
    "Violation",
    "__version__",
    "agent_names",
    "connect",
    "connect_local",
    "decode",
    "encode",
    "encode_frame",
    "load_agent",
    "make_agent",
    "open_peer",
    "open_unit",
    "serve_unit",
    "unit_command",
]


def _fixup_module_metadata() -> None:
    # Tracebacks and reprs say latis_core.ConnectError, not latis_core._errors.ConnectError.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("latis_core._") and hasattr(obj, "__qualname__"):
            try:
                obj.__module__ = "latis_core"
            except (AttributeError, TypeError):
                pass


_fixup_module_metadata()
del _fixup_module_metadata
