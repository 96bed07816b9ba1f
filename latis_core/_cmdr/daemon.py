"""The cmdr daemon: a controller served over a unix socket to CLIs and scripts.

The daemon speaks the latis protocol in the unit role, so any latis client
(`latis_core.connect`) can use it as if it were one unit in front of all
units:

- `session.create` takes the unit in `options.unit` (default "local") and
  brings the unit up if needed; the session id is the unit's own.
- `prompt.send` runs the prompt in the controller: it goes on when the client
  goes away. `prompt.cancel` cancels it on the unit; closing the connection
  only stops following it.
- `session.resume` with `prompt` (a prompt id of the daemon, from `call`
  `session.get`) and `seq` replays what the client missed from state, then
  follows the prompt live.
- `call` runs a management method (`status`, `unit.up`, ...); long ones send
  progress as `response.chunk`s with kind "progress" before their `ack`.

The socket is created with mode 0600 in a 0700 directory, and a connection
from another uid is refused (SO_PEERCRED) before a single byte is read.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import signal
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from latis_core._cmdr.api import Method, check_params
from latis_core._cmdr.config import Config, default_config, load_config
from latis_core._cmdr.controller import Controller, open_controller
from latis_core._cmdr.methods import Caller, Running, call_method, idle_sessions
from latis_core._cmdr.pidfile import hold_daemon_lock
from latis_core._cmdr.prompts import PromptRecord, lost_with_unit
from latis_core._cmdr.state import PromptState, StateDB
from latis_core._errors import (
    DaemonRunning,
    ErrorCode,
    LatisError,
    RequestError,
    error_code,
)
from latis_core._io.heartbeat import Heartbeats
from latis_core._io.link import HIGH_WATER, Link
from latis_core._io.server import ServerConnection, serve_stream
from latis_core._io.unix import listen_unix
from latis_core._os import collector
from latis_core._os.paths import Paths, paths
from latis_core._version import __version__
from latis_core._wire.connection import Connection, Violation
from latis_core._wire.frames import DEFAULT_MAX_FRAME
from latis_core._wire.messages import (
    PROTOCOL_VERSION,
    Ack,
    AgentInfo,
    Call,
    Error,
    Hello,
    InputReply,
    InputRequest,
    Ping,
    Pong,
    PromptCancel,
    PromptSend,
    RequestId,
    ResponseCancelled,
    ResponseChunk,
    ResponseComplete,
    Role,
    SessionCreate,
    SessionDestroy,
    SessionResume,
    StateGet,
    StateSubscribe,
    StateUpdate,
)

__all__ = ["Daemon", "DaemonRunning", "run_daemon", "serve_daemon"]

log = logging.getLogger("latis.daemon")

CAPABILITIES = ("cmdr", "call", "session.resume", "prompt.cancel", "state.subscribe", "input")


def peer_uid(stream: trio.abc.Stream) -> int | None:
    """The uid of the process at the other end of a unix socket stream (SO_PEERCRED)."""
    sock = getattr(stream, "socket", None)
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class Daemon:
    """The daemon's shared part: the controller, and who follows which state."""

    def __init__(self, controller: Controller, paths: Paths, stop: trio.Event) -> None:
        self.controller = controller
        self.paths = paths
        self.stop = stop
        self.subscribers: set[_Client] = set()
        #: The config file's (mtime, size) when it was last read: a change means reload.
        self.config_stamp = _stamp(controller.config.source)
        self._config_lock = trio.Lock()
        controller.add_state_listener(self._on_state)
        #: Coordinations running in this daemon, by id (for `coordination.follow`).
        self.coordinations: dict[str, Running] = {}
        #: Where detached coordinations run (set once the daemon serves).
        self.nursery: trio.Nursery | None = None
        #: The keep-alive clocks of all its clients, in one task (set once it serves).
        self.heartbeats: Heartbeats | None = None
        #: The web dashboard, while it is served (latis_core._cmdr.web.server).
        self.web: Any = None

    async def call(
        self, caller: Caller, name: Method, rid: RequestId, params: dict[str, Any]
    ) -> dict[str, Any]:
        """Run method `name` of the table for `caller` (the web API's way in)."""
        return await call_method(caller, name, rid, params)

    async def new_session(self, unit: str, options: dict[str, Any]) -> dict[str, Any]:
        """Open a session on `unit` (for `session.create` and the dashboard)."""
        await self.refresh_config()
        with trio.CancelScope(shield=True):
            data = await self.controller.create_session(unit, options)
        return data

    async def refresh_config(self, force: bool = False) -> dict[str, Any]:
        """Read the config file again if it changed since it was read (or if `force`).

        Cheap when nothing changed: one `stat`. Returns what changed (`added`,
        `removed` unit names; empty when nothing was read).

        Raises:
            ConfigError: the file no longer reads (the old config stays served).
        """
        async with self._config_lock:
            source = self.controller.config.source
            stamp = _stamp(source)
            if not force and stamp == self.config_stamp:
                return {}
            # Parsing is O(units) but not free: off the event loop, so prompts keep flowing.
            config = (await trio.to_thread.run_sync(load_config, source)
                      if source is not None else default_config())
            self.config_stamp = stamp
            log.info("config %s read again", source or "(built-in)")
            return await self.controller.reload(config)

    async def use_config(self, path: str | None) -> dict[str, Any]:
        """Serve `path` (a client's resolved config file; None: the built-in default).

        A daemon that serves the built-in default takes the file a client names
        (`latis init` or `unit add` wrote one since); one that serves a file
        keeps it, and says which (`match` false): one config at a time.
        """
        served = self.controller.config.source
        wanted = _absolute(path)
        if wanted is not None and served is None:
            async with self._config_lock:
                config = await trio.to_thread.run_sync(load_config, wanted)
                self.config_stamp = _stamp(wanted)
                changed = await self.controller.reload(config)
            log.info("serving config %s (named by a client)", wanted)
            return {"config": str(wanted), "match": True, **changed}
        if wanted != _absolute(served):
            return {"config": str(served) if served else None, "match": False}
        changed = await self.refresh_config()
        return {"config": str(served) if served else None, "match": True, **changed}

    @property
    def session_states(self) -> dict[str, str]:
        """Each open session's state (a copy of what the controller holds)."""
        return {sid: held.state for sid, held in self.controller.sessions.items()}

    @property
    def counts(self) -> Mapping[str, int]:
        """How many open sessions are in each state (the controller counts them)."""
        return self.controller.session_counts

    @property
    def overall(self) -> str:
        counts = self.counts
        for state in ("waiting", "busy"):
            if counts.get(state):
                return state
        return "idle"

    def _on_state(self, sid: str, state: str) -> None:
        if not self.subscribers:
            return
        overall = self.overall
        for client in list(self.subscribers):
            for rid, only in client.subs.items():
                if only is None or only == sid:
                    client.send(StateUpdate(rid, overall, {sid: state}))

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve one client connection (refusing other users)."""
        uid = peer_uid(stream)
        if uid is not None and uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            await stream.aclose()
            return
        daemon = self.controller.config.daemon
        await serve_stream(
            stream,
            lambda link, conn, nursery: _Client(self, link, conn, nursery),
            max_frame=DEFAULT_MAX_FRAME,
            # An idle or silent client gets no more than a listener's stranger.
            handshake_timeout=daemon.handshake_timeout,
            keepalive=daemon.heartbeat or None,
            keepalive_timeout=daemon.heartbeat_timeout,
            heartbeats=self.heartbeats,
            label="a CLI client",
        )


class _Client(ServerConnection):
    """One client of the daemon (a CLI, a script)."""

    def __init__(self, daemon: Daemon, link: Link, conn: Connection, nursery: trio.Nursery):
        super().__init__(link, conn)
        self.daemon = daemon
        self.ctl = daemon.controller
        self.nursery = nursery
        #: Request id -> the daemon's prompt id, for the prompts this client follows.
        self.prompts: dict[RequestId, int] = {}
        #: Request id -> the scope of a call in progress (so it can be cancelled).
        self.calls: dict[RequestId, trio.CancelScope] = {}
        self.subs: dict[RequestId, str | None] = {}
        #: Request id -> the prompt followed live (`follow`) and its listener.
        self.live: dict[RequestId, tuple[PromptRecord, Callable[..., bool]]] = {}

    def detach(self) -> None:
        super().detach()
        self.daemon.subscribers.discard(self)
        for record, listener in self.live.values():
            record.unlisten(listener)
        self.live.clear()

    def spawn(self, rid: RequestId, work: Callable[[], Awaitable[Any]]) -> None:
        """Run `work` for request `rid`; its errors become the request's `error`."""

        async def run() -> None:
            try:
                await work()
            except Exception as exc:
                self.fail(rid, exc)

        self.nursery.start_soon(run)

    def fail(self, rid: RequestId, exc: Exception) -> None:
        """Answer request `rid` with `exc` as its error."""
        code, message = error_code(exc)
        if code == ErrorCode.INTERNAL and not isinstance(exc, LatisError):
            # A bug: answer it, log it, keep serving the others.
            log.error("request %r failed", rid, exc_info=exc)
        self.send(Error(rid, code, message))

    async def forward(self, rid: RequestId, prompt_id: int, after: int) -> None:
        """Send prompt `prompt_id`'s events to this client under `rid`, to the end
        (those after chunk `after`; all with -1)."""
        record = self.ctl.prompts.get(prompt_id)
        if after == -1 and record is not None and self.follow(rid, record):
            return  # followed live, in its pump's task
        self.prompts[rid] = prompt_id
        try:
            await self._pull(rid, prompt_id, after)
        finally:
            self.prompts.pop(rid, None)

    def follow(self, rid: RequestId, record: PromptRecord) -> bool:
        """Send a running prompt's events from its start under `rid` as its pump
        publishes them, written in the pump's task: no task of this client's and
        no hop through one.

        False, with nothing sent, for a prompt whose events are not all in memory
        (or that is ending): `forward` reads those as they are. A client whose
        link falls behind goes on in a task of its own, at its pace (`_pull`).
        """
        if not record.whole or record.end is not None:
            return False
        self.prompts[rid] = record.id
        link = self.link
        last = -1
        sent = 0

        def send(events: list[tuple[str, Any]]) -> bool:
            nonlocal last, sent
            ended = False
            try:
                if not self.closed:
                    self.send_frames(_frames(self, rid, events))
                    sent += len(events)
                    for kind, payload in events:
                        if kind == "chunk":
                            last = payload.seq
                        elif kind == "end":
                            ended = True
                    if not ended and link.buffered <= HIGH_WATER:
                        return True
            except Exception:  # (a bug: logged; the rest is read as if behind)
                log.exception("prompt %s: writing to a client failed", record.id)
            # Done here: at the end (or this client's), or behind.
            self.live.pop(rid, None)
            if ended or self.closed:
                self.prompts.pop(rid, None)
            else:
                self.spawn(rid, functools.partial(self._catch_up, rid, record.id, last, sent))
            return False

        # Nothing runs between this copy and `listen`: every event is sent once.
        if not record.events or send(list(record.events)):
            record.listen(send)
            self.live[rid] = (record, send)
        return True

    async def _catch_up(self, rid: RequestId, prompt_id: int, last: int, sent: int) -> None:
        """Go on with a prompt followed live until this client fell behind."""
        try:
            await self.link.wait_drained()
            await self._pull(rid, prompt_id, last, sent)
        finally:
            self.prompts.pop(rid, None)

    async def _pull(
        self, rid: RequestId, prompt_id: int, after: int, start: int | None = None
    ) -> None:
        """Forward the prompt's events after chunk `after` (after its first `start`
        events, if given), read as they come, from state first if they are there."""
        link = self.link
        # What came together leaves together: one write per batch, from this task
        # (no flush task per chunk). Closed here when it ends: an async generator
        # left to the garbage collector costs trio a task.
        async with contextlib.aclosing(
            self.ctl.follow_batches(prompt_id, after, start=start)
        ) as batches:
            async for batch in batches:
                if self.closed:
                    return
                self.send_frames(_frames(self, rid, batch))
                if batch[-1][0] == "end":
                    return
                if link.buffered > HIGH_WATER:
                    await link.wait_drained()


