"""The `acp` agent: any agent that speaks the Agent Client Protocol over stdio.

    latis-unit --stdio --agent acp -- gemini --acp
    latis-unit --stdio --agent acp -o cwd=/srv/project -- claude-agent-acp

The unit starts the agent's command (at the first session), says `initialize`
(client capabilities: text files read and written, terminals), then maps
latis onto ACP (docs/agent-acp.md has the whole table):

- `session.create` -> `session/new` (cwd: the unit's working directory, or
  the `cwd` session option, which must lie inside it);
- `session.resume` -> `session/load`, when the agent announced `loadSession`;
- `prompt.send` -> `session/prompt`; its `session/update` notifications become
  chunks (text for `agent_message_chunk`, typed chunks for the rest: nothing
  is dropped), and its stop reason a last chunk of kind `stop`;
- a cancelled prompt -> `session/cancel`, then a bounded wait for the agent's
  answer (stop reason `cancelled`);
- the agent's `session/request_permission` -> an `input.request` of kind
  `permission`; the answer, an option's id or name (or yes/no), picks the
  option; any other answer is taken as no (the first reject option, else the
  outcome `cancelled`).

The unit answers the agent's `fs/read_text_file`, `fs/write_text_file` and
`terminal/*` requests itself, inside the session's working directory: every
path goes through `resolve_inside` and is refused with a JSON-RPC error if it
leads out.

ACP is newline-delimited JSON-RPC 2.0; the SDK is asyncio-only, so this module
speaks it natively from trio. One agent process serves every session of the
unit. Its stderr is always read (the last lines name a crash). It runs in a
process group of its own, owned by a trio system task: leaving the unit (the
end of `trio.run`), or `AcpAgent.aclose`, ends it: EOF on its stdin, then
SIGTERM, then SIGKILL, to the whole group.

Options (`latis-unit --agent acp -o KEY=VALUE ... -- COMMAND ...`):

- `cwd`: the working directory: the agent runs there and its files and
  terminals are confined to it (default: the unit's own);
- `fs`: `rw` (default), `ro` or `off`: which file requests are served;
- `terminal`: `on` (default) or `off`;
- `auth`: an authentication method id to `authenticate` with after `initialize`;
- `sessions`: a JSON file that keeps which agent session each latis session
  is, so that `session.resume` can load it after the unit restarts;
- `timeout`: seconds the agent gets to answer `initialize`, `session/new` and
  `session/load` (default 120);
- `cancel_timeout`: seconds a cancelled prompt waits for the agent to stop
  (default 3);
- `grace`: seconds the agent gets to exit after EOF, and again after SIGTERM
  (default 1).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import trio

from latis_core._plugins.agent import Agent, AgentSession, Reply, SessionNotFound
from latis_core._wire.messages import AgentInfo
from latis_core._os.pathguard import PathRefused, resolve_inside
from latis_core._os.procgroup import group_alive, signal_group, signal_name
from latis_core._version import __version__

__all__ = ["AcpAgent", "AcpError", "AgentExited"]

log = logging.getLogger("latis.agent.acp")

#: The ACP version this client speaks.
PROTOCOL_VERSION = 1
#: The longest line (one JSON-RPC message) accepted from the agent.
MAX_MESSAGE = 64 * 1024 * 1024
#: Events (updates, questions) queued for a running prompt before reading pauses.
QUEUE_LIMIT = 1024
#: Updates kept for a session between prompts (delivered with the next prompt).
IDLE_LIMIT = 256
#: Updates kept for sessions not known yet (sent before `session/new` answered).
ORPHAN_LIMIT = 64
#: Requests from the agent served at once; more are refused.
MAX_HANDLERS = 64
#: stderr lines kept to explain a crash, and the length kept of each.
STDERR_LINES = 20
STDERR_LINE_MAX = 1000
#: The largest file `fs/read_text_file` reads.
MAX_READ = 16 * 1024 * 1024
#: Terminals a session may hold, their default and largest output buffers.
MAX_TERMINALS = 16
TERMINAL_OUTPUT = 1024 * 1024
TERMINAL_OUTPUT_MAX = 4 * 1024 * 1024
#: Seconds a write to the agent may block before the agent counts as hung.
WRITE_TIMEOUT = 30.0

# JSON-RPC error codes.
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
SERVER_BUSY = -32000

_YES = frozenset({"y", "yes", "allow", "ok", "approve", "true", "1"})
_NO = frozenset({"n", "no", "deny", "reject", "false", "0"})

# What a prompt's event queue carries.
_UPDATE, _PERMISSION, _RESULT, _FAILED = range(4)


class AcpError(Exception):
    """The agent answered a request with an error (or broke the protocol)."""

    def __init__(self, message: str, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class AgentExited(AcpError):
    """The agent process ended (or was ended): nothing more can be asked of it."""


class _RpcError(Exception):
    """Answer the agent's request with this JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _rpc_error(error: Any) -> AcpError:
    """An `AcpError` from a JSON-RPC error object, with the agent's details."""
    if not isinstance(error, dict):
        return AcpError(f"the agent answered with a malformed error: {error!r}")
    message = str(error.get("message") or "error")
    code = error.get("code")
    data = error.get("data")
    details = data.get("details") if isinstance(data, dict) else None
    if isinstance(details, str) and details and details not in message:
        message = f"{message}: {details}"
    elif data is not None and details is None:
        text = orjson.dumps(data).decode()
        message = f"{message} {text[:500]}"
    return AcpError(f"{message} (ACP error {code})", code if isinstance(code, int) else None, data)


