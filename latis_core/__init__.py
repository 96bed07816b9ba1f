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
    from latis_agents.echo import EchoAgent as EchoAgent
    from latis_agents.python import PythonAgent as PythonAgent

    from latis_core._cmdr.a2a import a2a_state as a2a_state
    from latis_core._cmdr.client import DaemonClient as DaemonClient
    from latis_core._cmdr.client import open_daemon as open_daemon
    from latis_core._cmdr.client import start_daemon as start_daemon
    from latis_core._cmdr.config import Config as Config
    from latis_core._cmdr.config import DaemonConfig as DaemonConfig
    from latis_core._cmdr.config import PluginConfig as PluginConfig
    from latis_core._cmdr.config import UnitConfig as UnitConfig
    from latis_core._cmdr.config import default_config as default_config
    from latis_core._cmdr.config import load_config as load_config
    from latis_core._cmdr.config import parse_config as parse_config
    from latis_core._cmdr.config_file import ConfigError as ConfigError
    from latis_core._cmdr.config_file import find_config as find_config
    from latis_core._cmdr.config_names import config_unit_names as config_unit_names
    from latis_core._cmdr.config_write import add_unit as add_unit
    from latis_core._cmdr.config_write import init_text as init_text
    from latis_core._cmdr.config_write import remove_unit as remove_unit
    from latis_core._cmdr.controller import Controller as Controller
    from latis_core._cmdr.controller import open_controller as open_controller
    from latis_core._cmdr.coordinate import Coordination as Coordination
    from latis_core._cmdr.coordinate import CoordinationEvent as CoordinationEvent
    from latis_core._cmdr.coordinate import CoordinationSettings as CoordinationSettings
    from latis_core._cmdr.coordinate import addressed as addressed
    from latis_core._cmdr.coordinate import agent_labels as agent_labels
    from latis_core._cmdr.coordinate import parse_require as parse_require
    from latis_core._cmdr.daemon import run_daemon as run_daemon
    from latis_core._cmdr.notify import redact_url as redact_url
    from latis_core._cmdr.pidfile import daemon_pid as daemon_pid
    from latis_core._cmdr.state import StateError as StateError
    from latis_core._cmdr.state import StateStore as StateStore
    from latis_core._cmdr.usage import session_context as session_context
    from latis_core._errors import AgentError as AgentError
    from latis_core._errors import AlreadyAnswered as AlreadyAnswered
    from latis_core._errors import AuthRefused as AuthRefused
    from latis_core._errors import CmdrUnreachable as CmdrUnreachable
    from latis_core._errors import ConnectError as ConnectError
    from latis_core._errors import ConnectionClosed as ConnectionClosed
    from latis_core._errors import DaemonRunning as DaemonRunning
    from latis_core._errors import ErrorCode as ErrorCode
    from latis_core._errors import LatisError as LatisError
    from latis_core._errors import LocalProtocolError as LocalProtocolError
    from latis_core._errors import ProtocolError as ProtocolError
    from latis_core._errors import RemoteProtocolError as RemoteProtocolError
    from latis_core._errors import RequestError as RequestError
    from latis_core._errors import StrategyFailed as StrategyFailed
    from latis_core._errors import TransportError as TransportError
    from latis_core._errors import UnitNotConnected as UnitNotConnected
    from latis_core._io.client import PromptStream as PromptStream
    from latis_core._io.client import Session as Session
    from latis_core._io.client import StateStream as StateStream
    from latis_core._io.client import UnitClient as UnitClient
    from latis_core._io.client import connect as connect
    from latis_core._io.peer import Peer as Peer
    from latis_core._io.peer import ReplyStream as ReplyStream
    from latis_core._io.peer import open_peer as open_peer
    from latis_core._os.collector import tune_gc as tune_gc
    from latis_core._os.paths import Paths as Paths
    from latis_core._os.paths import paths as paths
    from latis_core._os.tls import CertificateAuthority as CertificateAuthority
    from latis_core._plugins.agent import Agent as Agent
    from latis_core._plugins.agent import AgentSession as AgentSession
    from latis_core._plugins.agent import Reply as Reply
    from latis_core._plugins.agent import SessionNotFound as SessionNotFound
    from latis_core._plugins.provision import MemoryResources as MemoryResources
    from latis_core._plugins.provision import ProvisionContext as ProvisionContext
    from latis_core._plugins.provision import Provisioner as Provisioner
    from latis_core._plugins.provision import ProvisionError as ProvisionError
    from latis_core._plugins.provision import ProvisionState as ProvisionState
    from latis_core._plugins.provision import ProvisionStatus as ProvisionStatus
    from latis_core._plugins.provision import Resources as Resources
    from latis_core._plugins.registry import agent_names as agent_names
    from latis_core._plugins.registry import dialer_from_url as dialer_from_url
    from latis_core._plugins.registry import listener_from_url as listener_from_url
    from latis_core._plugins.registry import load_agent as load_agent
    from latis_core._plugins.registry import load_provisioner as load_provisioner
    from latis_core._plugins.registry import make_agent as make_agent
    from latis_core._plugins.registry import plugin_problems as plugin_problems
    from latis_core._plugins.registry import provisioner_names as provisioner_names
    from latis_core._plugins.registry import strategy_names as strategy_names
    from latis_core._plugins.registry import transport_names as transport_names
    from latis_core._plugins.strategy import Strategy as Strategy
    from latis_core._plugins.strategy import Team as Team
    from latis_core._plugins.transport import Dialer as Dialer
    from latis_core._plugins.transport import Listener as Listener
    from latis_core._unit.dial import dial_cmdr as dial_cmdr
    from latis_core._unit.local import connect_agent as connect_agent
    from latis_core._unit.local import connect_local as connect_local
    from latis_core._unit.local import unit_command as unit_command
    from latis_core._unit.unit import Unit as Unit
    from latis_core._unit.unit import open_unit as open_unit
    from latis_core._unit.unit import serve_unit as serve_unit
    from latis_core._version import __version__ as __version__
    from latis_core._wire.auth import Enrollment as Enrollment
    from latis_core._wire.codec import chunk_of as chunk_of
    from latis_core._wire.codec import decode as decode
    from latis_core._wire.codec import encode as encode
    from latis_core._wire.connection import CLOSED as CLOSED
    from latis_core._wire.connection import NEED_DATA as NEED_DATA
    from latis_core._wire.connection import Connection as Connection
    from latis_core._wire.connection import Violation as Violation
    from latis_core._wire.frames import DEFAULT_MAX_FRAME as DEFAULT_MAX_FRAME
    from latis_core._wire.frames import FrameDecoder as FrameDecoder
    from latis_core._wire.frames import encode_frame as encode_frame
    from latis_core._wire.messages import PROTOCOL_VERSION as PROTOCOL_VERSION
    from latis_core._wire.messages import Ack as Ack
    from latis_core._wire.messages import AgentInfo as AgentInfo
    from latis_core._wire.messages import Call as Call
    from latis_core._wire.messages import Error as Error
    from latis_core._wire.messages import Hello as Hello
    from latis_core._wire.messages import InputReply as InputReply
    from latis_core._wire.messages import InputRequest as InputRequest
    from latis_core._wire.messages import Message as Message
    from latis_core._wire.messages import Ping as Ping
    from latis_core._wire.messages import Pong as Pong
    from latis_core._wire.messages import PromptCancel as PromptCancel
    from latis_core._wire.messages import PromptSend as PromptSend
    from latis_core._wire.messages import RequestId as RequestId
    from latis_core._wire.messages import ResponseCancelled as ResponseCancelled
    from latis_core._wire.messages import ResponseChunk as ResponseChunk
    from latis_core._wire.messages import ResponseComplete as ResponseComplete
    from latis_core._wire.messages import Role as Role
    from latis_core._wire.messages import SessionCreate as SessionCreate
    from latis_core._wire.messages import SessionDestroy as SessionDestroy
    from latis_core._wire.messages import SessionResume as SessionResume
    from latis_core._wire.messages import State as State
    from latis_core._wire.messages import StateGet as StateGet
    from latis_core._wire.messages import StateSubscribe as StateSubscribe
    from latis_core._wire.messages import StateUpdate as StateUpdate

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
    "config_unit_names",
    "connect",
    "connect_agent",
    "connect_local",
    "ConnectError",
    "AuthRefused",
    "Connection",
    "ConnectionClosed",
    "Controller",
    "DaemonConfig",
    "chunk_of",
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
    "AgentError",
    "AlreadyAnswered",
    "a2a_state",
    "redact_url",
    "session_context",
    "CmdrUnreachable",
    "DaemonRunning",
    "Coordination",
    "CoordinationSettings",
    "addressed",
    "parse_require",
    "StrategyFailed",
    "Strategy",
    "Team",
    "strategy_names",
    "UnitNotConnected",
    "StateError",
    "DaemonClient",
    "open_daemon",
    "start_daemon",
    "daemon_pid",
    "CoordinationEvent",
    "agent_labels",
    "add_unit",
    "remove_unit",
    "init_text",
    "run_daemon",
    "provisioner_names",
    "transport_names",
    "tune_gc",
    "plugin_problems",
    "load_provisioner",
    "__version__",
]

