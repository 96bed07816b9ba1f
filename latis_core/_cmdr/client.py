"""The daemon's client: find cmdr, start it on first use (as tmux does), call it, typed.

`open_daemon()` yields a `DaemonClient`: sessions and prompts as on any unit
(the daemon speaks the unit protocol), plus one typed method per management
method of `latis_core._cmdr.api` (names and parameters defined there once).
The `latis` CLI uses nothing else to talk to the daemon; scripts may too.

Two clients that start at once never start two daemons: starting happens under
a lock file, and the daemon itself holds a second lock for its whole life.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latis_core._cmdr.api import Method, check_params
from latis_core._cmdr.pidfile import daemon_pid
from latis_core._errors import CmdrUnreachable, ConnectError
from latis_core._io.unix import is_listening
from latis_core._os.paths import make_private_dir, paths

if TYPE_CHECKING:
    from latis_core._cmdr.coordinate import Coordination, CoordinationEvent, CoordinationSettings
    from latis_core._io.client import Session, StateStream, UnitClient
    from latis_core._wire.messages import StateUpdate

# The protocol stack (trio, the peer, the codec) is imported when a connection is
# made, not with this module: `latis status` without a daemon needs none of it.

__all__ = ["START_TIMEOUT", "DaemonClient", "daemon_pid", "open_daemon", "start_daemon"]

#: Seconds to wait for a daemon we started to listen.
START_TIMEOUT = 15.0

#: What a streaming method's chunks are handed to: (kind, text, data).
OnChunk = Callable[[str | None, str, Any], None]


def _listening(path: str) -> bool:
    return is_listening(path)


def start_daemon(quiet: bool = False) -> int:
    """Start the daemon in the background unless one runs; return its pid.

    Raises:
        CmdrUnreachable: it exited at start, or did not listen in time.
    """
    where = paths()
    make_private_dir(where.run_dir)
    with open(where.run_dir / "cmdr.start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another client may be starting it right now
        pid = daemon_pid()
        if pid is not None and _listening(str(where.socket)):
            return pid
        where.log_dir.mkdir(parents=True, exist_ok=True)
        logged = where.log_dir / "cmdr.log"
        log = open(logged, "ab")  # noqa: SIM115 (handed to the child)
        start = log.seek(0, os.SEEK_END)
        with log:
            child = subprocess.Popen(
                [sys.executable, "-m", "latis_core._cmdr"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if _listening(str(where.socket)) and daemon_pid() is not None:
                if not quiet:
                    print(f"started cmdr (pid {child.pid})", file=sys.stderr)
                return child.pid
            if child.poll() is not None:
                why = _start_error(logged, start)
                exited = f"cmdr exited at start (status {child.returncode})"
                raise CmdrUnreachable(
                    f"{exited}: {why}\n(log: {logged})" if why else f"{exited}; see {logged}"
                )
            time.sleep(0.02)
        raise CmdrUnreachable(f"cmdr did not start within {START_TIMEOUT:g} s")


def _start_error(log: Path, start: int, lines: int = 20) -> str:
    """The error a daemon that exited at start logged last (after byte `start` of
    its log), without the log's line prefix: say a bad config's line. "" if none."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read(1 << 16).decode(errors="replace")
    except OSError:
        return ""
    found = text.rfind(" ERROR ")
    if found < 0:
        return ""
    # "DATE TIME latis-cmdr ERROR logger: message" (and the message's own lines)
    message = text[found + len(" ERROR "):].partition(": ")[2]
    return "\n".join(message.strip().splitlines()[:lines])