def _frames(
    client: ServerConnection, rid: RequestId, events: list[tuple[str, Any]]
) -> list[bytes]:
    """A prompt's events as the frames a client gets for its request `rid` (a
    plain chunk without making its message: the hot path)."""
    out: list[bytes] = []
    for kind, payload in events:
        if kind == "chunk":
            if payload.kind is None and payload.data is None:
                frame = client.frame_chunk(rid, payload.seq, payload.text)
            else:
                frame = client.frame(
                    ResponseChunk(rid, payload.seq, payload.text, payload.kind, payload.data))
        elif kind == "input":
            frame = client.frame(InputRequest(rid, payload.input, payload.question,
                                              payload.options, payload.kind, payload.data))
        else:
            frame = client.frame(_final(rid, payload))
        if frame is not None:
            out.append(frame)
    return out


# ---- handlers (a fixed table: message class -> function) -------------------------------


def _on_hello(c: _Client, msg: Hello) -> None:
    c.send(
        Hello(
            msg.id,
            PROTOCOL_VERSION,
            Role.UNIT.value,
            unit="cmdr",
            agent=AgentInfo("latis-cmdr", __version__),
            capabilities=CAPABILITIES,
            max_frame=DEFAULT_MAX_FRAME,
        )
    )


def _on_ping(c: _Client, msg: Ping) -> None:
    c.send(Pong(msg.id))


