"""The agent process and the newline-delimited JSON-RPC 2.0 client over its pipes.

`_Process` starts the agent (in a process group of its own, owned by a trio
system task), says `initialize`, sends requests and notifications, matches
responses to requests (`_Call`, `_PromptCall`), routes `session/update` and the
agent's requests to their sessions and handlers, keeps the last lines of its
stderr, and ends it: EOF, SIGTERM, SIGKILL.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import trio
from latis_agents.acp.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    SERVER_BUSY,
    AcpError,
    AgentExited,
    _rpc_error,
    _RpcError,
)
from latis_agents.acp.events import _ELICIT, _FAILED, _PERMISSION, _RESULT, _Events
from latis_agents.acp.handlers import _HANDLERS

from latis_core._os.pathguard import PathRefused
from latis_core._os.procgroup import group_alive, signal_group, signal_name
from latis_core._version import __version__

if TYPE_CHECKING:
    from latis_agents.acp.agent import AcpAgent, _AcpSession

log = logging.getLogger("latis.agent.acp")

#: The ACP version this client speaks.
PROTOCOL_VERSION = 1
#: The longest line (one JSON-RPC message) accepted from the agent.
MAX_MESSAGE = 64 * 1024 * 1024
#: Updates kept for sessions not known yet (sent before `session/new` answered).
ORPHAN_LIMIT = 64
#: Requests from the agent served at once; more are refused.
MAX_HANDLERS = 64
#: stderr lines kept to explain a crash, and the length kept of each.
STDERR_LINES = 20
STDERR_LINE_MAX = 1000
#: Seconds a write to the agent may block before the agent counts as hung.
WRITE_TIMEOUT = 30.0


def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit status {returncode}"


# ---- pending requests to the agent ---------------------------------------------------------


class _Call:
    """A request to the agent that waits for its response."""

    __slots__ = ("done", "error", "on_result", "result")

    def __init__(self, on_result: Callable[[Any], None] | None = None) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: AcpError | None = None
        self.on_result = on_result

    def resolve(self, msg: dict[str, Any]) -> None:
        if "error" in msg and msg["error"] is not None:
            self.error = _rpc_error(msg["error"])
        else:
            self.result = msg.get("result")
            if self.on_result is not None:
                try:
                    self.on_result(self.result)
                except Exception as exc:
                    self.error = AcpError(f"the agent answered with a malformed result: {exc}")
        self.done.set()

    def fail(self, exc: AcpError) -> None:
        self.error = exc
        self.done.set()


class _PromptCall:
    """A `session/prompt` in flight: its response joins the session's events, in order."""

    __slots__ = ("events", "rid")

    def __init__(self, events: _Events, rid: int) -> None:
        self.events = events
        self.rid = rid

    def resolve(self, msg: dict[str, Any]) -> None:
        if "error" in msg and msg["error"] is not None:
            self.events.put((_FAILED, self.rid, _rpc_error(msg["error"])))
        else:
            self.events.put((_RESULT, self.rid, msg.get("result")))

    def fail(self, exc: AcpError) -> None:
        self.events.put((_FAILED, self.rid, exc))


# ---- one agent process --------------------------------------------------------------------


