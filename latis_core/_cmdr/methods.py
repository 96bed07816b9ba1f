"""The daemon's management methods (`call`): one handler per method of
`latis_core._cmdr.api`, and the table that maps one to the other.

A handler gets its caller (a protocol client of the daemon, or the web API's
stand-in: anything that is a `Caller`), the request id (to send progress under)
and the parameters, already checked against the method's spec. It returns the
`ack`'s data; an error it raises becomes the request's `error`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from latis_core._cmdr.api import Method
from latis_core._cmdr.config_file import ConfigError
from latis_core._cmdr.coordinate import (
    CoordinationEvent,
    CoordinationSettings,
    check,
    new_coordination_id,
)
from latis_core._cmdr.inbox import parse_item_id
from latis_core._cmdr.state import ConnectionState
from latis_core._errors import ErrorCode, ProvisionError, RequestError
from latis_core._version import __version__
from latis_core._wire.messages import RequestId, ResponseChunk

if TYPE_CHECKING:
    from latis_core._cmdr.controller import Controller
    from latis_core._cmdr.daemon import Daemon

__all__ = ["HANDLERS", "Caller", "Handler", "Running", "call_method", "idle_sessions"]


class Caller(Protocol):
    """Who a method runs for: what the handlers use of a daemon client."""

    @property
    def daemon(self) -> Daemon: ...

    @property
    def ctl(self) -> Controller: ...

    def send(self, message: Any) -> None:
        """Send `message` (progress chunks, events) to the caller."""
        ...

    def cork(self, message: Any) -> None:
        """Queue `message` for the caller: it leaves with the next batch (one
        write for the many events of a coordination's step)."""
        ...


@attrs.define(eq=False)
class Running:
    """A coordination running in the daemon: its events so far, for followers."""

    events: list[dict[str, Any]] = attrs.Factory(list)
    result: dict[str, Any] | None = None
    changed: trio.Event = attrs.Factory(trio.Event)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    def finish(self, result: dict[str, Any]) -> None:
        self.result = result
        self.changed.set()



Handler = Callable[["Caller", RequestId, dict[str, Any]], Awaitable[dict[str, Any]]]


def _param(params: dict[str, Any], name: str) -> str:
    # Checked against the method's spec before the method runs (api.check_params).
    return str(params[name])


async def _status(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    ctl = c.ctl
    # (Its own refresh: a file that no longer reads is reported here, not a failure.)
    try:
        await c.daemon.refresh_config()
        problem = None
    except ConfigError as exc:
        problem = str(exc)
    return {
        "daemon": {
            "pid": os.getpid(),
            "version": __version__,
            "socket": str(c.daemon.paths.socket),
            "config": str(ctl.config.source) if ctl.config.source else None,
            # The served file's error since it changed (what it read before is served).
            "config_error": problem,
        },
        "units": await ctl.status(),
        "listeners": ctl.dialins.status(),
        # Where notifications go (URLs redacted: they hold secrets).
        "notify": {
            "global": ctl.config.notify.describe(),
            "units": {name: rt.config.notify.describe()
                      for name, rt in ctl.units.items() if rt.config.notify is not None},
        },
        "policy": [{k: v for k, v in attrs.asdict(rule).items() if v is not None}
                   for rule in ctl.config.policy],
    }


def _progress(c: Caller, rid: RequestId) -> Callable[[str], None]:
    seq = 0

    def say(text: str) -> None:
        nonlocal seq
        c.send(ResponseChunk(rid, seq, text, "progress"))
        seq += 1

    return say


async def _unit_up(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    name = _param(params, "unit")
    wait = params.get("wait") is not False
    with trio.CancelScope(shield=True):
        rt = await c.ctl.up(name, _progress(c, rid), wait=wait)
    data: dict[str, Any] = {"unit": name, "connection": rt.state}
    if not wait and rt.provisioner is not None:
        with contextlib.suppress(ProvisionError, OSError):
            found = await rt.provisioner.status()
            data |= {"provision": found.state.value, "provision_detail": found.detail}
    return data


async def _unit_down(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    name = _param(params, "unit")
    with trio.CancelScope(shield=True):
        await c.ctl.down(name, _progress(c, rid))
    return {"unit": name, "connection": ConnectionState.DISCONNECTED}


async def _unit_destroy(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    name = _param(params, "unit")
    with trio.CancelScope(shield=True):
        await c.ctl.destroy(name, _progress(c, rid))
    return {"unit": name, "destroyed": True}


async def _unit_orphans(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    return await c.ctl.orphans()


async def _unit_scale(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    name = _param(params, "unit")
    replicas = int(params["replicas"])
    try:
        with trio.CancelScope(shield=True):
            members = await c.ctl.scale(name, replicas, _progress(c, rid))
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None
    return {"unit": name, "replicas": replicas, "members": members}


async def _unit_enroll(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    name = _param(params, "unit")
    try:
        return await c.ctl.dialins.enroll(
            name, params.get("address"), ttl=params.get("ttl"), approval=params.get("approve")
        )
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None


async def _unit_rotate(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    name = _param(params, "unit")
    try:
        return await c.ctl.dialins.enroll(
            name, params.get("address"), ttl=params.get("ttl"), rotate=True
        )
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None


async def _unit_revoke(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return await c.ctl.dialins.revoke(_param(params, "unit"))
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None


async def _unit_pending(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    return {"pending": await c.ctl.dialins.pending()}


async def _unit_accept(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return await c.ctl.dialins.accept(_param(params, "unit"))
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None


async def _unit_reject(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return await c.ctl.dialins.reject(_param(params, "unit"))
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None


async def _config_reload(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    source = c.ctl.config.source
    changed = await c.daemon.refresh_config(force=True)
    return {"config": str(source) if source else None, "units": sorted(c.ctl.units)} | changed


async def _config_use(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    path = params.get("path")
    return await c.daemon.use_config(path if isinstance(path, str) else None)


async def _unit_remove(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    name = _param(params, "unit")
    with trio.CancelScope(shield=True):
        await c.ctl.remove(name)
    return {"unit": name, "removed": True}


async def _agents(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    units = []
    for rt in c.ctl.units.values():
        entry: dict[str, Any] = {"unit": rt.name, "adapter": rt.config.agent,
                                 "connection": rt.state}
        if rt.client is not None:
            entry["agent"] = {"name": rt.client.agent.name, "version": rt.client.agent.version}
            entry["capabilities"] = list(rt.client.capabilities)
        units.append(entry)
    await trio.lowlevel.checkpoint()
    return {"units": units}


async def _session_prune(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    idle = params.get("idle")
    if idle is None:
        idle = c.ctl.config.daemon.session_idle_timeout
    if not isinstance(idle, (int, float)) or idle < 0:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, "params.idle: expected seconds >= 0")
    closed = []
    for sid in idle_sessions(c.daemon, float(idle)):
        await c.ctl.destroy_session(sid)
        closed.append(sid)
    return {"closed": closed, "idle": idle}


async def _session_get(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    sid = _param(params, "session")
    ctl = c.ctl
    row = await ctl.read(ctl.reads.get_session, sid)
    if row is None:
        raise RequestError(ErrorCode.UNKNOWN_SESSION.value, f"no session {sid!r}")
    last = await ctl.read(ctl.reads.last_prompt, sid)
    return {
        "session": sid,
        "unit": row.unit,
        "state": row.state,
        "last_prompt": {"id": last.id, "state": last.state} if last is not None else None,
    }


async def _unit_connect(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    target = _param(params, "target")
    name = params.get("name")
    ctl = c.ctl
    token_file = params.get("token_file")
    if target not in ctl.units:
        try:
            target = ctl.add_address(
                target,
                name if isinstance(name, str) else None,
                token_file if isinstance(token_file, str) else None,
            )
        except (ValueError, ImportError) as exc:
            raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None
    with trio.CancelScope(shield=True):
        rt = await ctl.up(target, _progress(c, rid))
    return {"unit": target, "connection": rt.state, "how": rt.how()}


async def _coordinate(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    seq = 0
    detach = bool(params.get("detach"))
    # `events: false`: the caller wants the result alone (a script's fan-out). The
    # events are still stored, and streamed to whoever follows the coordination.
    streamed = not detach and params.get("events") is not False

    def send(event: CoordinationEvent) -> None:
        nonlocal seq
        data = event.to_dict()
        running.add(data)
        if streamed:
            c.cork(ResponseChunk(rid, seq, "", "event", data))
            seq += 1

    agents = [str(a) for a in params.get("agents") or []]
    options = {str(k): str(v) for k, v in (params.get("options") or {}).items()}
    hops = params.get("max_hops")  # (0 is a bound too: no routing)
    settings = CoordinationSettings(
        strategy=str(params.get("strategy") or "parallel"), options=options,
        require=str(params.get("require") or "all"), timeout=params.get("timeout"),
        agent_timeout=params.get("agent_timeout"), max_hops=3 if hops is None else int(hops),
        count=int(params.get("count") or 0), source=params.get("source"),
        placement=str(params.get("placement") or "capacity"))
    task = _param(params, "task")
    try:
        check(c.ctl, agents, settings)
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None
    cid = new_coordination_id()
    running = c.daemon.coordinations[cid] = Running()

    async def run() -> dict[str, Any]:
        try:
            result = (await c.ctl.coordinate(task, agents, send, settings, cid)).to_dict()
        except ValueError as exc:
            result = {"id": cid, "outcome": "error", "error": str(exc), "agents": []}
        finally:
            c.daemon.coordinations.pop(cid, None)
        running.finish(result)
        return result

    if detach and c.daemon.nursery is not None:
        c.daemon.nursery.start_soon(run)
        return {"id": cid, "outcome": "running", "agents": []}
    return await run()


async def _coordination_follow(
    c: Caller, rid: RequestId, params: dict[str, Any]
) -> dict[str, Any]:
    cid = _param(params, "id")
    running = c.daemon.coordinations.get(cid)
    if running is None:  # ended (or from before this daemon): what was stored
        row = await c.ctl.read(c.ctl.reads.get_coordination, cid)
        if row is None:
            raise RequestError(ErrorCode.UNKNOWN_REQUEST.value, f"no coordination {cid!r}")
        for seq, event in enumerate(row.events):
            c.send(ResponseChunk(rid, seq, "", "event", event))
        return {"id": cid, "outcome": row.state, "final": row.final, "error": row.error,
                "agents": [e for e in row.events if e.get("type") == "ended"]}
    seq = 0
    while True:
        while seq < len(running.events):
            c.send(ResponseChunk(rid, seq, "", "event", running.events[seq]))
            seq += 1
        if running.result is not None:
            return running.result
        await running.changed.wait()


async def _coordination_list(
    c: Caller, rid: RequestId, params: dict[str, Any]
) -> dict[str, Any]:
    rows = await c.ctl.read(c.ctl.reads.list_coordinations, int(params.get("limit") or 50))
    return {"coordinations": [row.to_dict() for row in rows]}


async def _coordination_get(
    c: Caller, rid: RequestId, params: dict[str, Any]
) -> dict[str, Any]:
    cid = _param(params, "id")
    row = await c.ctl.read(c.ctl.reads.get_coordination, cid)
    if row is None:
        raise RequestError(ErrorCode.UNKNOWN_REQUEST.value, f"no coordination {cid!r}")
    return row.to_dict()


async def _daemon_stop(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    c.daemon.stop.set()
    await trio.lowlevel.checkpoint()
    return {"stopping": True, "pid": os.getpid()}


async def _inbox_list(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    return {"items": await c.ctl.inbox_list(bool(params.get("all")))}


async def _inbox_answer(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    item = _param(params, "id")
    try:
        prompt, number = parse_item_id(item)
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None
    by = str(params.get("by") or "inbox")
    with trio.CancelScope(shield=True):
        await c.ctl.answer(prompt, number, _param(params, "answer"), by)
    return {"id": item, "state": "answered", "answered_by": by}


async def _usage(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return await c.ctl.usage(str(params.get("by") or "session"))
    except ValueError as exc:
        raise RequestError(ErrorCode.BAD_MESSAGE.value, str(exc)) from None


async def _web_start(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    from latis_core._cmdr.web.server import start_web

    return await start_web(c.daemon, **params)


async def _web_stop(c: Caller, rid: RequestId, params: dict[str, Any]) -> dict[str, Any]:
    from latis_core._cmdr.web.server import stop_web

    return await stop_web(c.daemon)


#: The method table: one handler per method of `latis_core._cmdr.api` (a test checks).
HANDLERS: dict[Method, Handler] = {
    Method.STATUS: _status,
    Method.UNIT_UP: _unit_up,
    Method.UNIT_DOWN: _unit_down,
    Method.UNIT_DESTROY: _unit_destroy,
    Method.UNIT_ENROLL: _unit_enroll,
    Method.UNIT_ROTATE: _unit_rotate,
    Method.UNIT_REVOKE: _unit_revoke,
    Method.UNIT_PENDING: _unit_pending,
    Method.UNIT_ACCEPT: _unit_accept,
    Method.UNIT_REJECT: _unit_reject,
    Method.UNIT_CONNECT: _unit_connect,
    Method.CONFIG_RELOAD: _config_reload,
    Method.CONFIG_USE: _config_use,
    Method.UNIT_REMOVE: _unit_remove,
    Method.UNIT_ORPHANS: _unit_orphans,
    Method.UNIT_SCALE: _unit_scale,
    Method.AGENTS_LIST: _agents,
    Method.SESSION_GET: _session_get,
    Method.SESSION_PRUNE: _session_prune,
    Method.COORDINATE: _coordinate,
    Method.COORDINATION_LIST: _coordination_list,
    Method.COORDINATION_GET: _coordination_get,
    Method.COORDINATION_FOLLOW: _coordination_follow,
    Method.DAEMON_STOP: _daemon_stop,
    Method.INBOX_LIST: _inbox_list,
    Method.INBOX_ANSWER: _inbox_answer,
    Method.USAGE: _usage,
    Method.WEB_START: _web_start,
    Method.WEB_STOP: _web_stop,
}


#: Methods that read the config themselves (or need none): no refresh before them.
_OWN_CONFIG = {Method.CONFIG_RELOAD, Method.CONFIG_USE, Method.DAEMON_STOP, Method.STATUS}


async def call_method(
    c: Caller, name: Method, rid: RequestId, params: dict[str, Any]
) -> dict[str, Any]:
    """Run method `name` of the table for `c`: a protocol client, or the web API's
    caller (anything with `daemon`, `ctl` and `send`). `params` are checked already."""
    if name not in _OWN_CONFIG:
        await c.daemon.refresh_config()
    return await HANDLERS[name](c, rid, params)



def idle_sessions(daemon: Daemon, idle: float) -> list[str]:
    """The open sessions with no prompt running, and none ended for `idle` seconds."""
    ctl = daemon.controller
    state = ctl.reads
    now = time.time()
    found = []
    last_prompts = state.last_prompts()  # one query, not one per session
    for session in state.list_sessions(None):
        held = ctl.sessions.get(session.id)
        if held is not None and held.state != "idle":
            continue
        last = last_prompts.get(session.id)
        if last is not None and last.ended_at is None:
            continue  # a prompt runs (or was cut off and may be resumed)
        since = max(session.created_at, last.ended_at or 0.0) if last else session.created_at
        if now - since >= idle:
            found.append(session.id)
    return found