def _on_quiet(c: _Client, msg: Any) -> None:
    if type(msg) is Error:
        log.warning("client reported %s: %s", msg.code, msg.message)


def _on_violation(c: _Client, v: Violation) -> None:
    log.warning("refused a message: %s: %s", v.code, v.message)
    if v.reply is not None:
        c.send(v.reply)


def _on_session_create(c: _Client, msg: SessionCreate) -> None:
    options = dict(msg.options or {})
    unit = options.pop("unit", "local")

    async def work() -> None:
        c.send(Ack(msg.id, await c.daemon.new_session(str(unit), options)))

    c.spawn(msg.id, work)


def _on_session_destroy(c: _Client, msg: SessionDestroy) -> None:
    async def work() -> None:
        with trio.CancelScope(shield=True):
            await c.ctl.destroy_session(msg.session)
        c.send(Ack(msg.id, {"session": msg.session, "state": "closed"}))

    c.spawn(msg.id, work)


def _on_session_resume(c: _Client, msg: SessionResume) -> None:
    async def work() -> None:
        try:
            rt = await c.ctl.session_unit(msg.session)
        except RequestError as exc:
            if msg.prompt is not None:
                c.send(Error(msg.prompt, str(exc.code), exc.message))
            raise
        if msg.prompt is None and (rt.client is None or rt.client.peer.closed):
            # To be prompted next: bring its unit back now, which resumes its sessions,
            # so that one its agent could not resume is said here, not at the prompt
            # (and a unit that cannot come back is said once, here, not twice).
            await c.ctl.up(rt.name)
            if msg.session not in c.ctl.sessions:
                raise RequestError(ErrorCode.UNKNOWN_SESSION.value,
                                   lost_with_unit(msg.session, rt.name))
        held = c.ctl.sessions.get(msg.session)
        state = held.state if held is not None else "idle"
        data: dict[str, Any] = {"session": msg.session, "unit": rt.name, "state": state}
        if msg.prompt is None:
            c.send(Ack(msg.id, data))
            return
        prompt = await c.ctl.read(c.ctl.reads.get_prompt, msg.prompt)
        if prompt is None or prompt.session != msg.session:
            c.send(Ack(msg.id, data))
            c.send(Error(msg.prompt, ErrorCode.UNKNOWN_REQUEST.value,
                         f"session {msg.session!r} has no prompt {msg.prompt!r}"))
            return
        data["prompt"] = {"id": prompt.id, "done": prompt.state != PromptState.RUNNING}
        c.send(Ack(msg.id, data))
        await c.forward(msg.prompt, prompt.id, -1 if msg.seq is None else msg.seq)

    c.spawn(msg.id, work)


