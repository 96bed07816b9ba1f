"""Plugins by name: agents, transports, provisioners and strategies from entry points.

Entry points are the one list: the built-in plugins register in the same
groups as third-party ones (`latis.agents`, `latis.transports`,
`latis.provisioners`, `latis.strategies`), in latis's own pyproject.toml. Names
are looked up first among latis's own entry points (one small file, ~0.1 ms),
and only then across every installed distribution (~30 ms), each group once
per process: `latis-unit` starts quickly and config parsing never rescans.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, PackageNotFoundError, distribution, entry_points
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
#: This distribution, whose entry points hold the built-in plugins.
DISTRIBUTION = "latis"


@functools.cache
def _own(group: str) -> dict[str, EntryPoint]:
    try:
        found = distribution(DISTRIBUTION).entry_points
    except PackageNotFoundError:  # run from a source tree that is not installed
        return {}
    return {ep.name: ep for ep in found if ep.group == group}


@functools.cache
def _installed(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def _find(group: str, name: str, what: str) -> Any:
    ep = _own(group).get(name) or _installed(group).get(name)
    if ep is None:
        known = plugin_names(group)
        raise LookupError(f"unknown {what} {name!r} (known: {', '.join(known)})")
    return ep.load()


def plugin_names(group: str) -> list[str]:
    """Names registered in entry-point group `group` (built in or not), sorted."""
    return sorted(set(_own(group)) | set(_installed(group)))


def agent_names() -> list[str]:
    """Every agent that can be selected by name."""
    return plugin_names("latis.agents")


def load_agent(name: str) -> type[Agent]:
    """Return the agent class registered as `name`.

    Raises:
        LookupError: no agent has that name (the message lists those that do).
    """
    return _find("latis.agents", name, "agent")  # type: ignore[no-any-return]


def transport_names() -> list[str]:
    """Every transport type that can be named in config."""
    return plugin_names("latis.transports")


def load_transport(name: str) -> Any:
    """Return the transport module registered as `name` (with DIALER and/or LISTENER).

    Raises:
        LookupError: no transport has that name (the message lists those that do).
    """
    return _find("latis.transports", name, "transport")


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
    return plugin_names("latis.provisioners")


def load_provisioner(name: str) -> Any:
    """Return the provisioner class registered as `name`.

    Raises:
        LookupError: no provisioner has that name (the message lists those that do).
    """
    return _find("latis.provisioners", name, "provisioner")


def make_agent(
    name: str, options: Mapping[str, str] | None = None, command: Sequence[str] = ()
) -> Agent:
    """Build agent `name` from text options (and the agent's command line, if it runs one).

    Raises:
        LookupError: unknown agent.
        ValueError: a bad option, or a command it cannot take.
    """
    return load_agent(name).from_options(dict(options or {}), tuple(command))