def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit status {returncode}"


# ---- a prompt's events ------------------------------------------------------------------


class _Events:
    """A session's queue of events for its running prompt (one consumer).

    `put` never blocks; the reader waits for space (`wait_space`) before it
    puts an update, so that a slow controller slows the agent down.
    """

    __slots__ = ("_space", "_wake", "items")

    def __init__(self) -> None:
        self.items: deque[tuple[Any, ...]] = deque()
        self._wake: trio.Event | None = None
        self._space: trio.Event | None = None

    def put(self, item: tuple[Any, ...]) -> None:
        self.items.append(item)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    async def get(self) -> tuple[Any, ...]:
        items = self.items
        while not items:
            self._wake = trio.Event()
            await self._wake.wait()
        item = items.popleft()
        if self._space is not None and len(items) < QUEUE_LIMIT:
            self.release()
        return item

    async def wait_space(self) -> None:
        self._space = space = trio.Event()
        await space.wait()

    def release(self) -> None:
        space = self._space
        if space is not None:
            self._space = None
            space.set()


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


# ---- terminals --------------------------------------------------------------------------


class _Terminal:
    """A command the agent runs (`terminal/create`): its output tail and exit status."""

    def __init__(self, tid: str, process: trio.Process, limit: int) -> None:
        self.id = tid
        self.process = process
        self.limit = limit
        self.output = bytearray()
        self.truncated = False
        self.exited = trio.Event()

    async def pump(self, stream: trio.lowlevel.FdStream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some(65536):
                    output = self.output
                    output += data
                    over = len(output) - self.limit
                    if over > 0:
                        # Keep the tail, cut at a character boundary.
                        while over < len(output) and (output[over] & 0xC0) == 0x80:
                            over += 1
                        del output[:over]
                        self.truncated = True
            await self.process.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            # Cancelled (the session or the agent ends): the command goes too.
            if self.process.returncode is None:
                self.kill(signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await self.process.wait()
            self.exited.set()

    def status(self) -> dict[str, Any]:
        code = self.process.returncode
        if code is None:
            return {}
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return {"exitCode": None, "signal": name}
        return {"exitCode": code, "signal": None}

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.process.returncode is None or not self.exited.is_set():
            signal_group(self.process.pid, sig)


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
                        "clientCapabilities": {"fs": fs, "terminal": agent.terminal},
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


# ---- the agent's requests: files and terminals --------------------------------------------


def _str_param(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise _RpcError(INVALID_PARAMS, f"{name!r} must be a string, got {value!r}")
    return value


def _int_param(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise _RpcError(INVALID_PARAMS, f"{name!r} must be a whole number >= 0, got {value!r}")
    return value


def _read_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _RpcError(RESOURCE_NOT_FOUND, f"no such file: {str(path)!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is a symlink") from None
        raise _RpcError(INTERNAL_ERROR, f"cannot read {str(path)!r}: {exc.strerror}") from None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is not a regular file")
        data = f.read(MAX_READ + 1)
    if len(data) > MAX_READ:
        raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is over {MAX_READ} bytes")
    return data


def _write_file(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _RpcError(INVALID_PARAMS, f"{str(path)!r} is a symlink") from None
        raise _RpcError(INTERNAL_ERROR, f"cannot write {str(path)!r}: {exc.strerror}") from None
    with open(fd, "wb") as f:
        f.write(content)


async def _fs_read(session: _AcpSession, params: dict[str, Any]) -> Any:
    path = resolve_inside(session.root, _str_param(params, "path"))
    line = _int_param(params, "line")
    limit = _int_param(params, "limit")
    data = await trio.to_thread.run_sync(_read_file, path)
    text = data.decode("utf-8", "replace")
    if line is not None or limit is not None:
        lines = text.splitlines(keepends=True)
        first = max((line or 1) - 1, 0)
        text = "".join(lines[first : None if limit is None else first + limit])
    return {"content": text}


async def _fs_write(session: _AcpSession, params: dict[str, Any]) -> Any:
    path = resolve_inside(session.root, _str_param(params, "path"))
    content = _str_param(params, "content")
    await trio.to_thread.run_sync(_write_file, path, content.encode("utf-8", "surrogatepass"))
    return None


async def _terminal_create(session: _AcpSession, params: dict[str, Any]) -> Any:
    command = _str_param(params, "command")
    args = params.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise _RpcError(INVALID_PARAMS, "'args' must be a list of strings")
    env = dict(os.environ)
    for var in params.get("env") or []:
        if not isinstance(var, dict):
            raise _RpcError(INVALID_PARAMS, "'env' must be a list of {name, value}")
        name, value = var.get("name"), var.get("value")
        if not isinstance(name, str) or not isinstance(value, str) or not name or "=" in name:
            raise _RpcError(INVALID_PARAMS, f"bad environment variable {var!r}")
        if "\0" in name or "\0" in value:
            raise _RpcError(INVALID_PARAMS, "an environment variable contains a NUL byte")
        env[name] = value
    cwd = params.get("cwd")
    where = session.root if cwd is None else resolve_inside(session.root, _str_param(params, "cwd"))
    if not where.is_dir():
        raise _RpcError(INVALID_PARAMS, f"the terminal's cwd {str(where)!r} is not a directory")
    if "\0" in command or any("\0" in a for a in args):
        raise _RpcError(INVALID_PARAMS, "the command contains a NUL byte")
    limit = _int_param(params, "outputByteLimit")
    limit = TERMINAL_OUTPUT if limit is None else min(limit, TERMINAL_OUTPUT_MAX)
    if len(session.terminals) >= MAX_TERMINALS:
        raise _RpcError(SERVER_BUSY, f"a session holds at most {MAX_TERMINALS} terminals")
    read_fd, write_fd = os.pipe()
    try:
        process = await trio.lowlevel.open_process(
            [command, *args],
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            cwd=where,
            env=env,
            start_new_session=True,
        )
    except BaseException as exc:
        os.close(read_fd)
        if isinstance(exc, OSError):
            message = f"cannot run {command!r}: {exc.strerror or exc}"
            raise _RpcError(INTERNAL_ERROR, message) from None
        raise
    finally:
        os.close(write_fd)
    session.next_terminal += 1
    terminal = _Terminal(f"term-{session.next_terminal}", process, limit)
    session.terminals[terminal.id] = terminal
    session.proc.spawn(terminal.pump, trio.lowlevel.FdStream(read_fd))
    return {"terminalId": terminal.id}


def _terminal(session: _AcpSession, params: dict[str, Any]) -> _Terminal:
    tid = _str_param(params, "terminalId")
    terminal = session.terminals.get(tid)
    if terminal is None:
        raise _RpcError(INVALID_PARAMS, f"no terminal {tid!r} in this session")
    return terminal


async def _terminal_output(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    result: dict[str, Any] = {
        "output": terminal.output.decode("utf-8", "replace"),
        "truncated": terminal.truncated,
    }
    if terminal.exited.is_set():
        result["exitStatus"] = terminal.status()
    return result


async def _terminal_wait(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    await terminal.exited.wait()
    return terminal.status()


async def _terminal_kill(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    if not terminal.exited.is_set():
        terminal.kill(signal.SIGTERM)
        with trio.move_on_after(1):
            await terminal.exited.wait()
        terminal.kill(signal.SIGKILL)
    return None


async def _terminal_release(session: _AcpSession, params: dict[str, Any]) -> Any:
    terminal = _terminal(session, params)
    terminal.kill(signal.SIGKILL)
    del session.terminals[terminal.id]
    return None


_Handler = Callable[["_AcpSession", dict[str, Any]], Awaitable[Any]]
_HANDLERS: dict[str, _Handler] = {
    "fs/read_text_file": _fs_read,
    "fs/write_text_file": _fs_write,
    "terminal/create": _terminal_create,
    "terminal/output": _terminal_output,
    "terminal/wait_for_exit": _terminal_wait,
    "terminal/kill": _terminal_kill,
    "terminal/release": _terminal_release,
}


# ---- permissions ----------------------------------------------------------------------------


def _option_labels(options: list[dict[str, Any]]) -> list[str]:
    """What the human picks from: the options' names, or their ids if names repeat."""
    names = [str(o.get("name") or o.get("optionId")) for o in options]
    if len(set(names)) == len(names):
        return names
    return [str(o.get("optionId")) for o in options]


def _choose(options: list[dict[str, Any]], answer: str) -> dict[str, Any]:
    """The outcome for the human's answer: the option whose id or name it is
    (or the first allow option for yes, reject option for no); for anything
    else the first reject option, or `cancelled` if there is none."""

    def selected(option: dict[str, Any]) -> dict[str, Any]:
        return {"outcome": "selected", "optionId": option.get("optionId")}

    def first(*kinds: str) -> dict[str, Any] | None:
        for kind in kinds:
            for option in options:
                if option.get("kind") == kind:
                    return option
        return None

    text = answer.strip()
    for key in ("optionId", "name"):
        for option in options:
            if option.get(key) == text:
                return selected(option)
    folded = text.casefold()
    for key in ("optionId", "name"):
        for option in options:
            if str(option.get(key, "")).casefold() == folded:
                return selected(option)
    if folded in _YES:
        allow = first("allow_once", "allow_always")
        return selected(allow) if allow is not None else {"outcome": "cancelled"}
    if folded not in _NO:
        log.info("permission answer %r matches no option: taken as no", answer)
    reject = first("reject_once", "reject_always")
    return selected(reject) if reject is not None else {"outcome": "cancelled"}


# ---- sessions ---------------------------------------------------------------------------


class _AcpSession(AgentSession):
    """A latis session: one session of the agent."""

    def __init__(
        self,
        agent: AcpAgent,
        latis_id: str,
        proc: _Process,
        acp_id: str,
        root: Path,
        mcp_servers: list[Any],
    ) -> None:
        self.agent = agent
        self.latis_id = latis_id
        self.proc = proc
        self.acp_id = acp_id
        self.root = root
        self.mcp_servers = mcp_servers
        self.events = _Events()
        #: True while a prompt runs (updates and questions go to `events`).
        self.active = False
        #: True while `session/load` replays the history (its updates are not kept).
        self.loading = False
        self.idle: deque[dict[str, Any]] = deque()
        self.idle_dropped = 0
        self.terminals: dict[str, _Terminal] = {}
        self.next_terminal = 0
        self._asking: Any = None
        self.closed = False

    # ---- updates from the reader ------------------------------------------------------

    async def on_update(self, update: dict[str, Any]) -> None:
        if self.loading:
            return  # the history session/load replays: the controller has its own
        events = self.events
        while self.active and len(events.items) >= QUEUE_LIMIT and self.proc.dead is None:
            await events.wait_space()
        if self.active:
            events.put((_UPDATE, update))
        else:
            self.keep_idle(update)

    def keep_idle(self, update: dict[str, Any]) -> None:
        if len(self.idle) >= IDLE_LIMIT:
            self.idle.popleft()
            self.idle_dropped += 1
            if self.idle_dropped == 1:
                log.warning(
                    "session %s: more than %d updates between prompts; the oldest are dropped",
                    self.latis_id,
                    IDLE_LIMIT,
                )
        self.idle.append(update)

    # ---- a prompt ---------------------------------------------------------------------

    async def prompt(self, text: str, reply: Reply) -> None:
        proc = await self._live_process()
        events = self.events
        self.active = True
        rid: int | None = None
        try:
            while self.idle:
                await _forward(reply, self.idle.popleft())
            rid = await proc.start_prompt(
                events,
                {"sessionId": self.acp_id, "prompt": [{"type": "text", "text": text}]},
            )
            while True:
                item = await events.get()
                what = item[0]
                if what == _UPDATE:
                    await _forward(reply, item[1])
                elif what == _PERMISSION:
                    await self._permission(reply, item[1], item[2])
                elif item[1] != rid:
                    continue  # the late answer to a prompt given up on
                elif what == _RESULT:
                    result = item[2]
                    await reply.send(kind="stop", data=result if isinstance(result, dict) else {})
                    return
                else:
                    raise item[2]
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._cancel(proc, rid)
            raise
        finally:
            self.active = False
            events.release()
            if rid is not None:
                proc.forget(rid)
            with trio.CancelScope(shield=True):
                await self._settle(proc)

    async def _live_process(self) -> _Process:
        proc = self.proc
        if proc.alive:
            return proc
        reason = proc.dead or "it belongs to another trio run"
        if not self.agent.can_reload:
            raise AgentExited(
                f"this session's agent process has ended ({reason}); "
                "create a new session (a new agent process is started for it)"
            )
        # The agent loads sessions: start a new one and load this session into it.
        proc = await self.agent.process()
        if not proc.load_session:
            raise AgentExited(f"this session's agent process has ended ({reason})")
        await self.agent.load_into(proc, self)
        return proc

    async def _permission(self, reply: Reply, rid: Any, params: Any) -> None:
        proc = self.proc
        options = params.get("options") if isinstance(params, dict) else None
        if not isinstance(options, list) or not all(isinstance(o, dict) for o in options):
            await proc.respond_error(rid, INVALID_PARAMS, "'options' must be a list of options")
            return
        tool = params.get("toolCall")
        title = tool.get("title") if isinstance(tool, dict) else None
        question = str(title) if title else "The agent asks for permission"
        self._asking = rid
        answer: str | None = None
        # The agent may die while the human thinks: then the prompt ends at once.
        with trio.CancelScope() as scope:
            proc.watchers.add(scope)
            try:
                if proc.dead is None:
                    answer = await reply.ask(
                        question, options=_option_labels(options), kind="permission"
                    )
            finally:
                proc.watchers.discard(scope)
        self._asking = None
        if answer is None:
            raise proc.gone()
        await proc.respond(rid, {"outcome": _choose(options, answer)})

    async def _cancel(self, proc: _Process, rid: int | None) -> None:
        """The prompt was cancelled: tell the agent, and wait (bounded) for it to stop."""
        if self._asking is not None:
            await proc.respond(self._asking, {"outcome": {"outcome": "cancelled"}})
            self._asking = None
        if rid is None or proc.dead is not None:
            return
        try:
            await proc.notify("session/cancel", {"sessionId": self.acp_id})
        except AcpError:
            return
        skipped = 0
        with trio.move_on_after(self.agent.cancel_timeout) as scope:
            while True:
                item = await self.events.get()
                if item[0] == _UPDATE:
                    skipped += 1
                elif item[0] == _PERMISSION:
                    await proc.respond(item[1], {"outcome": {"outcome": "cancelled"}})
                elif item[1] == rid:
                    if item[0] == _RESULT:
                        reason = item[2].get("stopReason") if isinstance(item[2], dict) else None
                        log.debug("cancelled prompt stopped: %r", reason)
                    break
        if scope.cancelled_caught:
            log.warning(
                "session %s: the agent did not stop within %g s of session/cancel",
                self.latis_id,
                self.agent.cancel_timeout,
            )
        elif skipped:
            log.debug("session %s: %d updates after cancel not forwarded", self.latis_id, skipped)

    async def _settle(self, proc: _Process) -> None:
        """After a prompt: what is still queued keeps for later, questions are refused."""
        events = self.events
        while events.items:
            item = events.items.popleft()
            if item[0] == _UPDATE:
                self.keep_idle(item[1])
            elif item[0] == _PERMISSION:
                await proc.respond(item[1], {"outcome": {"outcome": "cancelled"}})

    # ---- the end ------------------------------------------------------------------------

    def kill_terminals(self) -> None:
        for terminal in self.terminals.values():
            terminal.kill(signal.SIGKILL)
        self.terminals.clear()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.kill_terminals()
        proc = self.proc
        if proc.sessions.get(self.acp_id) is self:
            del proc.sessions[self.acp_id]
        if proc.alive and proc.close_session:
            try:
                with trio.move_on_after(self.agent.cancel_timeout):
                    await proc.request("session/close", {"sessionId": self.acp_id})
            except AcpError as exc:
                log.info("session/close of %s failed: %s", self.acp_id, exc)


async def _forward(reply: Reply, update: dict[str, Any]) -> None:
    """One `session/update` as a chunk."""
    kind = update.get("sessionUpdate")
    if kind == "agent_message_chunk":
        content = update.get("content")
        if type(content) is dict and content.get("type") == "text":
            text = content.get("text")
            if type(text) is str:
                await reply.send(text)
                return
        await reply.send(kind="agent_message_chunk", data=update)
    elif kind == "agent_thought_chunk":
        content = update.get("content")
        if type(content) is dict and content.get("type") == "text":
            text = content.get("text")
            if type(text) is str:
                await reply.send(text, kind="thought")
                return
        await reply.send(kind="thought", data=update)
    elif kind == "tool_call" or kind == "tool_call_update":
        await reply.send(kind="tool_call", data=update)
    elif kind == "plan":
        await reply.send(kind="plan", data=update)
    else:
        name = kind if isinstance(kind, str) and kind else "session_update"
        await reply.send(kind=name, data=update)


# ---- the adapter ----------------------------------------------------------------------------


def _seconds(options: Mapping[str, str], name: str, default: float) -> float:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"acp agent: option {name!r} must be a number of seconds, got {raw!r}"
        ) from None
    if not value >= 0:
        raise ValueError(f"acp agent: option {name!r} must be >= 0, got {raw!r}")
    return value


class AcpAgent(Agent):
    """Drives an agent that speaks ACP over its stdin and stdout.

    Args:
        argv: the agent's command line.
        cwd: the working directory (default: ours): the agent runs there and
            its file and terminal requests are confined to it.
        fs: "rw", "ro" or "off": the file requests served.
        terminal: whether terminal requests are served.
        auth: an authentication method id to use after `initialize`.
        sessions: a JSON file mapping latis sessions to the agent's, kept
            across restarts of the unit (for `session.resume`).
        timeout: seconds for `initialize`, `session/new` and `session/load`.
        cancel_timeout: seconds a cancelled prompt waits for the agent to stop.
        grace: seconds the agent gets to exit after EOF, and after SIGTERM.
    """

    info: ClassVar[AgentInfo] = AgentInfo("acp", __version__)
    capabilities: ClassVar[tuple[str, ...]] = ("input",)

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        fs: str = "rw",
        terminal: bool = True,
        auth: str | None = None,
        sessions: str | os.PathLike[str] | None = None,
        timeout: float = 120.0,
        cancel_timeout: float = 3.0,
        grace: float = 1.0,
    ) -> None:
        if not argv:
            raise ValueError(
                "acp agent: give the agent's command after --, "
                "e.g. latis-unit --stdio --agent acp -- gemini --experimental-acp"
            )
        if fs not in ("rw", "ro", "off"):
            raise ValueError(f"acp agent: option 'fs' must be rw, ro or off, got {fs!r}")
        root = Path(os.path.realpath(cwd if cwd is not None else os.getcwd()))
        if not root.is_dir():
            raise ValueError(f"acp agent: the working directory {str(root)!r} is not a folder")
        self.argv = tuple(argv)
        self.root = root
        self.fs = fs
        self.terminal = terminal
        self.auth = auth
        self.sessions_file = Path(sessions) if sessions is not None else None
        self.timeout = timeout
        self.cancel_timeout = cancel_timeout
        self.grace = grace
        self._proc: _Process | None = None
        self._starting = trio.Lock()
        #: latis session id -> (agent session id, cwd): what session.resume loads.
        self._known: dict[str, tuple[str, str]] = self._read_known()

    @classmethod
    def from_options(cls, options: Mapping[str, str], command: Sequence[str] = ()) -> AcpAgent:
        known = {"cwd", "fs", "terminal", "auth", "sessions", "timeout", "cancel_timeout", "grace"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"acp agent: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        switch = options.get("terminal", "on").lower()
        if switch not in ("on", "off", "true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"acp agent: option 'terminal' must be on or off, got {switch!r}")
        return cls(
            command,
            cwd=options.get("cwd") or None,
            fs=options.get("fs", "rw"),
            terminal=switch in ("on", "true", "yes", "1"),
            auth=options.get("auth") or None,
            sessions=options.get("sessions") or None,
            timeout=_seconds(options, "timeout", 120.0),
            cancel_timeout=_seconds(options, "cancel_timeout", 3.0),
            grace=_seconds(options, "grace", 1.0),
        )

    def serves(self, method: str) -> bool:
        """Whether requests `method` from the agent are served (per the options)."""
        if method == "fs/read_text_file":
            return self.fs in ("rw", "ro")
        if method == "fs/write_text_file":
            return self.fs == "rw"
        if method.startswith("terminal/"):
            return self.terminal
        return True

    async def start(self) -> None:
        """Start the agent now, so the unit's hello names it (its own name and version).

        If it cannot start, say so in the log and go on: the first session
        tries again and reports why it failed.
        """
        try:
            proc = await self.process()
        except (AcpError, OSError) as exc:
            log.warning("the agent did not start: %s (the first session will try again)", exc)
            return
        name = proc.info.get("name")
        if isinstance(name, str) and name:
            version = proc.info.get("version")
            self.info = AgentInfo(name, str(version or ""))  # type: ignore[misc]

    @property
    def agent_info(self) -> dict[str, Any]:
        """The agent's `agentInfo` from `initialize` (empty before it started)."""
        return dict(self._proc.info) if self._proc is not None else {}

    @property
    def can_reload(self) -> bool:
        return self._proc is not None and self._proc.load_session

    async def process(self) -> _Process:
        """The running agent, started (again) if it is not running."""
        async with self._starting:
            proc = self._proc
            if proc is None or not proc.alive:
                proc = _Process(self)
                await proc.start()
                self._proc = proc
            return proc

    async def open_session(self, session_id: str, options: Mapping[str, Any]) -> AgentSession:
        unknown = sorted(set(options) - {"cwd", "mcp_servers"})
        if unknown:
            raise ValueError(
                f"acp agent: unknown session option {unknown[0]!r} (known: cwd, mcp_servers)"
            )
        cwd = options.get("cwd")
        if cwd is None:
            root = self.root
        else:
            if not isinstance(cwd, str):
                raise ValueError(f"acp agent: session option 'cwd' must be a string, got {cwd!r}")
            root = resolve_inside(self.root, cwd)
            if not root.is_dir():
                raise ValueError(f"acp agent: the session's cwd {str(root)!r} is not a folder")
        mcp = options.get("mcp_servers") or []
        if not isinstance(mcp, list):
            raise ValueError("acp agent: session option 'mcp_servers' must be a list")
        proc = await self.process()
        holder: list[_AcpSession] = []

        def register(result: Any) -> None:
            # In the reader, before anything else it reads: updates right after
            # the answer find their session.
            sid = result.get("sessionId") if isinstance(result, dict) else None
            if not isinstance(sid, str) or not sid:
                raise ValueError(f"session/new answered without a sessionId: {result!r}")
            session = _AcpSession(self, session_id, proc, sid, root, mcp)
            proc.add_session(session)
            holder.append(session)

        try:
            with trio.fail_after(self.timeout):
                await proc.request(
                    "session/new", {"cwd": str(root), "mcpServers": mcp}, on_result=register
                )
        except trio.TooSlowError:
            raise AcpError(
                f"the agent did not answer session/new within {self.timeout:g} s"
            ) from None
        session = holder[0]
        self._remember(session_id, session.acp_id, root)
        return session

    async def resume_session(self, session_id: str) -> AgentSession:
        proc = await self.process()
        if not proc.load_session:
            raise SessionNotFound(session_id)
        acp_id, cwd = self._known.get(session_id, (session_id, str(self.root)))
        try:
            root = resolve_inside(self.root, cwd)
        except PathRefused:
            raise SessionNotFound(session_id) from None
        session = _AcpSession(self, session_id, proc, acp_id, root, [])
        try:
            await self.load_into(proc, session)
        except AgentExited:
            raise
        except AcpError as exc:
            log.info("session/load of %s failed: %s", acp_id, exc)
            raise SessionNotFound(session_id) from exc
        return session

    async def load_into(self, proc: _Process, session: _AcpSession) -> None:
        """`session/load` `session` into agent process `proc`."""
        session.proc = proc
        session.loading = True
        proc.add_session(session)
        try:
            with trio.fail_after(self.timeout):
                await proc.request(
                    "session/load",
                    {
                        "sessionId": session.acp_id,
                        "cwd": str(session.root),
                        "mcpServers": session.mcp_servers,
                    },
                )
        except BaseException as exc:
            if proc.sessions.get(session.acp_id) is session:
                del proc.sessions[session.acp_id]
            if isinstance(exc, trio.TooSlowError):
                raise AcpError(
                    f"the agent did not answer session/load within {self.timeout:g} s"
                ) from None
            raise
        finally:
            session.loading = False
            session.idle.clear()

    async def aclose(self) -> None:
        """End the agent process now (it ends with the trio run anyway)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.alive:
            await proc.stop()

    # ---- latis session -> agent session, kept on disk ------------------------------------

    def _read_known(self) -> dict[str, tuple[str, str]]:
        path = self.sessions_file
        if path is None:
            return {}
        try:
            doc = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("cannot read the sessions file %s: %s", path, exc)
            return {}
        known: dict[str, tuple[str, str]] = {}
        if isinstance(doc, dict):
            for sid, entry in doc.items():
                if (
                    isinstance(entry, dict)
                    and isinstance(entry.get("acp"), str)
                    and isinstance(entry.get("cwd"), str)
                ):
                    known[sid] = (entry["acp"], entry["cwd"])
        return known

    def _remember(self, latis_id: str, acp_id: str, root: Path) -> None:
        known = self._known
        known[latis_id] = (acp_id, str(root))
        while len(known) > 10_000:
            del known[next(iter(known))]
        path = self.sessions_file
        if path is None:
            return
        doc = {sid: {"acp": a, "cwd": c} for sid, (a, c) in known.items()}
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_bytes(orjson.dumps(doc))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write the sessions file %s: %s", path, exc)
