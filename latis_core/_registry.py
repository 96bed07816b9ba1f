"""Plugins by name: agents, transports and provisioners from entry points.

The built-in ones register in the same entry-point groups as third-party
plugins (`latis.agents`, `latis.transports`, `latis.provisioners`). A name
found among the built-ins is loaded without scanning the installed
distributions, which keeps `latis-unit` quick to start.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from ._agent import Agent

__all__ = ["agent_names", "load_agent", "make_agent", "plugin_names"]

_BUILTIN_AGENTS = {"echo": "latis_core._echo:EchoAgent"}


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


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
    if name in _BUILTIN_AGENTS:
        return _load(_BUILTIN_AGENTS[name])  # type: ignore[no-any-return]
    for ep in entry_points(group="latis.agents"):
        if ep.name == name:
            return ep.load()  # type: ignore[no-any-return]
    raise LookupError(f"unknown agent {name!r} (known: {', '.join(agent_names())})")


def make_agent(name: str, options: Mapping[str, str] | None = None) -> Agent:
    """Build agent `name` from text options.

    Raises:
        LookupError: unknown agent.
        ValueError: a bad option.
    """
    return load_agent(name).from_options(dict(options or {}))
