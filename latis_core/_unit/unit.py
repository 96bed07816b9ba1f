"""The unit server: an agent's sessions, served over any number of connections.

`Unit` holds the agent, its sessions and their prompts; it outlives any one
connection, so a controller that reconnects can resume a session and the rest
of a prompt's answer (`session.resume` with `prompt` and `seq`). `serve`
answers one connection. Quick requests (ping, state, cancel, input replies)
are answered inline by the connection's reader; work that involves the agent
runs as a task in the unit's nursery.

A prompt's chunks are written corked: they leave in large writes whenever the
agent yields. Each prompt keeps the chunks it sent (up to `replay_limit`
bytes) for a controller that lost them with its connection. While no
controller is attached and that log is full, the agent waits: nothing is
dropped, nothing grows without bound.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
from trio.lowlevel import checkpoint

from latis_core._errors import ErrorCode
from latis_core._io.heartbeat import HEARTBEAT, HEARTBEAT_TIMEOUT, Heartbeats
from latis_core._io.link import HIGH_WATER, Link
from latis_core._io.server import ServerConnection, serve_stream
from latis_core._os.capacity import probe_capacity
from latis_core._plugins.agent import Agent, AgentSession, SessionNotFound
from latis_core._util import unwrap_group
from latis_core._wire.auth import METHOD, Enrollment, is_challenge, new_challenge, prove, verify
from latis_core._wire.connection import Connection, Violation
from latis_core._wire.frames import DEFAULT_MAX_FRAME
from latis_core._wire.messages import (
    PROTOCOL_VERSION,
    Ack,
    Call,
    Error,
    Hello,
    InputReply,
    InputRequest,
    Message,
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
    State,
    StateGet,
    StateSubscribe,
    StateUpdate,
)

__all__ = ["Unit", "open_unit", "serve_unit"]

log = logging.getLogger("latis.unit")

#: Bytes of chunks each prompt keeps for replay (8 MiB).
REPLAY_LIMIT = 8 * 1024 * 1024
#: Sessions a unit holds at most.
MAX_SESSIONS = 1000
#: What a chunk costs in the replay log beyond its text (an estimate).
_CHUNK_OVERHEAD = 48
#: How long a prompt sent right after the cancel of the session's running one
#: waits for that one's end before it is refused (`session_busy`).
CANCELLED_WAIT = 10.0

UNIT_CAPABILITIES = ("session.resume", "prompt.cancel", "state.subscribe", "input")


def new_session_id() -> str:
    """A new session id: 12 URL-safe characters, never starting with `-` (a
    command line would take `--session -Xy…` for an option)."""
    while True:
        sid = secrets.token_urlsafe(9)
        if sid[0] != "-":
            return sid


class _Session:
    __slots__ = ("agent_session", "closing", "id", "last_run", "run", "state")

    def __init__(self, sid: str, agent_session: AgentSession) -> None:
        self.id = sid
        self.agent_session = agent_session
        self.state = State.IDLE
        self.run: _Run | None = None
        self.last_run: _Run | None = None
        self.closing = False


class _Run:
    """A prompt being answered (or the last one answered) in a session.

    It is also the `Reply` its agent answers through.
    """

    __slots__ = (
        "_answer",
        "_answered",
        "_attached",
        "_sends",
        "cancelled",
        "done",
        "final",
        "first_seq",
        "id",
        "inputs",
        "log",
        "log_bytes",
        "pending",
        "scope",
        "seq",
        "session",
        "sink",
        "text",
        "unit",
    )

    def __init__(self, unit: Unit, session: _Session, rid: RequestId, text: str) -> None:
        self.unit = unit
        self.session = session
        self.id = rid
        self.text = text
        #: The connection the chunks go to, or None while no controller is attached.
        self.sink: _Served | None = None
        self.seq = 0
        #: The chunks kept for a resume, from seq `first_seq` on: a plain chunk
        #: as its text, any other as its message.
        self.log: deque[str | ResponseChunk] = deque()
        self.log_bytes = 0
        self.first_seq = 0
        self.scope = trio.CancelScope()
        self.cancelled = False
        self.final: Message | None = None
        self.done = trio.Event()
        self.inputs = 0
        self.pending: InputRequest | None = None
        self._answer = ""
        self._answered: trio.Event | None = None
        self._attached: trio.Event | None = None
        self._sends = 0

    # ---- the Reply interface ------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.session.id

    async def send(
        self, text: str = "", *, kind: str | None = None, data: dict[str, Any] | None = None
    ) -> None:
        if type(text) is not str:
            raise TypeError(f"a chunk's text must be a str, got {type(text).__name__}")
        seq = self.seq
        self.seq = seq + 1
        # A plain chunk is kept as its text (its seq is its place in the log) and
        # encoded without a message made: the most of what a unit does per chunk.
        msg: ResponseChunk | None = None
        if kind is None and data is None:
            self.log.append(text)
            self.log_bytes += len(text) + _CHUNK_OVERHEAD
        else:
            msg = ResponseChunk(self.id, seq, text, kind, data)
            self.log.append(msg)
            self.log_bytes += _cost(msg)
        sink = self.sink
        if sink is not None and (sink.closed or sink.conn.closed):
            # Its controller is gone (or its connection failed, as when our
            # heartbeat found it silent, before the connection's task noticed):
            # keep everything for a resume.
            self.sink = sink = None
        if sink is not None:
            conn = sink.conn
            queued = 0
            try:
                queued = sink.link.cork(
                    conn.send_chunk(self.id, seq, text) if msg is None else conn.send(msg)
                )
            except trio.BrokenResourceError:
                sink.closed = True
            if self.log_bytes > self.unit.replay_limit:
                self._trim()
            if queued > HIGH_WATER:
                await sink.link.wait_drained()
                return
        elif self.log_bytes > self.unit.replay_limit:
            # Nobody reads and the log is full: wait for a controller.
            self._attached = trio.Event()
            await self._attached.wait()
            return
        # The prompt's own cancel (`prompt.cancel`, its session's end) is seen
        # on every call, by the run's flag; any other, and other tasks' turn,
        # every 64th call, at a checkpoint: trio's check on every call was a
        # sixth of what a unit spent per chunk.
        sends = self._sends = self._sends + 1
        if sends & 63 and not self.cancelled:
            return
        await checkpoint()

    async def ask(
        self,
        question: str,
        *,
        options: Sequence[str] = (),
        kind: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        if self.pending is not None:
            raise RuntimeError("the agent already waits for an answer")
        request = InputRequest(self.id, self.inputs, question, tuple(options), kind, data or None)
        self.inputs += 1
        self.pending = request
        answered = self._answered = trio.Event()
        unit = self.unit
        unit._set_state(self.session, State.WAITING)
        if self.sink is not None:
            self.sink.send(request)
        try:
            await answered.wait()
        finally:
            self.pending = None
            self._answered = None
            if not self.session.closing:
                unit._set_state(self.session, State.BUSY)
        return self._answer

    # ---- for the unit -------------------------------------------------------------

    def cancel(self) -> None:
        """Cancel the agent's work on this prompt."""
        self.cancelled = True  # (read per chunk: cheaper than the scope's `cancel_called`)
        self.scope.cancel()

    def answer(self, number: int, text: str) -> None:
        pending = self.pending
        if pending is None or pending.input != number or self._answered is None:
            # A reply that crossed a cancel, or a second answer: nothing waits for it.
            log.debug("ignored input.reply %r for prompt %r", number, self.id)
            return
        self._answer = text
        self._answered.set()
        self._answered = None

    def _trim(self) -> None:
        limit = self.unit.replay_limit
        entries = self.log
        while self.log_bytes > limit and len(entries) > 1:
            self.log_bytes -= _cost(entries.popleft())
            self.first_seq += 1

    async def main(self) -> None:
        final: Message
        try:
            with self.scope:
                await self.session.agent_session.prompt(self.text, self)
        except trio.Cancelled:
            self._finish(ResponseCancelled(self.id, self.seq))
            raise
        except Exception as exc:
            log.exception("the agent failed on prompt %r", self.id)
            final = Error(self.id, ErrorCode.AGENT_ERROR.value, f"{type(exc).__name__}: {exc}")
        else:
            if self.scope.cancelled_caught:
                final = ResponseCancelled(self.id, self.seq)
            else:
                final = ResponseComplete(self.id, self.seq)
        self._finish(final)

    def _finish(self, final: Message) -> None:
        self.final = final
        session = self.session
        session.run = None
        session.last_run = self
        if not session.closing:
            self.unit._set_state(session, State.IDLE)
        sink = self.sink
        if sink is not None:
            sink.runs.pop(self.id, None)
            sink.send(final)
        self.done.set()

    def attach(self, served: _Served, after: int | None) -> Error | None:
        """Send `served` the chunks after seq `after`, then the rest live."""
        if served.closed:
            return None  # it went away while the resume was being answered
        start = 0 if after is None else after + 1
        if after is not None and not -1 <= after < self.seq:
            return Error(
                self.id,
                ErrorCode.BAD_MESSAGE.value,
                f"seq {after} is not a chunk of prompt {self.id!r} (it has sent {self.seq})",
            )
        if start < self.first_seq:
            return Error(
                self.id,
                ErrorCode.LIMIT_REACHED.value,
                f"chunks {start} to {self.first_seq - 1} of prompt {self.id!r} "
                f"({self.first_seq - start} chunks) are no longer kept "
                f"(the replay limit is {self.unit.replay_limit} bytes)",
            )
        old = self.sink
        if old is not None and old is not served:
            old.runs.pop(self.id, None)
            old.send(
                Error(
                    self.id,
                    ErrorCode.UNKNOWN_REQUEST.value,
                    f"prompt {self.id!r} was reattached on another connection",
                )
            )
        skip = max(0, start - self.first_seq)
        for seq, entry in enumerate(itertools.islice(self.log, skip, None), self.first_seq + skip):
            if not isinstance(entry, ResponseChunk):
                entry = ResponseChunk(self.id, seq, entry)
            served.cork(entry)
        if self.final is not None:
            served.send(self.final)
            return None
        self.sink = served
        served.runs[self.id] = self
        if self.pending is not None:
            served.send(self.pending)
        if self._attached is not None:
            self._attached.set()
            self._attached = None
        return None


