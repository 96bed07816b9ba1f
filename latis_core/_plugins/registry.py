"""Plugins by name: agents, transports and provisioners from entry points.

The built-in ones register in the same entry-point groups as third-party
plugins (`latis.agents`, `latis.transports`, `latis.provisioners`). A name
found among the built-ins is loaded without scanning the installed
distributions, which keeps `latis-unit` quick to start.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from latis_core._plugins.agent import Agent

__all__ = [
    "SCHEMES",
    "agent_names",
    "dialer_from_url",
    "listener_from_url",
    "load_agent",
    "load_provisioner",
    "load_transport",
    "make_agent",
    "plugin_names",
    "provisioner_names",
    "transport_names",
]

_BUILTIN_AGENTS = {
    "echo": "latis_agents.echo:EchoAgent",
    "command": "latis_agents.command:CommandAgent",
    "acp": "latis_agents.acp:AcpAgent",
    "openai": "latis_agents.openai:OpenAIAgent",
    "python": "latis_agents.python:PythonAgent",
}
_BUILTIN_TRANSPORTS = {
    "local": "latis_transports.local",
    "unix": "latis_transports.unix",
    "tcp": "latis_transports.tcp",
    "websocket": "latis_transports.websocket",
    "quic": "latis_transports.quic",
    "ssh": "latis_transports.ssh",
    "container": "latis_transports.container",
}
#: Address schemes and the transport that reads each.
SCHEMES = {
    "local": "local",
    "unix": "unix",
    "tcp": "tcp",
    "ws": "websocket",
    "wss": "websocket",
    "quic": "quic",
    "ssh": "ssh",
    "container": "container",
}
_BUILTIN_PROVISIONERS = {
    "process": "latis_provisioners.process:ProcessProvisioner",
    "container": "latis_provisioners.container:ContainerProvisioner",
}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attr) if attr else loaded


def _find(group: str, name: str, builtins: Mapping[str, str], what: str) -> Any:
    if name in builtins:
        return _load(builtins[name])
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    known = sorted(set(builtins) | set(plugin_names(group)))
    raise LookupError(f"unknown {what} {name!r} (known: {', '.join(known)})")


def plugin_names(group: str) -> list[str]:
    """Names registered in entry-point group `group`, sorted."""
    return sorted({ep.name for ep in entry_points(group=group)})


def agent_names() -> list[str]:
    """Every agent that can be selected by name."""
    return sorted(set(_BUILTIN_AGENTS) | set(plugin_names("latis.agents")))


def load_agent(name: str) -> type[Agent]:
    """Return the agent class registered as `name`.

    Raises:
        LookupError: no agent has that name (the message lists those that do).
    """
    return _find("latis.agents", name, _BUILTIN_AGENTS, "agent")  # type: ignore[no-any-return]


def transport_names() -> list[str]:
    """Every transport type that can be named in config."""
    return sorted(set(_BUILTIN_TRANSPORTS) | set(plugin_names("latis.transports")))


def load_transport(name: str) -> Any:
    """Return the transport module registered as `name` (with DIALER and/or LISTENER).

    Raises:
        LookupError: no transport has that name (the message lists those that do).
    """
    return _find("latis.transports", name, _BUILTIN_TRANSPORTS, "transport")


def _from_url(url: str, attribute: str, ability: str) -> tuple[str, Any]:
    scheme, sep, _ = url.partition(":")
    name = SCHEMES.get(scheme.lower()) if sep else None
    if name is None:
        raise ValueError(
            f"{url!r} is not an address latis knows: expected one of "
            + ", ".join(f"{s}:" if s in ("local", "unix") else f"{s}://" for s in SCHEMES)
        )
    cls = getattr(load_transport(name), attribute, None)
    if cls is None:
        raise ValueError(f"transport {name!r} cannot {ability} ({url!r})")
    return name, cls.from_url(url)


def dialer_from_url(url: str) -> tuple[str, Any]:
    """The transport's name and a dialer for an address (`tcp://h:p`, `unix:PATH`, …).

    Raises:
        ValueError: an unknown scheme, or an address its transport cannot read.
        ImportError: the transport's optional dependencies are not installed.
    """
    return _from_url(url, "DIALER", "dial")


def listener_from_url(url: str) -> tuple[str, Any]:
    """The transport's name and a listener for an address (`tcp://0.0.0.0:7447`, …).

    Raises:
        ValueError: as for `dialer_from_url`.
    """
    return _from_url(url, "LISTENER", "listen")


def provisioner_names() -> list[str]:
    """Every provisioner type that can be named in config."""
    return sorted(set(_BUILTIN_PROVISIONERS) | set(plugin_names("latis.provisioners")))


def load_provisioner(name: str) -> Any:
    """Return the provisioner class registered as `name`.

    Raises:
        LookupError: no provisioner has that name (the message lists those that do).
    """
    return _find("latis.provisioners", name, _BUILTIN_PROVISIONERS, "provisioner")


def make_agent(
    name: str, options: Mapping[str, str] | None = None, command: Sequence[str] = ()
) -> Agent:
    """Build agent `name` from text options (and the agent's command line, if it runs one).

    Raises:
        LookupError: unknown agent.
        ValueError: a bad option, or a command it cannot take.
    """
    return load_agent(name).from_options(dict(options or {}), tuple(command))