class DaemonClient:
    """A connection to the cmdr daemon. Made by `open_daemon`."""

    def __init__(self, unit: UnitClient) -> None:
        #: The connection underneath: the daemon is one unit in front of all units.
        self.unit = unit

    # ---- sessions and prompts, as on any unit ------------------------------------------

    async def create_session(self, unit: str = "local", **options: Any) -> Session:
        """Open a session on `unit` (brought up first if needed); `options` go to the agent."""
        return await self.unit.create_session(unit=unit, **options)

    async def resume_session(self, session_id: str) -> Session:
        """A handle to an existing session, checked with the daemon."""
        return await self.unit.resume_session(session_id)

    def session(self, session_id: str) -> Session:
        """A handle to session `session_id`, not checked (for `reattach`, `destroy`)."""
        from latis_core._io.client import Session

        return Session(self.unit, session_id)

    async def state(self, session: str | None = None) -> StateUpdate:
        """The sessions' states (or one session's)."""
        return await self.unit.state(session)

    def subscribe(self, session: str | None = None) -> StateStream:
        """Follow the sessions' state changes (or one session's)."""
        return self.unit.subscribe(session)

    async def ping(self) -> float:
        """A round trip to the daemon, in seconds."""
        return await self.unit.ping()

    async def aclose(self) -> None:
        """Close the connection now (leaving `open_daemon`'s block does it too)."""
        await self.unit.aclose()

    # ---- management methods ---------------------------------------------------------------

    async def call(
        self, method: Method, on_chunk: OnChunk | None = None, **params: Any
    ) -> dict[str, Any]:
        """Run a daemon method; `on_chunk(kind, text, data)` sees what it streams.

        Raises:
            ValueError: `params` do not fit the method (checked here, before sending).
            RequestError: the daemon answered with an error.
        """
        from latis_core._wire.messages import Ack, Call, ResponseChunk

        params = {k: v for k, v in params.items() if v is not None}
        problem = check_params(method, params)
        if problem is not None:
            raise ValueError(problem)
        peer = self.unit.peer
        # Leaving early (cancelled: Ctrl-C) cancels the call in the daemon and
        # waits, bounded, for its end.
        async with peer.stream(Call(peer.next_id(), method.value, params or None)) as stream:
            async for event in stream:
                if type(event) is ResponseChunk and on_chunk is not None:
                    on_chunk(event.kind, event.text, event.data)
        final = stream.final
        return dict(final.data or {}) if isinstance(final, Ack) else {}

    @staticmethod
    def _progress(say: Callable[[str], None] | None) -> OnChunk | None:
        if say is None:
            return None
        return lambda kind, text, data: say(text) if kind == "progress" else None

    async def status(self) -> dict[str, Any]:
        """Every unit, its connection and sessions; the daemon and its listeners."""
        return await self.call(Method.STATUS)

    async def unit_up(
        self, unit: str, progress: Callable[[str], None] | None = None, *, wait: bool = True
    ) -> dict[str, Any]:
        """Provision (if needed), start and connect `unit`; `progress` hears each step.
        With `wait` False, return once the unit's platform took the request (no
        connection yet)."""
        return await self.call(Method.UNIT_UP, self._progress(progress), unit=unit,
                               wait=None if wait else False)

    async def unit_down(
        self, unit: str, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Disconnect `unit` and stop it, if it is provisioned."""
        return await self.call(Method.UNIT_DOWN, self._progress(progress), unit=unit)

    async def unit_destroy(
        self, unit: str, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Disconnect `unit`, destroy what its provisioner made, close its sessions."""
        return await self.call(Method.UNIT_DESTROY, self._progress(progress), unit=unit)

    async def unit_enroll(
        self,
        unit: str,
        address: str | None = None,
        *,
        ttl: float | None = None,
        approve: bool | None = None,
    ) -> dict[str, Any]:
        """Enroll a unit that dials in: its secret, and the line to run on it.

        `ttl`: seconds within which it must first be used (0: no limit);
        `approve`: its first use waits for `unit_accept`. None: the daemon's config.
        """
        return await self.call(
            Method.UNIT_ENROLL, unit=unit, address=address,
            ttl=None if ttl is None else float(ttl), approve=approve,
        )

    async def unit_rotate(
        self, unit: str, address: str | None = None, *, ttl: float | None = None
    ) -> dict[str, Any]:
        """A new secret for `unit`; the old one works until the new one is first used."""
        return await self.call(
            Method.UNIT_ROTATE, unit=unit, address=address,
            ttl=None if ttl is None else float(ttl),
        )

    async def unit_revoke(self, unit: str) -> dict[str, Any]:
        """Retire `unit`'s enrollments for good and cut its connection now."""
        return await self.call(Method.UNIT_REVOKE, unit=unit)

    async def unit_pending(self) -> list[dict[str, Any]]:
        """The units that dialed in and wait for acceptance: unit, enrollment, from, since."""
        return list((await self.call(Method.UNIT_PENDING))["pending"])

    async def unit_accept(self, unit: str) -> dict[str, Any]:
        """Let `unit`, which waits, in (when it next dials)."""
        return await self.call(Method.UNIT_ACCEPT, unit=unit)

    async def unit_reject(self, unit: str) -> dict[str, Any]:
        """Refuse `unit`, which waits, for good."""
        return await self.call(Method.UNIT_REJECT, unit=unit)

    async def unit_connect(
        self,
        target: str,
        *,
        name: str | None = None,
        token_file: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Dial `target` (a unit's name, or an address) as a unit and connect it."""
        return await self.call(
            Method.UNIT_CONNECT, self._progress(progress),
            target=target, name=name, token_file=token_file,
        )

    async def config_reload(self) -> dict[str, Any]:
        """Make the daemon read its config file again."""
        return await self.call(Method.CONFIG_RELOAD)

    async def config_use(self, path: str | None) -> dict[str, Any]:
        """Tell the daemon which config file this client means (None: the built-in one).

        Returns `config` (the file the daemon serves) and `match` (whether it is
        `path`); the daemon reads the file again first if it changed, and, if it
        served the built-in default, takes `path`.
        """
        return await self.call(Method.CONFIG_USE, path=path)

    async def unit_remove(
        self, unit: str, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Destroy `unit` (as `unit_destroy`) and make the daemon forget it."""
        return await self.call(Method.UNIT_REMOVE, self._progress(progress), unit=unit)

    async def unit_orphans(self) -> dict[str, Any]:
        """What provisioners made for units not in config: `{orphans: [...], errors}`."""
        return await self.call(Method.UNIT_ORPHANS)

    async def unit_scale(
        self, unit: str, replicas: int, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Make `unit`'s group `replicas` units; `{unit, replicas, members}`."""
        return await self.call(Method.UNIT_SCALE, self._progress(progress), unit=unit,
                               replicas=replicas)

    async def agents_list(self) -> dict[str, Any]:
        """The agent behind each unit."""
        return await self.call(Method.AGENTS_LIST)

    async def session_get(self, session: str) -> dict[str, Any]:
        """One session: its unit, state and last prompt."""
        return await self.call(Method.SESSION_GET, session=session)

    async def session_prune(self, idle: float | None = None) -> dict[str, Any]:
        """Close the open sessions idle for `idle` seconds (default: the config's
        `[daemon] session_idle_timeout`); `{closed: [ids], idle}`."""
        return await self.call(Method.SESSION_PRUNE, idle=idle)

    async def coordinate(
        self,
        task: str,
        agents: list[str],
        on_event: Callable[[CoordinationEvent], None] | None = None,
        settings: CoordinationSettings | None = None,
        detach: bool = False,
    ) -> Coordination:
        """Run a coordination in the daemon (see `Controller.coordinate`); `on_event`
        sees each event as it comes (without it, the daemon sends none: the events
        are still stored); returns how it ended. With `detach`, it runs on in the
        daemon: this returns its id at once (outcome "running"; follow it with
        `coordination_follow`)."""
        from latis_core._cmdr.coordinate import (
            Coordination,
            CoordinationEvent,
            CoordinationSettings,
        )

        settings = settings or CoordinationSettings()

        def chunk(kind: str | None, text: str, data: Any) -> None:
            if on_event is not None and kind == "event" and isinstance(data, dict):
                on_event(CoordinationEvent.from_dict(data))

        result = await self.call(
            Method.COORDINATE, chunk, task=task, agents=agents or None, strategy=settings.strategy,
            options=dict(settings.options) or None, require=settings.require,
            timeout=None if settings.timeout is None else float(settings.timeout),
            agent_timeout=None if settings.agent_timeout is None
            else float(settings.agent_timeout),
            max_hops=settings.max_hops, count=settings.count or None, source=settings.source,
            placement=None if settings.placement == "capacity" else settings.placement,
            detach=detach or None, events=None if on_event is not None else False,
        )
        return Coordination.from_dict(result)

    async def coordination_follow(
        self, id: str, on_event: Callable[[CoordinationEvent], None]
    ) -> Coordination:
        """A coordination's events from its start (running or stored), then live, to
        its end; returns how it ended."""
        from latis_core._cmdr.coordinate import Coordination, CoordinationEvent

        def chunk(kind: str | None, text: str, data: Any) -> None:
            if kind == "event" and isinstance(data, dict):
                on_event(CoordinationEvent.from_dict(data))

        return Coordination.from_dict(await self.call(Method.COORDINATION_FOLLOW, chunk, id=id))

    async def coordination_list(self, limit: int = 50) -> dict[str, Any]:
        """The latest coordinations, newest first."""
        return await self.call(Method.COORDINATION_LIST, limit=limit)

    async def coordination_get(self, id: str) -> dict[str, Any]:
        """One stored coordination: task, strategy, settings, outcome and its events."""
        return await self.call(Method.COORDINATION_GET, id=id)

    async def inbox_list(self, all: bool = False) -> dict[str, Any]:
        """The open questions of every unit and session, oldest first (`all`:
        answered ones too): `{"items": [...]}` (PROTOCOL.md §15.1)."""
        return await self.call(Method.INBOX_LIST, all=all or None)

    async def inbox_answer(self, id: str, answer: str, by: str | None = None) -> dict[str, Any]:
        """Answer inbox item `id` (`PROMPT.INPUT`), once; `by` names who answers.

        Raises:
            RequestError: `already_answered` (the message names who and when),
                `unknown_request`, or `bad_message` (not one of the options).
        """
        return await self.call(Method.INBOX_ANSWER, id=id, answer=answer, by=by)

    async def usage(self, by: str | None = None) -> dict[str, Any]:
        """Usage and cost as the agents report them, by session (or unit, agent,
        coordination, day): `{"by", "rows", "unreported"}`."""
        return await self.call(Method.USAGE, by=by)

    async def web_start(
        self, host: str | None = None, port: int | None = None, tls: bool | None = None,
        new_token: bool = False,
    ) -> dict[str, Any]:
        """Serve the web dashboard from the daemon (unless it is served; other
        `host`, `port` or `tls` move it): `{url, login, token_file, tls, ca, started}`,
        where `login` is the URL with the token (docs/web.md)."""
        return await self.call(Method.WEB_START, host=host, port=port, tls=tls,
                               new_token=new_token or None)

    async def web_stop(self) -> dict[str, Any]:
        """Stop serving the web dashboard: `{stopped}` (false: it was not served)."""
        return await self.call(Method.WEB_STOP)

    async def daemon_stop(self) -> dict[str, Any]:
        """Stop the daemon (units that run by themselves keep running)."""
        return await self.call(Method.DAEMON_STOP)


@asynccontextmanager
async def open_daemon(autostart: bool = True) -> AsyncIterator[DaemonClient]:
    """Connect to the daemon (starting it first if it is not running).

    Raises:
        CmdrUnreachable: it does not run (and `autostart` is off), or could not start.
    """
    import trio

    from latis_core._io.client import connect
    from latis_core._io.unix import open_unix
    from latis_core._wire.connection import HEARTBEAT, HEARTBEAT_TIMEOUT

    socket_path = str(paths().socket)
    if not _listening(socket_path):
        if not autostart:
            raise CmdrUnreachable("cmdr is not running (start it: latis daemon start)")
        await trio.to_thread.run_sync(start_daemon)
    try:
        async with open_unix(socket_path) as stream, connect(
            stream, name="latis-cli", label="cmdr", keepalive=HEARTBEAT,
            keepalive_timeout=HEARTBEAT_TIMEOUT,
        ) as client:
            yield DaemonClient(client)
    except CmdrUnreachable:
        raise
    except ConnectError as exc:
        raise CmdrUnreachable(str(exc)) from exc
