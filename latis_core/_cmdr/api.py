"""The daemon's management methods (`call`), each named and described once.

The daemon's method table (`latis_core._cmdr.daemon`) and the typed client
(`latis_core._cmdr.client.DaemonClient`) are both built on `METHODS`: a method
is added here, then handled there and wrapped there; a test checks the three
agree. PROTOCOL.md section 15 documents each.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["METHODS", "Method", "MethodSpec", "check_params"]


class Method(enum.StrEnum):
    """The name of a daemon method, as sent in `call`."""

    #: Every unit, its connection and sessions; the daemon and its listeners.
    STATUS = "status"
    #: Provision (if needed), start and connect one unit.
    UNIT_UP = "unit.up"
    #: Disconnect one unit and stop it (provisioned units).
    UNIT_DOWN = "unit.down"
    #: Disconnect, destroy what the provisioner made, close the unit's sessions.
    UNIT_DESTROY = "unit.destroy"
    #: Enroll a unit that dials in: a fresh secret and the line to run on it.
    UNIT_ENROLL = "unit.enroll"
    #: Dial an address (`tcp://…`, `ssh://…`) as a unit for this daemon's life.
    UNIT_CONNECT = "unit.connect"
    #: Read the config file again.
    CONFIG_RELOAD = "config.reload"
    #: The agent behind each unit.
    AGENTS_LIST = "agents.list"
    #: One session: its unit, state and last prompt.
    SESSION_GET = "session.get"
    #: One task to several units' agents; streams their events.
    COORDINATE = "coordinate"
    #: Stop the daemon (units that run by themselves keep running).
    DAEMON_STOP = "daemon.stop"


@attrs.frozen
class MethodSpec:
    """What a method takes, and whether it streams before its `ack`."""

    #: Parameters that must be given (strings unless `kinds` says otherwise).
    required: tuple[str, ...] = ()
    #: Parameters that may be given.
    optional: tuple[str, ...] = ()
    #: Parameter name -> the Python type its JSON value must have (default str).
    kinds: Mapping[str, type] = attrs.field(factory=dict)
    #: Whether it sends `response.chunk`s (progress, events) before its `ack`.
    streams: bool = False


METHODS: dict[Method, MethodSpec] = {
    Method.STATUS: MethodSpec(),
    Method.UNIT_UP: MethodSpec(required=("unit",), streams=True),
    Method.UNIT_DOWN: MethodSpec(required=("unit",), streams=True),
    Method.UNIT_DESTROY: MethodSpec(required=("unit",), streams=True),
    Method.UNIT_ENROLL: MethodSpec(required=("unit",), optional=("address",)),
    Method.UNIT_CONNECT: MethodSpec(
        required=("target",), optional=("name", "token_file"), streams=True
    ),
    Method.CONFIG_RELOAD: MethodSpec(),
    Method.AGENTS_LIST: MethodSpec(),
    Method.SESSION_GET: MethodSpec(required=("session",)),
    Method.COORDINATE: MethodSpec(
        required=("task", "agents"), kinds={"agents": list}, streams=True
    ),
    Method.DAEMON_STOP: MethodSpec(),
}


def check_params(method: Method, params: Mapping[str, Any]) -> str | None:
    """Say what is wrong with `params` for `method` (`params.NAME: ...`), or None."""
    spec = METHODS[method]
    known = set(spec.required) | set(spec.optional)
    for name in params:
        if name not in known:
            return (
                f"params.{name}: {method} takes no such parameter"
                + (f" (it takes {', '.join(sorted(known))})" if known else "")
            )
    for name in spec.required:
        if params.get(name) in (None, ""):
            return f"params.{name}: required"
    for name, value in params.items():
        kind = spec.kinds.get(name, str)
        if value is not None and not isinstance(value, kind):
            return f"params.{name}: expected {'a string' if kind is str else 'a ' + kind.__name__}"
    return None