class _Process:
    """One running agent: its pipes, its requests in flight, its sessions."""

    def __init__(self, agent: AcpAgent) -> None:
        self.agent = agent
        self.token = trio.lowlevel.current_trio_token()
        self.process: trio.Process | None = None
        self._stdin: trio.abc.SendStream | None = None
        self._write_lock = trio.Lock()
        self._next_id = 0
        self._pending: dict[int, _Call | _PromptCall] = {}
        #: Sessions by the agent's session id.
        self.sessions: dict[str, _AcpSession] = {}
        self._orphans: deque[tuple[str, Any]] = deque(maxlen=ORPHAN_LIMIT)
        self._nursery: trio.Nursery | None = None
        self._handlers = 0
        self._stop = trio.Event()
        self._done = trio.Event()
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr_done = trio.Event()
        #: Why it can no longer be used, once it cannot.
        self.dead: AgentExited | None = None
        #: Scopes to cancel when it can no longer be used (questions to the human).
        self.watchers: set[trio.CancelScope] = set()
        #: From the agent's `initialize` answer.
        self.info: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}

    # ---- life ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the agent and say `initialize` (and `authenticate`, if configured)."""
        ready = trio.Event()
        trio.lowlevel.spawn_system_task(self._main, ready, name=f"acp agent {self.agent.argv[0]}")
        await ready.wait()
        if self.dead is not None:
            raise self.gone()
        agent = self.agent
        fs = {"readTextFile": agent.fs in ("rw", "ro"), "writeTextFile": agent.fs == "rw"}
        try:
            with trio.fail_after(agent.timeout):
                result = await self.request(
                    "initialize",
                    {
                        "protocolVersion": PROTOCOL_VERSION,
                        "clientCapabilities": {
                            "fs": fs, "terminal": agent.terminal,
                            # Structured questions (unstable in ACP): asked in the inbox.
                            "elicitation": {"form": {}},
                        },
                        "clientInfo": {"name": "latis", "title": "latis", "version": __version__},
                    },
                )
                if not isinstance(result, dict):
                    raise AcpError(f"the agent answered initialize with {result!r}")
                version = result.get("protocolVersion")
                if version != PROTOCOL_VERSION:
                    raise AcpError(
                        f"the agent speaks ACP version {version!r}; latis speaks {PROTOCOL_VERSION}"
                    )
                info = result.get("agentInfo")
                self.info = info if isinstance(info, dict) else {}
                caps = result.get("agentCapabilities")
                self.capabilities = caps if isinstance(caps, dict) else {}
                if agent.auth:
                    await self.request("authenticate", {"methodId": agent.auth})
        except trio.TooSlowError:
            await self.stop()
            raise AcpError(
                f"the agent did not answer initialize within {agent.timeout:g} s"
            ) from None
        except BaseException:
            await self.stop()
            raise
        log.info(
            "agent %s %s started (pid %s), capabilities %s",
            self.info.get("name", agent.argv[0]),
            self.info.get("version", ""),
            self.process.pid if self.process else "?",
            self.capabilities,
        )

    @property
    def load_session(self) -> bool:
        return self.capabilities.get("loadSession") is True

    @property
    def close_session(self) -> bool:
        caps = self.capabilities.get("sessionCapabilities")
        return isinstance(caps, dict) and caps.get("close") is not None

    @property
    def alive(self) -> bool:
        if self.dead is not None:
            return False
        try:
            return trio.lowlevel.current_trio_token() is self.token
        except RuntimeError:
            return False

    async def stop(self) -> None:
        """End the agent (EOF, SIGTERM, SIGKILL) and wait until it has."""
        self._stop.set()
        with trio.CancelScope(shield=True):
            await self._done.wait()

    async def _main(self, ready: trio.Event) -> None:
        # A system task: it must not raise.
        agent = self.agent
        try:
            self.process = await trio.lowlevel.open_process(
                list(agent.argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=agent.root,
                start_new_session=True,
            )
        except OSError as exc:
            self.dead = AgentExited(
                f"cannot start the agent {' '.join(agent.argv)!r}: {exc.strerror or exc}"
            )
            ready.set()
            self._done.set()
            return
        except BaseException as exc:  # cancelled while starting
            self.dead = AgentExited(f"the agent was not started: {exc!r}")
            ready.set()
            self._done.set()
            return
        process = self.process
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self._stdin = process.stdin
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._read_stdout, process.stdout)
                nursery.start_soon(self._read_stderr, process.stderr)
                ready.set()
                try:
                    await self._stop.wait()
                finally:
                    # Terminals first: their tasks would otherwise wait on them.
                    for session in list(self.sessions.values()):
                        session.kill_terminals()
                    nursery.cancel_scope.cancel()
        except Exception:
            log.exception("the ACP client failed")
        finally:
            ready.set()
            with trio.CancelScope(shield=True):
                try:
                    await self._end(process)
                except Exception:
                    log.exception("ending the agent failed")
                self._done.set()

    async def _end(self, process: trio.Process) -> None:
        if self.dead is None:
            self.dead = AgentExited("the agent was stopped (the unit is ending)")
        self._fail_all(self.dead)
        for session in list(self.sessions.values()):
            session.kill_terminals()
        grace = self.agent.grace
        if self._stdin is not None:
            try:
                await self._stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        with trio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            log.info("the agent did not exit %g s after EOF: SIGTERM", grace)
            signal_group(process.pid, signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
        if process.returncode is None:
            log.warning("the agent did not exit %g s after SIGTERM: SIGKILL", grace)
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        # What the agent started in its group and left behind goes too.
        if signal_group(process.pid, signal.SIGTERM):
            with trio.move_on_after(grace):
                # (no event says a process group is empty: poll)
                while group_alive(process.pid):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            signal_group(process.pid, signal.SIGKILL)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()

    def gone(self) -> AgentExited:
        """A fresh error saying why the agent can no longer be used."""
        return AgentExited(str(self.dead) if self.dead is not None else "the agent is gone")

    def _fail_all(self, exc: AgentExited) -> None:
        pending, self._pending = self._pending, {}
        for call in pending.values():
            call.fail(AgentExited(str(exc)))
        for session in self.sessions.values():
            session.events.release()
        for scope in self.watchers:
            scope.cancel()

    async def _crashed(self) -> None:
        """stdout ended: the agent is gone (or going). Say why, as well as we can."""
        process = self.process
        assert process is not None
        with trio.move_on_after(max(self.agent.grace, 0.5)):
            await process.wait()
        with trio.move_on_after(0.5):
            await self._stderr_done.wait()
        what = _exit_text(process.returncode)
        if process.returncode is None:
            what = "closed its stdout"
        message = f"the agent process ended ({what})"
        if self.stderr_tail:
            message += "; its last stderr lines:\n" + "\n".join(self.stderr_tail)
        else:
            message += " and wrote nothing to stderr"
        if self.dead is None:
            self.dead = AgentExited(message)
        log.warning("%s", message)
        self._fail_all(self.dead)
        self._stop.set()

    # ---- reading ----------------------------------------------------------------------

    async def _read_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        buf = b""
        try:
            while data := await stream.receive_some(65536):
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._stderr_line(line)
                if len(buf) > STDERR_LINE_MAX * 4:
                    self._stderr_line(buf)
                    buf = b""
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if buf:
                self._stderr_line(buf)
            self._stderr_done.set()

    def _stderr_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if len(line) > STDERR_LINE_MAX:
            line = line[:STDERR_LINE_MAX] + "..."
        self.stderr_tail.append(line)
        log.info("agent stderr: %s", line)

    async def _read_stdout(self, stream: trio.abc.ReceiveStream) -> None:
        buf = bytearray()
        receive = stream.receive_some
        try:
            while True:
                data = await receive(1 << 20)
                if not data:
                    break
                start = 0
                if buf:
                    buf += data
                    data = bytes(buf)
                    buf.clear()
                find = data.find
                while (end := find(b"\n", start)) >= 0:
                    if end > start:
                        await self._dispatch(bytes(data[start:end]))
                    start = end + 1
                if start < len(data):
                    buf += data[start:]
                    if len(buf) > MAX_MESSAGE:
                        self.dead = AgentExited(
                            f"the agent wrote a message over {MAX_MESSAGE} bytes: stopped it"
                        )
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception as exc:  # a bug here: stop the agent rather than hang
            log.exception("reading the agent's output failed")
            if self.dead is None:
                self.dead = AgentExited(f"the ACP client failed: {type(exc).__name__}: {exc}")
        await self._crashed()

    async def _dispatch(self, line: bytes) -> None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            text = line.decode("utf-8", "replace").strip()
            if text:
                log.warning("the agent wrote a line that is not JSON-RPC: %.200s", text)
            return
        if type(msg) is not dict:
            log.warning("the agent wrote JSON that is not a message: %.200s", line)
            return
        method = msg.get("method")
        if method is None:
            rid = msg.get("id")
            call = self._pending.pop(rid, None) if type(rid) is int else None
            if call is not None:
                call.resolve(msg)
            else:
                log.debug("a response to no request in flight: %.200s", line)
            return
        params = msg.get("params")
        if "id" in msg:
            self._on_request(msg["id"], str(method), params)
        elif method == "session/update":
            await self._on_update(params)
        else:
            log.debug("ignored a notification %r from the agent", method)

    async def _on_update(self, params: Any) -> None:
        if not isinstance(params, dict):
            log.warning("a session/update without params: %r", params)
            return
        sid = params.get("sessionId")
        update = params.get("update")
        if not isinstance(update, dict):
            update = {"sessionUpdate": "session_update", "update": update}
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            self._orphans.append((str(sid), update))
            return
        await session.on_update(update)

    # ---- writing ----------------------------------------------------------------------

    async def _send(self, obj: dict[str, Any]) -> None:
        data = orjson.dumps(obj) + b"\n"
        # Shielded: a write cut in the middle would garble every later message.
        with trio.CancelScope(shield=True):
            if self.dead is not None:
                raise self.gone()
            stdin = self._stdin
            if stdin is None:
                raise AgentExited("the agent is not running")
            with trio.move_on_after(WRITE_TIMEOUT) as scope:
                async with self._write_lock:
                    try:
                        await stdin.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        if self.dead is None:
                            raise AgentExited("the agent closed its stdin") from None
                        raise self.gone() from None
            if scope.cancelled_caught:
                self.dead = AgentExited(
                    f"the agent read nothing of its stdin for {WRITE_TIMEOUT:g} s: stopped it"
                )
                self._fail_all(self.dead)
                self._stop.set()
                raise self.gone()

    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    async def request(
        self, method: str, params: dict[str, Any], on_result: Callable[[Any], None] | None = None
    ) -> Any:
        """Send a request and return its result.

        Raises:
            AcpError: the agent answered with an error.
            AgentExited: the agent is gone.
        """
        if self.dead is not None:
            raise self.gone()
        rid = self._new_id()
        call = _Call(on_result)
        self._pending[rid] = call
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            await call.done.wait()
        finally:
            self._pending.pop(rid, None)
        if call.error is not None:
            raise call.error
        return call.result

    async def start_prompt(self, events: _Events, params: dict[str, Any]) -> int:
        """Send `session/prompt`; its response will arrive in `events`. Return its id."""
        if self.dead is not None:
            raise self.gone()
        rid = self._new_id()
        self._pending[rid] = _PromptCall(events, rid)
        try:
            await self._send(
                {"jsonrpc": "2.0", "id": rid, "method": "session/prompt", "params": params}
            )
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return rid

    def forget(self, rid: int) -> None:
        """Stop waiting for the response to request `rid`."""
        self._pending.pop(rid, None)

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def respond(self, rid: Any, result: Any) -> None:
        try:
            await self._send({"jsonrpc": "2.0", "id": rid, "result": result})
        except AcpError:
            pass  # it is gone: nobody waits for the answer

    async def respond_error(self, rid: Any, code: int, message: str) -> None:
        try:
            await self._send(
                {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
            )
        except AcpError:
            pass

    def add_session(self, session: _AcpSession) -> None:
        self.sessions[session.acp_id] = session
        if self._orphans:
            kept: deque[tuple[str, Any]] = deque(maxlen=ORPHAN_LIMIT)
            for sid, update in self._orphans:
                if sid == session.acp_id:
                    session.keep_idle(update)
                else:
                    kept.append((sid, update))
            self._orphans = kept

    # ---- requests from the agent ----------------------------------------------------------

    def _on_request(self, rid: Any, method: str, params: Any) -> None:
        nursery = self._nursery
        if nursery is None:
            return
        if method == "elicitation/create":
            session = self._session_of(params)
            if session is not None and session.active:
                session.events.put((_ELICIT, rid, params))
                return
            nursery.start_soon(self.respond, rid, {"action": "cancel"})
            return
        if method == "session/request_permission":
            session = self._session_of(params)
            if session is not None and session.active:
                session.events.put((_PERMISSION, rid, params))
                return
            # No prompt runs in that session: nobody can answer.
            nursery.start_soon(self.respond, rid, {"outcome": {"outcome": "cancelled"}})
            return
        if self._handlers >= MAX_HANDLERS:
            nursery.start_soon(
                self.respond_error,
                rid,
                SERVER_BUSY,
                f"the client serves at most {MAX_HANDLERS} requests at once",
            )
            return
        self._handlers += 1
        nursery.start_soon(self._serve, rid, method, params)

    def _session_of(self, params: Any) -> _AcpSession | None:
        if not isinstance(params, dict):
            return None
        sid = params.get("sessionId")
        return self.sessions.get(sid) if isinstance(sid, str) else None

    async def _serve(self, rid: Any, method: str, params: Any) -> None:
        try:
            handler = _HANDLERS.get(method)
            if handler is None or not self.agent.serves(method):
                raise _RpcError(METHOD_NOT_FOUND, f"the client has no method {method!r}")
            if not isinstance(params, dict):
                raise _RpcError(INVALID_PARAMS, f"{method} needs params (an object)")
            session = self._session_of(params)
            if session is None:
                raise _RpcError(INVALID_PARAMS, f"{method}: no session {params.get('sessionId')!r}")
            result = await handler(session, params)
        except _RpcError as exc:
            await self.respond_error(rid, exc.code, str(exc))
        except PathRefused as exc:
            log.warning("refused the agent's %s: %s", method, exc)
            await self.respond_error(rid, INVALID_PARAMS, str(exc))
        except Exception as exc:
            log.exception("serving the agent's %s failed", method)
            await self.respond_error(rid, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        else:
            await self.respond(rid, result)
        finally:
            self._handlers -= 1

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._nursery is None:
            raise _RpcError(INTERNAL_ERROR, "the client is shutting down")
        self._nursery.start_soon(fn, *args)