def _on_prompt_send(c: _Client, msg: PromptSend) -> None:
    # Usually nothing needs a wait: sent to the unit and followed from here, in
    # this reader's task (no task of its own: one less hop for every prompt).
    try:
        record = c.ctl.start_prompt_nowait(msg.session, msg.text)
    except Exception as exc:
        c.fail(msg.id, exc)
        return
    if record is not None:
        c.follow(msg.id, record)
        return

    async def work() -> None:
        # Shielded: once sent to the unit, the prompt is recorded even if this
        # client goes away at that moment (it runs on; only following stops).
        with trio.CancelScope(shield=True):
            record = await c.ctl.start_prompt(msg.session, msg.text)
        await c.forward(msg.id, record.id, -1)

    c.spawn(msg.id, work)


def _on_prompt_cancel(c: _Client, msg: PromptCancel) -> None:
    rid = msg.id
    if rid in c.prompts:
        c.nursery.start_soon(c.ctl.cancel, c.prompts[rid])
    elif rid in c.subs:
        del c.subs[rid]
        c.send(ResponseCancelled(rid))
    elif rid in c.calls:
        c.calls[rid].cancel()


def _on_input_reply(c: _Client, msg: InputReply) -> None:
    prompt_id = c.prompts.get(msg.id)
    if prompt_id is None:
        return

    async def answer() -> None:
        with contextlib.suppress(LatisError):
            await c.ctl.answer(prompt_id, msg.input, msg.text, "prompt")

    c.nursery.start_soon(answer)


