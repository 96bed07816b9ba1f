"""Plugins by name: agents, transports, provisioners and strategies from entry points.

Entry points are the one list: the built-in plugins register in the same
groups as third-party ones (`latis.agents`, `latis.transports`,
`latis.provisioners`, `latis.strategies`), in latis's own pyproject.toml. Names
are looked up first among latis's own entry points (one small file, ~0.1 ms,
read without importing importlib.metadata),
and only then across every installed distribution (~30 ms), each group once
per process: `latis-unit` starts quickly and config parsing never rescans.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

from latis_core._plugins.agent import Agent

__all__ = [
    "SCHEMES",
    "agent_names",
    "dialer_from_url",
    "listener_from_url",
    "load_agent",
    "load_placement",
    "load_provisioner",
    "load_strategy",
    "load_transport",
    "make_agent",
    "plugin_names",
    "provisioner_names",
    "strategy_names",
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


class _OwnEntry(NamedTuple):
    """One of latis's own entry points, read without importlib.metadata."""

    name: str
    value: str
    group: str

    def load(self) -> Any:
        module, _, attribute = self.value.partition(":")
        found: Any = importlib.import_module(module.strip())
        for part in filter(None, attribute.strip().split(".")):
            found = getattr(found, part)
        return found


def _own_file() -> str | None:
    """latis's entry_points.txt: in the first latis-*.dist-info on sys.path (what
    `importlib.metadata.distribution` finds), without importing it (~25 ms, a tenth
    of a short CLI command)."""
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")) and (
                name.split("-", 1)[0].lower() == DISTRIBUTION
            ):
                path = os.path.join(folder or ".", name, "entry_points.txt")
                return path if os.path.isfile(path) else None
    return None


def _parse_entry_points(text: str) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = groups.setdefault(line[1:-1].strip(), {})
        elif current is not None and "=" in line:
            name, _, value = line.partition("=")
            current[name.strip()] = value.strip()
    return groups


@functools.cache
def _own_groups() -> dict[str, dict[str, str]] | None:
    path = _own_file()
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return _parse_entry_points(f.read())
    except OSError:
        return None


@functools.cache
def _own(group: str) -> dict[str, Any]:
    groups = _own_groups()
    if groups is not None:
        return {name: _OwnEntry(name, value, group)
                for name, value in groups.get(group, {}).items()}
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        found = distribution(DISTRIBUTION).entry_points
    except PackageNotFoundError:  # run from a source tree that is not installed
        return {}
    return {ep.name: ep for ep in found if ep.group == group}


@functools.cache
def _installed(group: str) -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points

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
            + ", ".join(f"{s}:" if s in ("local", "unix") else f"{s}://" for s in SCHEMES
                        if _has(SCHEMES[s], attribute))
        )
    cls = getattr(load_transport(name), attribute, None)
    if cls is None:
        raise ValueError(f"transport {name!r} cannot {ability} ({url!r})")
    try:
        return name, cls.from_url(url)
    except ValueError as exc:
        if url in str(exc):
            raise
        raise ValueError(f"{url!r}: {exc}") from None  # (urllib's "Invalid IPv6 URL")


def _has(name: str, attribute: str) -> bool:
    """Whether transport `name` has a DIALER or LISTENER (said yes when it cannot load:
    the error that follows says why)."""
    try:
        return getattr(load_transport(name), attribute, None) is not None
    except (ImportError, LookupError):
        return True


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


#: Import names whose pip package is named otherwise.
_PIP_NAMES = {"trio_asyncio": "trio-asyncio", "trio_websocket": "trio-websocket"}

#: The entry-point group of each kind of plugin.
GROUPS = {"agents": "latis.agents", "transports": "latis.transports",
          "provisioners": "latis.provisioners"}


def plugin_problems() -> dict[str, dict[str, dict[str, str]]]:
    """The plugins that do not load: kind -> name -> `reason` and `fix`.

    Each plugin is imported (once per process); one that raises is reported,
    never raised: a broken third-party plugin must not break the others.
    """
    found: dict[str, dict[str, dict[str, str]]] = {}
    for kind, group in GROUPS.items():
        for name in plugin_names(group):
            try:
                _find(group, name, kind)
            except ModuleNotFoundError as exc:
                module = (exc.name or "?").partition(".")[0]
                package = _PIP_NAMES.get(module, module)
                found.setdefault(kind, {})[name] = {
                    "reason": f"missing module {module!r}",
                    "fix": f"pip install {package} (or reinstall latis: pip install latis)",
                }
            except Exception as exc:
                found.setdefault(kind, {})[name] = {
                    "reason": f"{type(exc).__name__}: {exc}",
                    "fix": "reinstall the package that provides it, or remove it",
                }
    return found


def make_agent(
    name: str, options: Mapping[str, str] | None = None, command: Sequence[str] = ()
) -> Agent:
    """Build agent `name` from text options (and the agent's command line, if it runs one).

    Raises:
        LookupError: unknown agent.
        ValueError: a bad option, or a command it cannot take.
    """
    return load_agent(name).from_options(dict(options or {}), tuple(command))


def strategy_names() -> list[str]:
    """Every coordination strategy that can be chosen by name (`--strategy`)."""
    return plugin_names("latis.strategies")


def load_strategy(name: str) -> Any:
    """Return the strategy class registered as `name` (see `latis_core._plugins.strategy`).

    Raises:
        LookupError: no strategy has that name (the message lists those that do).
    """
    return _find("latis.strategies", name, "strategy")


def load_placement(name: str) -> Any:
    """Return the placement policy class registered as `name` (`latis.placement`).

    Raises:
        LookupError: no policy has that name (the message lists those that do).
    """
    return _find("latis.placement", name, "placement policy")