_WHERE: dict[str, str] = {
    "a2a_state": "latis_core._cmdr.a2a",
    "session_context": "latis_core._cmdr.usage",
    "redact_url": "latis_core._cmdr.notify",
    "AlreadyAnswered": "latis_core._errors",
    "Config": "latis_core._cmdr.config",
    "UnitConfig": "latis_core._cmdr.config",
    "PluginConfig": "latis_core._cmdr.config",
    "DaemonConfig": "latis_core._cmdr.config",
    "ConfigError": "latis_core._cmdr.config_file",
    "load_config": "latis_core._cmdr.config",
    "config_unit_names": "latis_core._cmdr.config_names",
    "parse_config": "latis_core._cmdr.config",
    "find_config": "latis_core._cmdr.config_file",
    "default_config": "latis_core._cmdr.config",
    "Controller": "latis_core._cmdr.controller",
    "open_controller": "latis_core._cmdr.controller",
    "StateStore": "latis_core._cmdr.state",
    "Provisioner": "latis_core._plugins.provision",
    "ProvisionContext": "latis_core._plugins.provision",
    "ProvisionError": "latis_core._plugins.provision",
    "ProvisionState": "latis_core._plugins.provision",
    "ProvisionStatus": "latis_core._plugins.provision",
    "Resources": "latis_core._plugins.provision",
    "MemoryResources": "latis_core._plugins.provision",
    "Paths": "latis_core._os.paths",
    "paths": "latis_core._os.paths",
    "tune_gc": "latis_core._os.collector",
    "Agent": "latis_core._plugins.agent",
    "AgentSession": "latis_core._plugins.agent",
    "Reply": "latis_core._plugins.agent",
    "SessionNotFound": "latis_core._plugins.agent",
    "PromptStream": "latis_core._io.client",
    "Session": "latis_core._io.client",
    "StateStream": "latis_core._io.client",
    "UnitClient": "latis_core._io.client",
    "connect": "latis_core._io.client",
    "connect_agent": "latis_core._unit.local",
    "PythonAgent": "latis_agents.python",
    "connect_local": "latis_core._unit.local",
    "unit_command": "latis_core._unit.local",
    "chunk_of": "latis_core._wire.codec",
    "decode": "latis_core._wire.codec",
    "encode": "latis_core._wire.codec",
    "CLOSED": "latis_core._wire.connection",
    "NEED_DATA": "latis_core._wire.connection",
    "Connection": "latis_core._wire.connection",
    "Violation": "latis_core._wire.connection",
    "EchoAgent": "latis_agents.echo",
    "ConnectError": "._errors",
    "ConnectionClosed": "._errors",
    "ErrorCode": "._errors",
    "LatisError": "._errors",
    "LocalProtocolError": "._errors",
    "ProtocolError": "._errors",
    "RemoteProtocolError": "._errors",
    "RequestError": "._errors",
    "TransportError": "._errors",
    "DEFAULT_MAX_FRAME": "latis_core._wire.frames",
    "FrameDecoder": "latis_core._wire.frames",
    "encode_frame": "latis_core._wire.frames",
    "PROTOCOL_VERSION": "latis_core._wire.messages",
    "Ack": "latis_core._wire.messages",
    "AgentInfo": "latis_core._wire.messages",
    "Call": "latis_core._wire.messages",
    "Error": "latis_core._wire.messages",
    "Hello": "latis_core._wire.messages",
    "InputReply": "latis_core._wire.messages",
    "InputRequest": "latis_core._wire.messages",
    "Message": "latis_core._wire.messages",
    "Ping": "latis_core._wire.messages",
    "Pong": "latis_core._wire.messages",
    "PromptCancel": "latis_core._wire.messages",
    "PromptSend": "latis_core._wire.messages",
    "RequestId": "latis_core._wire.messages",
    "ResponseCancelled": "latis_core._wire.messages",
    "ResponseChunk": "latis_core._wire.messages",
    "ResponseComplete": "latis_core._wire.messages",
    "Role": "latis_core._wire.messages",
    "SessionCreate": "latis_core._wire.messages",
    "SessionDestroy": "latis_core._wire.messages",
    "SessionResume": "latis_core._wire.messages",
    "State": "latis_core._wire.messages",
    "StateGet": "latis_core._wire.messages",
    "StateSubscribe": "latis_core._wire.messages",
    "StateUpdate": "latis_core._wire.messages",
    "Peer": "latis_core._io.peer",
    "ReplyStream": "latis_core._io.peer",
    "open_peer": "latis_core._io.peer",
    "agent_names": "latis_core._plugins.registry",
    "load_agent": "latis_core._plugins.registry",
    "make_agent": "latis_core._plugins.registry",
    "plugin_problems": "latis_core._plugins.registry",
    "load_provisioner": "latis_core._plugins.registry",
    "Dialer": "latis_core._plugins.transport",
    "Listener": "latis_core._plugins.transport",
    "Unit": "latis_core._unit.unit",
    "open_unit": "latis_core._unit.unit",
    "serve_unit": "latis_core._unit.unit",
    "CertificateAuthority": "latis_core._os.tls",
    "Enrollment": "latis_core._wire.auth",
    "dial_cmdr": "latis_core._unit.dial",
    "dialer_from_url": "latis_core._plugins.registry",
    "listener_from_url": "latis_core._plugins.registry",
    "AgentError": "latis_core._errors",
    "AuthRefused": "latis_core._errors",
    "CmdrUnreachable": "latis_core._errors",
    "DaemonRunning": "latis_core._errors",
    "UnitNotConnected": "latis_core._errors",
    "StateError": "latis_core._cmdr.state",
    "DaemonClient": "latis_core._cmdr.client",
    "open_daemon": "latis_core._cmdr.client",
    "start_daemon": "latis_core._cmdr.client",
    "daemon_pid": "latis_core._cmdr.pidfile",
    "CoordinationEvent": "latis_core._cmdr.coordinate",
    "Coordination": "latis_core._cmdr.coordinate",
    "CoordinationSettings": "latis_core._cmdr.coordinate",
    "addressed": "latis_core._cmdr.coordinate",
    "parse_require": "latis_core._cmdr.coordinate",
    "StrategyFailed": "latis_core._errors",
    "Strategy": "latis_core._plugins.strategy",
    "Team": "latis_core._plugins.strategy",
    "strategy_names": "latis_core._plugins.registry",
    "agent_labels": "latis_core._cmdr.coordinate",
    "add_unit": "latis_core._cmdr.config_write",
    "remove_unit": "latis_core._cmdr.config_write",
    "init_text": "latis_core._cmdr.config_write",
    "run_daemon": "latis_core._cmdr.daemon",
    "provisioner_names": "latis_core._plugins.registry",
    "transport_names": "latis_core._plugins.registry",
    "__version__": "latis_core._version",
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
            if getattr(value, "__module__", "").startswith(("latis_core._", "latis_agents.")):
                value.__module__ = __name__
        except (AttributeError, TypeError):
            pass
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