def _snapshot(c: _Client, rid: RequestId, only: str | None) -> StateUpdate | Error:
    if only is not None:
        held = c.ctl.sessions.get(only)
        if held is None:
            return Error(rid, ErrorCode.UNKNOWN_SESSION.value, f"no session {only!r}")
        return StateUpdate(rid, c.daemon.overall, {only: held.state})
    return StateUpdate(rid, c.daemon.overall, c.daemon.session_states)


def _on_state_get(c: _Client, msg: StateGet) -> None:
    c.send(_snapshot(c, msg.id, msg.session))


def _on_state_subscribe(c: _Client, msg: StateSubscribe) -> None:
    first = _snapshot(c, msg.id, msg.session)
    if type(first) is StateUpdate:
        c.subs[msg.id] = msg.session
        c.daemon.subscribers.add(c)
    c.send(first)


def _on_call(c: _Client, msg: Call) -> None:
    try:
        name = Method(msg.method)
    except ValueError:
        c.send(Error(msg.id, ErrorCode.UNKNOWN_TYPE.value,
                     f"no method {msg.method!r} (methods: {', '.join(sorted(Method))})"))
        return
    params = dict(msg.params or {})
    problem = check_params(name, params)
    if problem is not None:
        c.send(Error(msg.id, ErrorCode.BAD_MESSAGE.value, problem))
        return

    async def work() -> None:
        with trio.CancelScope() as scope:
            c.calls[msg.id] = scope
            try:
                data = await call_method(c, name, msg.id, params)
            finally:
                c.calls.pop(msg.id, None)
        if scope.cancelled_caught:
            c.send(ResponseCancelled(msg.id))
        else:
            c.send(Ack(msg.id, data))

    c.spawn(msg.id, work)


_Client.HANDLERS = {
    Hello: _on_hello,
    Ping: _on_ping,
    Pong: _on_quiet,
    Error: _on_quiet,
    Violation: _on_violation,
    SessionCreate: _on_session_create,
    SessionDestroy: _on_session_destroy,
    SessionResume: _on_session_resume,
    PromptSend: _on_prompt_send,
    PromptCancel: _on_prompt_cancel,
    InputReply: _on_input_reply,
    StateGet: _on_state_get,
    StateSubscribe: _on_state_subscribe,
    Call: _on_call,
}


def _final(rid: RequestId, end: dict[str, Any]) -> Any:
    outcome = end.get("outcome")
    if outcome == "complete":
        return ResponseComplete(rid, end.get("chunks"))
    if outcome == "cancelled":
        return ResponseCancelled(rid, end.get("chunks"))
    return Error(rid, str(end.get("code") or ErrorCode.AGENT_ERROR.value),
                 str(end.get("message") or "the prompt failed"))


def _absolute(path: str | Path | None) -> Path | None:
    """`path` made absolute, without touching the disk (None stays None)."""
    return Path(os.path.abspath(path)) if path else None


def _stamp(source: Path | None) -> tuple[int, int] | None:
    """The config file's (mtime, size), or None (no file, or it is gone)."""
    if source is None:
        return None
    try:
        found = os.stat(source)
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size


# ---- running the daemon ------------------------------------------------------------------------


