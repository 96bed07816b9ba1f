"""The `acp` adapter itself: `AcpAgent` (options, the agent process it starts,
sessions created, loaded and kept on disk) and `_AcpSession` (a prompt, its
updates as chunks, permission questions, cancellation). The package docstring
has the whole story.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import trio
from latis_agents.acp.elicitation import _question, _response
from latis_agents.acp.errors import INVALID_PARAMS, AcpError, AgentExited
from latis_agents.acp.events import _ELICIT, _PERMISSION, _RESULT, _UPDATE, QUEUE_LIMIT, _Events
from latis_agents.acp.jsonrpc import _Process
from latis_agents.acp.permissions import _choose, _option_labels, _tool_details
from latis_agents.acp.terminal import _Terminal

from latis_core._os.pathguard import PathRefused, resolve_inside
from latis_core._plugins.agent import Agent, AgentSession, Reply, SessionNotFound
from latis_core._version import __version__
from latis_core._wire.messages import AgentInfo

__all__ = ["AcpAgent"]

log = logging.getLogger("latis.agent.acp")

#: Updates kept for a session between prompts (delivered with the next prompt).
IDLE_LIMIT = 256


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
        #: The agent's request a person is asked about now, and the answer that
        #: withdraws it if the prompt is cancelled meanwhile.
        self._asking: tuple[Any, dict[str, Any]] | None = None
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
                elif what == _ELICIT:
                    await self._elicit(reply, item[1], item[2])
                elif item[1] != rid:
                    continue  # the late answer to a prompt given up on
                elif what == _RESULT:
                    result = item[2]
                    usage = result.get("usage") if isinstance(result, dict) else None
                    if isinstance(usage, dict) and usage:
                        # The turn's tokens (PromptResponse.usage, unstable in ACP).
                        await reply.send(kind="usage", data=usage)
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
        self._asking = (rid, {"outcome": {"outcome": "cancelled"}})
        answer: str | None = None
        # The agent may die while the human thinks: then the prompt ends at once.
        with trio.CancelScope() as scope:
            proc.watchers.add(scope)
            try:
                if proc.dead is None:
                    answer = await reply.ask(
                        question, options=_option_labels(options), kind="permission",
                        data=_tool_details(tool, options),
                    )
            finally:
                proc.watchers.discard(scope)
        self._asking = None
        if answer is None:
            raise proc.gone()
        await proc.respond(rid, {"outcome": _choose(options, answer)})

    async def _elicit(self, reply: Reply, rid: Any, params: Any) -> None:
        """A structured question: asked with its schema, answered with content."""
        proc = self.proc
        if not isinstance(params, dict):
            await proc.respond_error(rid, INVALID_PARAMS, "params must be an object")
            return
        question, options, data = _question(params)
        self._asking = (rid, {"action": "cancel"})
        answer: str | None = None
        with trio.CancelScope() as scope:
            proc.watchers.add(scope)
            try:
                if proc.dead is None:
                    answer = await reply.ask(question, options=options, kind="form", data=data)
            finally:
                proc.watchers.discard(scope)
        self._asking = None
        if answer is None:
            raise proc.gone()
        await proc.respond(rid, _response(params, answer))

    async def _cancel(self, proc: _Process, rid: int | None) -> None:
        """The prompt was cancelled: tell the agent, and wait (bounded) for it to stop."""
        if self._asking is not None:
            await proc.respond(*self._asking)
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
                elif item[0] == _ELICIT:
                    await proc.respond(item[1], {"action": "cancel"})
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
            elif item[0] == _ELICIT:
                await proc.respond(item[1], {"action": "cancel"})

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
    elif kind == "usage_update":
        # Context use and the session's cost so far (cumulative): a `usage` chunk.
        await reply.send(kind="usage", data={**update, "cumulative": True})
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