def _cost(entry: str | ResponseChunk) -> int:
    if isinstance(entry, str):
        return len(entry) + _CHUNK_OVERHEAD
    size = len(entry.text) + _CHUNK_OVERHEAD
    if entry.data is not None:
        size += len(orjson.dumps(entry.data))
    return size


class _Served(ServerConnection):
    """One connection to a controller."""

    def __init__(self, unit: Unit, link: Link, conn: Connection) -> None:
        super().__init__(link, conn)
        self.unit = unit
        #: The prompts whose chunks go to this connection, by request id.
        self.runs: dict[RequestId, _Run] = {}
        #: State subscriptions: request id to session filter (None: all).
        self.subs: dict[RequestId, str | None] = {}
        #: The challenge sent with `auth_required` (a unit with a token).
        self.challenge: str | None = None

    def detach(self) -> None:
        self.closed = True
        for run in self.runs.values():
            if run.sink is self:
                run.sink = None
        self.runs.clear()
        self.subs.clear()
        self.unit._subscribers.discard(self)


class Unit:
    """An agent and its sessions, served to any number of connections.

    Made by `open_unit`, which owns the tasks that answer prompts.

    Args:
        agent: the adapter that does the work.
        name: the unit's name in its `hello` (default: the host name).
        max_sessions: sessions held at most; more get `limit_reached`.
        replay_limit: bytes of chunks each prompt keeps for replay.
        max_frame: the largest payload accepted, in bytes.
        token: a secret a controller must prove it knows before anything
            else (a unit that listens); None: no proof asked.
        enrollment: the unit's credentials, proven to a controller that
            challenges it (a unit that dials in).
        handshake_timeout: seconds a connection gets to finish `hello`
            (None: no limit).
        heartbeat: seconds of silence from the controller before a `ping`
            (None: none).
        heartbeat_timeout: seconds that ping waits for any byte before the
            connection counts as dead and is closed (a unit that dials in
            then dials again).
    """

    def __init__(
        self,
        agent: Agent,
        nursery: trio.Nursery,
        *,
        name: str | None = None,
        max_sessions: int = MAX_SESSIONS,
        replay_limit: int = REPLAY_LIMIT,
        max_frame: int = DEFAULT_MAX_FRAME,
        token: bytes | None = None,
        enrollment: Enrollment | None = None,
        handshake_timeout: float | None = None,
        heartbeat: float | None = HEARTBEAT,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    ) -> None:
        self.agent = agent
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.token = token
        self.enrollment = enrollment
        self.handshake_timeout = handshake_timeout
        #: Why a controller refused our proof of identity, if one did.
        self.refused: str | None = None
        #: Seconds a busy controller asked us to wait before dialing again, if it did.
        self.retry_after: float | None = None
        self.name = name or socket.gethostname()
        self.max_sessions = max_sessions
        self.replay_limit = replay_limit
        self.max_frame = max_frame
        self.sessions: dict[str, _Session] = {}
        self._nursery = nursery
        #: The keep-alive clocks of all its connections, in one task.
        self._heartbeats = Heartbeats(nursery)
        self._subscribers: set[_Served] = set()
        self._busy = 0
        self._waiting = 0
        self._opening = 0
        capabilities = dict.fromkeys(UNIT_CAPABILITIES + tuple(agent.capabilities))
        self.capabilities = tuple(capabilities)

    @property
    def state(self) -> State:
        """`waiting` if any session waits for input, else `busy` if any is busy, else `idle`."""
        if self._waiting:
            return State.WAITING
        if self._busy:
            return State.BUSY
        return State.IDLE

    async def serve(
        self,
        stream: trio.abc.Stream,
        *,
        on_handshake: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve one connection until it ends; then close `stream`.

        The unit's sessions and running prompts stay: another connection may
        resume them. `on_handshake` is called once the handshake is done.
        """
        async def started(served: ServerConnection) -> None:
            served.on_handshake = on_handshake
            task_status.started()

        await serve_stream(
            stream,
            lambda link, conn, nursery: _Served(self, link, conn),
            max_frame=self.max_frame,
            started=started,
            strict=self.token is not None,
            handshake_timeout=self.handshake_timeout,
            keepalive=self.heartbeat,
            keepalive_timeout=self.heartbeat_timeout,
            heartbeats=self._heartbeats,
            label="the controller",
        )

    # ---- state ---------------------------------------------------------------------

    def _set_state(self, session: _Session, new: State) -> None:
        old = session.state
        if old is new:
            return
        if old is State.BUSY:
            self._busy -= 1
        elif old is State.WAITING:
            self._waiting -= 1
        if new is State.BUSY:
            self._busy += 1
        elif new is State.WAITING:
            self._waiting += 1
        session.state = new
        self._publish(session)

    def _publish(self, session: _Session) -> None:
        if not self._subscribers:
            return
        state = self.state.value
        change = {session.id: session.state.value}
        for served in list(self._subscribers):
            for rid, only in served.subs.items():
                if only is None or only == session.id:
                    served.send(StateUpdate(rid, state, change))

    def _snapshot(self, rid: RequestId, only: str | None) -> StateUpdate:
        if only is not None:
            sessions = {only: self.sessions[only].state.value}
        else:
            sessions = {sid: s.state.value for sid, s in self.sessions.items()}
            capacity = probe_capacity(len(self.sessions), self.max_sessions)
            return StateUpdate(rid, self.state.value, sessions, capacity)
        return StateUpdate(rid, self.state.value, sessions)

    # ---- work that involves the agent ------------------------------------------------

    async def _create(self, served: _Served, msg: SessionCreate) -> None:
        try:
            sid = new_session_id()
            try:
                agent_session = await self.agent.open_session(sid, msg.options or {})
            except ValueError as exc:  # the request's options: the client's to fix
                log.info("session options refused: %s", exc)
                served.send(Error(msg.id, ErrorCode.BAD_MESSAGE.value, f"session options: {exc}"))
                return
            except Exception as exc:
                log.exception("the agent could not open a session")
                served.send(
                    Error(msg.id, ErrorCode.AGENT_ERROR.value, f"{type(exc).__name__}: {exc}")
                )
                return
            self.sessions[sid] = session = _Session(sid, agent_session)
        finally:
            self._opening -= 1
        self._publish(session)
        served.send(Ack(msg.id, {"session": sid, "state": session.state.value}))

    async def _destroy(self, served: _Served, msg: SessionDestroy, session: _Session) -> None:
        run = session.run
        if run is not None:
            run.cancel()
            await run.done.wait()
        await _close_quietly(session.agent_session, session.id)
        self._set_state(session, State.CLOSED)
        del self.sessions[session.id]
        for subscriber in list(self._subscribers):
            for rid, only in list(subscriber.subs.items()):
                if only == session.id:
                    del subscriber.subs[rid]
                    subscriber.send(ResponseCancelled(rid))
        served.send(Ack(msg.id, {"session": session.id, "state": State.CLOSED.value}))

    async def _resume(self, served: _Served, msg: SessionResume) -> None:
        session = self.sessions.get(msg.session)
        failure: Error | None = None
        if session is not None and session.closing:
            failure = Error(msg.id, ErrorCode.UNKNOWN_SESSION.value, f"no session {msg.session!r}")
        elif session is None and len(self.sessions) + self._opening >= self.max_sessions:
            failure = Error(
                msg.id,
                ErrorCode.LIMIT_REACHED.value,
                f"this unit holds at most {self.max_sessions} sessions",
            )
        elif session is None:
            try:
                agent_session = await self.agent.resume_session(msg.session)
            except SessionNotFound:
                failure = Error(
                    msg.id, ErrorCode.UNKNOWN_SESSION.value, f"no session {msg.session!r}"
                )
            except Exception as exc:
                log.exception("the agent could not resume session %s", msg.session)
                failure = Error(
                    msg.id, ErrorCode.AGENT_ERROR.value, f"{type(exc).__name__}: {exc}"
                )
            else:
                if msg.session in self.sessions:
                    # Another resume loaded it first: keep that one.
                    await _close_quietly(agent_session, msg.session)
                else:
                    self.sessions[msg.session] = _Session(msg.session, agent_session)
                    self._publish(self.sessions[msg.session])
                session = self.sessions[msg.session]
        if failure is not None:
            served.send(failure)
            if msg.prompt is not None:
                served.send(Error(msg.prompt, failure.code, failure.message))
            return
        assert session is not None
        data: dict[str, Any] = {"session": session.id, "state": session.state.value}
        run = None
        if msg.prompt is not None:
            for candidate in (session.run, session.last_run):
                if candidate is not None and candidate.id == msg.prompt:
                    run = candidate
                    break
            if run is not None:
                data["prompt"] = {"id": run.id, "seq": run.seq, "done": run.final is not None}
        served.send(Ack(msg.id, data))
        if msg.prompt is None:
            return
        if run is None:
            served.send(
                Error(
                    msg.prompt,
                    ErrorCode.UNKNOWN_REQUEST.value,
                    f"session {session.id!r} has no prompt {msg.prompt!r} to reattach",
                )
            )
            return
        failure = run.attach(served, msg.seq)
        if failure is not None:
            served.send(failure)


async def _close_quietly(agent_session: AgentSession, sid: str) -> None:
    try:
        await agent_session.aclose()
    except Exception:
        log.exception("the agent failed to close session %s", sid)


# ---- handlers: one per message type a controller may send (a fixed table) ---------------


def _on_hello(s: _Served, msg: Hello) -> None:
    unit = s.unit
    offered = msg.auth if isinstance(msg.auth, dict) else {}
    auth: dict[str, Any] | None = None
    if unit.token is not None:
        if s.challenge is None:
            s.challenge = new_challenge()
            s.send(
                Error(
                    msg.id,
                    ErrorCode.AUTH_REQUIRED.value,
                    "this unit asks for proof of its token: answer the challenge in a new hello",
                    auth={"method": METHOD, "challenge": s.challenge},
                )
            )
            return
        if not verify(unit.token, Role.CMDR.value, s.challenge, "", offered.get("proof")):
            log.warning("refused a controller: its hello does not prove the unit's token")
            s.send(
                Error(None, ErrorCode.UNAUTHORIZED.value, "wrong or missing proof of the token")
            )
            s.end()
            return
        if is_challenge(offered.get("challenge")):
            auth = {"proof": prove(unit.token, Role.UNIT.value, offered["challenge"])}
    elif unit.enrollment is not None and is_challenge(offered.get("challenge")):
        enrollment = unit.enrollment
        auth = {
            "enrollment": enrollment.id,
            "proof": prove(enrollment.secret, Role.UNIT.value, offered["challenge"], enrollment.id),
        }
    s.send(
        Hello(
            msg.id,
            PROTOCOL_VERSION,
            Role.UNIT.value,
            unit=unit.name,
            agent=unit.agent.info,
            capabilities=unit.capabilities,
            max_frame=unit.max_frame,
            auth=auth,
        )
    )


def _on_ping(s: _Served, msg: Ping) -> None:
    s.send(Pong(msg.id))


def _on_pong(s: _Served, msg: Pong) -> None:
    pass


def _on_error(s: _Served, msg: Error) -> None:
    if msg.id is None and msg.retry_after is not None and s.conn.their_hello is None:
        # A busy listener, in place of its hello: come back later (and it closes).
        log.info("cmdr is busy: %s", msg.message)
        s.unit.retry_after = max(0.0, msg.retry_after)
        s.end()
        return
    about = "" if msg.id is None else f" (request {msg.id!r})"  # (None: the connection's)
    log.warning("cmdr reported %s: %s%s", msg.code, msg.message, about)
    if msg.code == ErrorCode.UNAUTHORIZED.value:
        # cmdr did not take our proof of identity (and closes): say so to
        # whoever dials (`latis-unit --connect` stops trying).
        s.unit.refused = msg.message
        s.end()


def _on_violation(s: _Served, v: Violation) -> None:
    log.warning("refused a message: %s: %s", v.code, v.message)
    if v.reply is not None:
        s.send(v.reply)


def _known_session(s: _Served, rid: RequestId, sid: str | None) -> _Session | None:
    session = s.unit.sessions.get(sid) if sid is not None else None
    if session is None or session.closing:
        s.send(Error(rid, ErrorCode.UNKNOWN_SESSION.value, f"no session {sid!r}"))
        return None
    return session


def _on_state_get(s: _Served, msg: StateGet) -> None:
    if msg.session is not None and _known_session(s, msg.id, msg.session) is None:
        return
    s.send(s.unit._snapshot(msg.id, msg.session))


def _on_state_subscribe(s: _Served, msg: StateSubscribe) -> None:
    if msg.session is not None and _known_session(s, msg.id, msg.session) is None:
        return
    s.subs[msg.id] = msg.session
    s.unit._subscribers.add(s)
    s.send(s.unit._snapshot(msg.id, msg.session))


def _on_prompt_cancel(s: _Served, msg: PromptCancel) -> None:
    run = s.runs.get(msg.id)
    if run is not None:
        run.cancel()
    elif msg.id in s.subs:
        del s.subs[msg.id]
        s.send(ResponseCancelled(msg.id))
    # Otherwise it crossed the prompt's end on the wire: nothing to do.


def _on_input_reply(s: _Served, msg: InputReply) -> None:
    run = s.runs.get(msg.id)
    if run is not None:
        run.answer(msg.input, msg.text)


def _on_session_create(s: _Served, msg: SessionCreate) -> None:
    unit = s.unit
    if len(unit.sessions) + unit._opening >= unit.max_sessions:
        s.send(
            Error(
                msg.id,
                ErrorCode.LIMIT_REACHED.value,
                f"this unit holds at most {unit.max_sessions} sessions",
            )
        )
        return
    unit._opening += 1
    unit._nursery.start_soon(unit._create, s, msg)


def _on_session_destroy(s: _Served, msg: SessionDestroy) -> None:
    session = _known_session(s, msg.id, msg.session)
    if session is not None:
        session.closing = True
        s.unit._nursery.start_soon(s.unit._destroy, s, msg, session)


def _on_session_resume(s: _Served, msg: SessionResume) -> None:
    s.unit._nursery.start_soon(s.unit._resume, s, msg)


def _on_prompt_send(s: _Served, msg: PromptSend, waited: bool = False) -> None:
    session = _known_session(s, msg.id, msg.session)
    if session is None:
        return
    running = session.run
    if running is not None and running.scope.cancel_called and not waited:
        # Its cancel came first (a client that left a prompt and sent the next at
        # once, as a `break` out of its chunks does): this one starts after it ends.
        async def after_it() -> None:
            with trio.move_on_after(CANCELLED_WAIT):
                await running.done.wait()
            if not s.closed:
                _on_prompt_send(s, msg, waited=True)

        s.unit._nursery.start_soon(after_it)
        return
    if running is not None:
        s.send(
            Error(
                msg.id,
                ErrorCode.SESSION_BUSY.value,
                f"session {session.id!r} is answering prompt {running.id!r}",
            )
        )
        return
    unit = s.unit
    run = _Run(unit, session, msg.id, msg.text)
    run.sink = s
    s.runs[msg.id] = run
    session.run = run
    session.last_run = None
    unit._set_state(session, State.BUSY)
    unit._nursery.start_soon(run.main)


def _on_call(s: _Served, msg: Call) -> None:
    s.send(
        Error(
            msg.id,
            ErrorCode.UNKNOWN_TYPE.value,
            f"unit {s.unit.name!r} has no method {msg.method!r}: call is for a cmdr daemon",
        )
    )


_Served.HANDLERS = {
    Call: _on_call,
    Hello: _on_hello,
    Ping: _on_ping,
    Pong: _on_pong,
    Error: _on_error,
    Violation: _on_violation,
    StateGet: _on_state_get,
    StateSubscribe: _on_state_subscribe,
    PromptCancel: _on_prompt_cancel,
    InputReply: _on_input_reply,
    SessionCreate: _on_session_create,
    SessionDestroy: _on_session_destroy,
    SessionResume: _on_session_resume,
    PromptSend: _on_prompt_send,
}


@asynccontextmanager
async def open_unit(
    agent: Agent,
    *,
    name: str | None = None,
    max_sessions: int = MAX_SESSIONS,
    replay_limit: int = REPLAY_LIMIT,
    max_frame: int = DEFAULT_MAX_FRAME,
    token: bytes | None = None,
    enrollment: Enrollment | None = None,
    handshake_timeout: float | None = None,
    heartbeat: float | None = HEARTBEAT,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
) -> AsyncIterator[Unit]:
    """Host `agent` as a unit; leaving the block cancels its running prompts.

    Serve connections with `await unit.serve(stream)` (one per connection).
    The arguments are `Unit`'s.
    """
    with unwrap_group():
        async with trio.open_nursery() as nursery:
            unit = Unit(
                agent,
                nursery,
                name=name,
                max_sessions=max_sessions,
                replay_limit=replay_limit,
                max_frame=max_frame,
                token=token,
                enrollment=enrollment,
                handshake_timeout=handshake_timeout,
                heartbeat=heartbeat,
                heartbeat_timeout=heartbeat_timeout,
            )
            await agent.start()
            try:
                yield unit
            finally:
                nursery.cancel_scope.cancel()


async def serve_unit(
    stream: trio.abc.Stream,
    agent: Agent,
    *,
    name: str | None = None,
    max_sessions: int = MAX_SESSIONS,
    replay_limit: int = REPLAY_LIMIT,
    max_frame: int = DEFAULT_MAX_FRAME,
    heartbeat: float | None = HEARTBEAT,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `agent` on one stream until it ends; then cancel what still runs.

    The whole protocol: handshake, sessions, prompts, cancel, state, input.
    """
    async with open_unit(
        agent,
        name=name,
        max_sessions=max_sessions,
        replay_limit=replay_limit,
        max_frame=max_frame,
        heartbeat=heartbeat,
        heartbeat_timeout=heartbeat_timeout,
    ) as unit:
        await unit.serve(stream, task_status=task_status)