async def serve_daemon(
    config: Config,
    *,
    paths_: Paths | None = None,
    tune_gc: bool = False,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM, SIGINT or `call daemon.stop`.

    Units that run by themselves keep running when it stops; their prompts too.
    `tune_gc` (the daemon's own process, not a test's): see `latis_core.tune_gc`.
    """
    where = paths_ or paths()
    run_dir = where.private_run_dir()
    lock = hold_daemon_lock(run_dir)
    try:
        state = StateDB(config.daemon.state or where.state_file)
        try:
            async with open_controller(config, state, paths=where) as ctl, listen_unix(
                where.socket
            ) as listener:
                stop = trio.Event()
                daemon = Daemon(ctl, where, stop)
                if tune_gc:
                    collector.tune_gc()
                log.info("cmdr %s listening on %s (pid %d)", __version__, where.socket,
                         os.getpid())
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async with trio.open_nursery() as nursery:
                        daemon.nursery = nursery
                        daemon.heartbeats = Heartbeats(nursery)
                        nursery.start_soon(trio.serve_listeners, daemon.serve, [listener])
                        nursery.start_soon(ctl.reconnect_known)
                        nursery.start_soon(_stop_on_signal, signals, stop)
                        nursery.start_soon(_close_idle_sessions, daemon)
                        if tune_gc:
                            nursery.start_soon(_collect_when_quiet, ctl)
                        if config.web.enabled:
                            from latis_core._cmdr.web.server import serve_at_start

                            nursery.start_soon(serve_at_start, daemon)
                        task_status.started(daemon)
                        await stop.wait()
                        log.info("stopping")
                        if tune_gc:
                            # What the teardown allocates is freed by reference
                            # counting (cmdr's memory grew alike with the collector
                            # on and off); the collector's young passes over it
                            # were a quarter of the stop with 4,000 units connected.
                            gc.disable()
                        nursery.cancel_scope.cancel()
        finally:
            state.close()
    finally:
        lock.close()


async def _close_idle_sessions(daemon: Daemon) -> None:
    """Close sessions idle past `[daemon] session_idle_timeout` (re-read on each round)."""
    ctl = daemon.controller
    while True:
        idle = ctl.config.daemon.session_idle_timeout
        await trio.sleep(min(60.0, idle / 4) if idle > 0 else 60.0)
        if idle <= 0:
            continue
        await trio.lowlevel.checkpoint()
        for sid in idle_sessions(daemon, idle):
            try:
                with trio.fail_after(30):
                    await ctl.destroy_session(sid)
                log.info("closed session %s: idle for %g s", sid, idle)
            except (LatisError, trio.TooSlowError) as exc:
                log.warning("could not close idle session %s: %s", sid, exc)


#: Young objects (`gc.get_count()[0]`) past which a daemon with no prompt
#: streaming collects them at once (`_collect_when_quiet`), ...
QUIET_YOUNG = 5_000
#: ... looking this often (seconds).
QUIET_EVERY = 0.5


async def _collect_when_quiet(ctl: Controller) -> None:
    """Run the collector's young passes while no prompt streams, so that they
    do not stop a stream later.

    A young pass costs ~1 µs an object it finds alive: after 20,000 sessions
    were opened, the first one stopped the daemon for 18-67 ms, in the middle
    of the next burst of chunks (their p99, `gc.callbacks` measured). Done
    while no session is busy, the same pass stops nobody. Only the young
    generations (0 and 1): a full pass over thousands of connected units would
    be a long stop even when quiet; the automatic one keeps its own rule (it
    waits until a quarter of the old objects are new).
    """
    middle = collector.GC_THRESHOLDS[1]
    while True:
        await trio.sleep(QUIET_EVERY)
        if ctl.session_counts["busy"]:
            continue
        counts = gc.get_count()
        if counts[1] >= middle - 1:  # the next young pass would take in generation 1
            gc.collect(1)
        elif counts[0] >= QUIET_YOUNG:
            gc.collect(0)


async def _stop_on_signal(signals: Any, stop: trio.Event) -> None:
    async for _ in signals:
        stop.set()
        return


def run_daemon(config_path: str | None = None) -> int:
    """`latis daemon run`: serve in the foreground; return the exit status."""
    logging.basicConfig(
        level=os.environ.get("LATIS_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s latis-cmdr %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(config_path)
        trio.run(lambda: serve_daemon(config, tune_gc=True))
    except DaemonRunning as exc:
        log.error("%s", exc)
        return 1
    except LatisError as exc:
        log.error("%s", exc)
        return 1
    return 0
