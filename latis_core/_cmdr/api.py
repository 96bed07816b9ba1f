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

__all__ = ["INT_BOUND", "METHODS", "Method", "MethodSpec", "check_params"]


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
    #: A new secret for a unit that dials in; the old one works until the new one is used.
    UNIT_ROTATE = "unit.rotate"
    #: Retire a unit's enrollments for good and cut its connection.
    UNIT_REVOKE = "unit.revoke"
    #: The units that dialed in and wait for a person to accept them.
    UNIT_PENDING = "unit.pending"
    #: Let a waiting unit in.
    UNIT_ACCEPT = "unit.accept"
    #: Refuse a waiting unit for good.
    UNIT_REJECT = "unit.reject"
    #: Dial an address (`tcp://…`, `ssh://…`) as a unit for this daemon's life.
    UNIT_CONNECT = "unit.connect"
    #: Read the config file again.
    CONFIG_RELOAD = "config.reload"
    #: The config file a client means: served, or the one the daemon serves instead.
    CONFIG_USE = "config.use"
    #: Destroy a unit (see unit.destroy) and forget it; the CLI removes it from config.
    UNIT_REMOVE = "unit.remove"
    #: What provisioners made for units that are not in config (found by tag, label, name).
    UNIT_ORPHANS = "unit.orphans"
    #: Make a unit's group (a provisioner that scales) so many units.
    UNIT_SCALE = "unit.scale"
    #: The agent behind each unit.
    AGENTS_LIST = "agents.list"
    #: One session: its unit, state and last prompt.
    SESSION_GET = "session.get"
    #: Close the open sessions idle past a time (default: `[daemon] session_idle_timeout`).
    SESSION_PRUNE = "session.prune"
    #: One task to several units' agents with a strategy; streams their events.
    COORDINATE = "coordinate"
    #: The latest coordinations.
    COORDINATION_LIST = "coordination.list"
    #: One stored coordination with its events.
    COORDINATION_GET = "coordination.get"
    #: A coordination's events from its start, then live, to its end.
    COORDINATION_FOLLOW = "coordination.follow"
    #: Stop the daemon (units that run by themselves keep running).
    DAEMON_STOP = "daemon.stop"
    #: The questions agents ask, open ones (or all), oldest first.
    INBOX_LIST = "inbox.list"
    #: Answer one question of the inbox, once.
    INBOX_ANSWER = "inbox.answer"
    #: Usage and cost as the agents report them, rolled up.
    USAGE = "usage"
    #: Serve the web dashboard (or say where it is served): its URL with the token.
    WEB_START = "web.start"
    #: Stop serving the web dashboard.
    WEB_STOP = "web.stop"


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
    Method.UNIT_UP: MethodSpec(required=("unit",), optional=("wait",), kinds={"wait": bool},
                               streams=True),
    Method.UNIT_DOWN: MethodSpec(required=("unit",), streams=True),
    Method.UNIT_DESTROY: MethodSpec(required=("unit",), streams=True),
    Method.UNIT_ENROLL: MethodSpec(
        required=("unit",), optional=("address", "ttl", "approve"),
        kinds={"ttl": float, "approve": bool},
    ),
    Method.UNIT_ROTATE: MethodSpec(
        required=("unit",), optional=("address", "ttl"), kinds={"ttl": float}
    ),
    Method.UNIT_REVOKE: MethodSpec(required=("unit",)),
    Method.UNIT_PENDING: MethodSpec(),
    Method.UNIT_ACCEPT: MethodSpec(required=("unit",)),
    Method.UNIT_REJECT: MethodSpec(required=("unit",)),
    Method.UNIT_CONNECT: MethodSpec(
        required=("target",), optional=("name", "token_file"), streams=True
    ),
    Method.CONFIG_RELOAD: MethodSpec(),
    Method.CONFIG_USE: MethodSpec(optional=("path",)),
    Method.UNIT_REMOVE: MethodSpec(required=("unit",), streams=True),
    Method.UNIT_ORPHANS: MethodSpec(),
    Method.UNIT_SCALE: MethodSpec(required=("unit", "replicas"), kinds={"replicas": int},
                                  streams=True),
    Method.AGENTS_LIST: MethodSpec(),
    Method.SESSION_GET: MethodSpec(required=("session",)),
    Method.SESSION_PRUNE: MethodSpec(optional=("idle",), kinds={"idle": float}),
    Method.COORDINATE: MethodSpec(
        required=("task",),
        optional=("agents", "strategy", "options", "require", "timeout", "agent_timeout",
                  "max_hops", "count", "source", "placement", "detach", "events"),
        kinds={"agents": list, "options": dict, "timeout": float, "agent_timeout": float,
               "max_hops": int, "count": int, "detach": bool, "events": bool},
        streams=True,
    ),
    Method.COORDINATION_LIST: MethodSpec(optional=("limit",), kinds={"limit": int}),
    Method.COORDINATION_GET: MethodSpec(required=("id",)),
    Method.COORDINATION_FOLLOW: MethodSpec(required=("id",), streams=True),
    Method.DAEMON_STOP: MethodSpec(),
    Method.INBOX_LIST: MethodSpec(optional=("all",), kinds={"all": bool}),
    Method.INBOX_ANSWER: MethodSpec(required=("id", "answer"), optional=("by",)),
    Method.USAGE: MethodSpec(optional=("by",)),
    Method.WEB_START: MethodSpec(
        optional=("host", "port", "tls", "new_token"),
        kinds={"port": int, "tls": bool, "new_token": bool},
    ),
    Method.WEB_STOP: MethodSpec(),
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
        if value is not None and not _is(value, kind):
            return f"params.{name}: expected {_KIND_NAMES.get(kind, kind.__name__)}"
    return None


#: What a parameter of each kind is called in an error.
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object"}
#: The integers a parameter (or an id in a path) may be: SQLite's, with room to spare.
INT_BOUND = 2**62


def _is(value: Any, kind: type) -> bool:
    """Whether `value` (from JSON) is a `kind`: JSON writes 30 for 30.0, so a number
    may be an integer; true is not a number."""
    if kind is float:
        return type(value) in (int, float) and abs(value) < INT_BOUND
    if kind is int:
        return type(value) is int and abs(value) < INT_BOUND
    return isinstance(value, kind)
