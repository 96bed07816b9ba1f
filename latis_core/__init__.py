"""latis_core: the latis protocol, the unit server and the library API.

    import latis_core

    async with latis_core.connect_local() as unit:
        session = await unit.create_session()
        async for chunk in session.prompt("hello there"):
            print(chunk.text, end="")

For code that is not async (a notebook, a script), see `latis_core.blocking`.

Names are imported on first use, so that importing one part (the sans-IO
core, say) does not import trio, and the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._agent import Agent as Agent
    from ._agent import AgentSession as AgentSession
    from ._agent import Reply as Reply
    from ._agent import SessionNotFound as SessionNotFound
    from ._auth import Enrollment as Enrollment
    from ._client import PromptStream as PromptStream
    from ._client import Session as Session
    from ._client import StateStream as StateStream
    from ._client import UnitClient as UnitClient
    from ._client import connect as connect
    from ._client import connect_agent as connect_agent
    from ._client import connect_local as connect_local
    from ._client import unit_command as unit_command
    from ._codec import decode as decode
    from ._codec import encode as encode
    from ._config import Config as Config
    from ._config import ConfigError as ConfigError
    from ._config import DaemonConfig as DaemonConfig
    from ._config import PluginConfig as PluginConfig
    from ._config import UnitConfig as UnitConfig
    from ._config import default_config as default_config
    from ._config import find_config as find_config
    from ._config import load_config as load_config
    from ._config import parse_config as parse_config
    from ._connection import CLOSED as CLOSED
    from ._connection import NEED_DATA as NEED_DATA
    from ._connection import Connection as Connection
    from ._connection import Violation as Violation
    from ._controller import Controller as Controller
    from ._controller import open_controller as open_controller
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
    from ._messages import Call as Call
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
    from ._paths import Paths as Paths
    from ._paths import paths as paths
    from ._peer import Peer as Peer
    from ._peer import ReplyStream as ReplyStream
    from ._peer import open_peer as open_peer
    from ._provision import MemoryResources as MemoryResources
    from ._provision import ProvisionContext as ProvisionContext
    from ._provision import Provisioner as Provisioner
    from ._provision import ProvisionError as ProvisionError
    from ._provision import ProvisionState as ProvisionState
    from ._provision import ProvisionStatus as ProvisionStatus
    from ._provision import Resources as Resources
    from ._pyagent import PythonAgent as PythonAgent
    from ._registry import agent_names as agent_names
    from ._registry import dialer_from_url as dialer_from_url
    from ._registry import listener_from_url as listener_from_url
    from ._registry import load_agent as load_agent
    from ._registry import make_agent as make_agent
    from ._state import StateStore as StateStore
    from ._tls import CertificateAuthority as CertificateAuthority
    from ._transport import Dialer as Dialer
    from ._transport import Listener as Listener
    from ._unit import Unit as Unit
    from ._unit import dial_cmdr as dial_cmdr
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
    "agent_names",
    "AgentInfo",
    "AgentSession",
    "Call",
    "Config",
    "ConfigError",
    "connect",
    "connect_agent",
    "connect_local",
    "ConnectError",
    "Connection",
    "ConnectionClosed",
    "Controller",
    "DaemonConfig",
    "decode",
    "default_config",
    "Dialer",
    "EchoAgent",
    "encode",
    "encode_frame",
    "Error",
    "ErrorCode",
    "find_config",
    "FrameDecoder",
    "Hello",
    "InputReply",
    "InputRequest",
    "LatisError",
    "Listener",
    "load_agent",
    "load_config",
    "LocalProtocolError",
    "make_agent",
    "MemoryResources",
    "Message",
    "open_controller",
    "open_peer",
    "open_unit",
    "parse_config",
    "paths",
    "Paths",
    "Peer",
    "Ping",
    "PluginConfig",
    "Pong",
    "PromptCancel",
    "PromptSend",
    "PromptStream",
    "ProtocolError",
    "ProvisionContext",
    "Provisioner",
    "ProvisionError",
    "ProvisionState",
    "PythonAgent",
    "ProvisionStatus",
    "RemoteProtocolError",
    "Reply",
    "ReplyStream",
    "RequestError",
    "RequestId",
    "Resources",
    "ResponseCancelled",
    "ResponseChunk",
    "ResponseComplete",
    "Role",
    "serve_unit",
    "Session",
    "SessionCreate",
    "SessionDestroy",
    "SessionNotFound",
    "SessionResume",
    "State",
    "StateGet",
    "StateStore",
    "StateStream",
    "StateSubscribe",
    "StateUpdate",
    "TransportError",
    "Unit",
    "unit_command",
    "UnitClient",
    "UnitConfig",
    "Violation",
    "CertificateAuthority",
    "Enrollment",
    "dial_cmdr",
    "dialer_from_url",
    "listener_from_url",
    "__version__",
]

_WHERE: dict[str, str] = {
    "Config": "._config",
    "UnitConfig": "._config",
    "PluginConfig": "._config",
    "DaemonConfig": "._config",
    "ConfigError": "._config",
    "load_config": "._config",
    "parse_config": "._config",
    "find_config": "._config",
    "default_config": "._config",
    "Controller": "._controller",
    "open_controller": "._controller",
    "StateStore": "._state",
    "Provisioner": "._provision",
    "ProvisionContext": "._provision",
    "ProvisionError": "._provision",
    "ProvisionState": "._provision",
    "ProvisionStatus": "._provision",
    "Resources": "._provision",
    "MemoryResources": "._provision",
    "Paths": "._paths",
    "paths": "._paths",
    "Agent": "._agent",
    "AgentSession": "._agent",
    "Reply": "._agent",
    "SessionNotFound": "._agent",
    "PromptStream": "._client",
    "Session": "._client",
    "StateStream": "._client",
    "UnitClient": "._client",
    "connect": "._client",
    "connect_agent": "._client",
    "PythonAgent": "._pyagent",
    "connect_local": "._client",
    "unit_command": "._client",
    "decode": "._codec",
    "encode": "._codec",
    "CLOSED": "._connection",
    "NEED_DATA": "._connection",
    "Connection": "._connection",
    "Violation": "._connection",
    "EchoAgent": "._echo",
    "ConnectError": "._errors",
    "ConnectionClosed": "._errors",
    "ErrorCode": "._errors",
    "LatisError": "._errors",
    "LocalProtocolError": "._errors",
    "ProtocolError": "._errors",
    "RemoteProtocolError": "._errors",
    "RequestError": "._errors",
    "TransportError": "._errors",
    "DEFAULT_MAX_FRAME": "._frames",
    "FrameDecoder": "._frames",
    "encode_frame": "._frames",
    "PROTOCOL_VERSION": "._messages",
    "Ack": "._messages",
    "AgentInfo": "._messages",
    "Call": "._messages",
    "Error": "._messages",
    "Hello": "._messages",
    "InputReply": "._messages",
    "InputRequest": "._messages",
    "Message": "._messages",
    "Ping": "._messages",
    "Pong": "._messages",
    "PromptCancel": "._messages",
    "PromptSend": "._messages",
    "RequestId": "._messages",
    "ResponseCancelled": "._messages",
    "ResponseChunk": "._messages",
    "ResponseComplete": "._messages",
    "Role": "._messages",
    "SessionCreate": "._messages",
    "SessionDestroy": "._messages",
    "SessionResume": "._messages",
    "State": "._messages",
    "StateGet": "._messages",
    "StateSubscribe": "._messages",
    "StateUpdate": "._messages",
    "Peer": "._peer",
    "ReplyStream": "._peer",
    "open_peer": "._peer",
    "agent_names": "._registry",
    "load_agent": "._registry",
    "make_agent": "._registry",
    "Dialer": "._transport",
    "Listener": "._transport",
    "Unit": "._unit",
    "open_unit": "._unit",
    "serve_unit": "._unit",
    "CertificateAuthority": "._tls",
    "Enrollment": "._auth",
    "dial_cmdr": "._unit",
    "dialer_from_url": "._registry",
    "listener_from_url": "._registry",
    "__version__": "._version",
}


def __getattr__(name: str) -> Any:
    try:
        where = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module 'latis_core' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(where, __name__), name)
    # Tracebacks and reprs say latis_core.ConnectError, not latis_core._errors.ConnectError.
    # (Not for attrs classes: their string annotations resolve in their own module.)
    if (isinstance(value, type) or callable(value)) and not hasattr(value, "__attrs_attrs__"):
        try:
            if getattr(value, "__module__", "").startswith("latis_core._"):
                value.__module__ = __name__
        except (AttributeError, TypeError):
            pass
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
