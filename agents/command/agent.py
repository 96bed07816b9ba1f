"""The `command` adapter itself: `CommandAgent` (options, presets applied, the
command line of a run), its sessions, and one run of the command (its process
group, stdin, stdout as chunks, stderr's tail, timeout, and its end). The
package docstring has the whole story.
"""

from __future__ import annotations

import codecs
import errno
import logging
import math
import os
import shlex
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

import trio
from latis_agents.command.claude_stream import JSON_LINE_LIMIT, _ClaudeStream
from latis_agents.command.codex_stream import _CodexStream
from latis_agents.command.presets import FILE, PRESETS, PROMPT, SESSION, Preset

from latis_core._os.procgroup import group_alive, signal_group, signal_name
from latis_core._plugins.agent import Agent, AgentSession, Reply
from latis_core._version import __version__
from latis_core._wire.messages import AgentInfo

__all__ = ["CommandAgent", "CommandFailed"]

log = logging.getLogger("latis.agent.command")

#: Bytes of a command's stderr kept for its error message.
STDERR_LIMIT = 64 * 1024
#: Lines of stderr quoted in an error message, and characters at most.
ERROR_LINES = 20
ERROR_CHARS = 4000
#: In line mode, a line longer than this is sent in pieces of this many characters.
LINE_LIMIT = 64 * 1024
#: Bytes asked for per read of stdout and stderr.
READ_SIZE = 64 * 1024
#: Seconds we keep reading a pipe after the command's group is gone, while
#: something outside the group (a process that left it) still holds it open.
LINGER = 1.0
#: Seconds to wait for processes to vanish after SIGKILL (one stuck in the
#: kernel may take a moment).
KILL_WAIT = 5.0

DEFAULT_GRACE = 3.0
DEFAULT_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
INPUTS = ("arg", "stdin", "file")
MODES = ("line", "bytes")
FORMATS = ("text", "claude-stream-json", "codex-json")


_OPTIONS = (
    "input",
    "mode",
    "format",
    "cwd",
    "clean_env",
    "pass_env",
    "grace",
    "timeout",
    "preset",
    "continue",
    "env.NAME",
)
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class CommandFailed(Exception):
    """A run of the command failed: it could not start, exited non-zero or timed out.

    The unit sends the message as the prompt's `agent_error`.
    """


def _fail(option: str, message: str) -> ValueError:
    return ValueError(f"command agent: option {option!r} {message}")


def _seconds(options: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = options.get(name)
    if raw is None:
        return default
    if name == "timeout" and raw.strip().lower() in ("", "none"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _fail(name, f"must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise _fail(name, f"must be a finite number of seconds, got {raw!r}")
    if name == "timeout" and value <= 0:
        raise _fail(name, f"must be more than 0 seconds (or none), got {raw!r}")
    if value < 0:
        raise _fail(name, f"must be 0 or more seconds, got {raw!r}")
    return value


def _flag(options: Mapping[str, str], name: str, default: bool) -> bool:
    raw = options.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _fail(name, f"must be true or false, got {raw!r}")


def _choice(options: Mapping[str, str], name: str, choices: Sequence[str]) -> str:
    raw = options.get(name, choices[0])
    if raw not in choices:
        raise _fail(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _env_name(name: str, option: str) -> str:
    if not name or "=" in name or "\0" in name:
        raise _fail(option, "needs a variable name without '=' (as env.NAME=VALUE)")
    return name


def _has(words: Sequence[str], placeholder: str) -> bool:
    return any(placeholder in word for word in words)


class CommandAgent(Agent):
    """Runs a command-line agent once per prompt.

    Args:
        command: the command line; `{prompt}` or `{file}` in a word marks where
            the prompt (or its file's path) goes, else it is appended.
        input: how the prompt reaches the command: "arg", "stdin" or "file".
        mode: how stdout becomes chunks: "line" or "bytes".
        format: what stdout holds: "text", "claude-stream-json" (Claude
            Code's JSON lines: text deltas become text chunks, tool uses
            `tool_call` chunks, the result's tokens and cost a `usage` chunk),
            or "codex-json" (`codex exec --json` events: messages as text,
            the turn's tokens as a `usage` chunk).
        cwd: the command's working directory (None: the unit's).
        env: environment variables to add.
        clean_env: start from an empty environment rather than the unit's.
        pass_env: with `clean_env`, the unit's variables to keep.
        grace: seconds between SIGTERM and SIGKILL when a run is ended.
        timeout: seconds one run may take (None: no limit).
        first, then: with `continue` on, the words added to a session's first
            prompt and to its later ones (`{session}`: the session's UUID).

    Raises:
        ValueError: a value is not valid (the message names the option).
    """

    info: ClassVar[AgentInfo] = AgentInfo("command", __version__)

    def __init__(
        self,
        command: Sequence[str],
        *,
        input: str = "arg",
        mode: str = "line",
        format: str = "text",
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        pass_env: Sequence[str] = DEFAULT_PASS_ENV,
        grace: float = DEFAULT_GRACE,
        timeout: float | None = None,
        first: Sequence[str] = (),
        then: Sequence[str] = (),
    ) -> None:
        if not command:
            raise ValueError("command agent: no command to run")
        if input not in INPUTS:
            raise _fail("input", f"must be one of {', '.join(INPUTS)}, got {input!r}")
        if mode not in MODES:
            raise _fail("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        if format not in FORMATS:
            raise _fail("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
        if format != "text" and mode != "line":
            raise _fail("mode", f"must be line with format={format} (it reads JSON lines)")
        if not grace >= 0 or not math.isfinite(grace):
            raise _fail("grace", f"must be 0 or more seconds, got {grace!r}")
        if timeout is not None and (not timeout > 0 or not math.isfinite(timeout)):
            raise _fail("timeout", f"must be more than 0 seconds, got {timeout!r}")
        words = tuple(command) + tuple(first) + tuple(then)
        if any("\0" in word for word in words):
            raise ValueError("command agent: the command has a NUL character")
        if input != "arg" and _has(words, PROMPT):
            hint = " (use {file})" if input == "file" else ""
            raise _fail("input", f"is {input} but the command has {PROMPT}{hint}")
        if input != "file" and _has(words, FILE):
            raise _fail("input", f"is {input} but the command has {FILE} (use input=file)")
        if cwd is not None:
            cwd = os.path.abspath(cwd)
            if not os.path.isdir(cwd):
                raise _fail("cwd", f"must be an existing directory, got {cwd!r}")
        for name, value in (env or {}).items():
            _env_name(name, f"env.{name}")
            if "\0" in value:
                raise _fail(f"env.{name}", "has a NUL character")
        for name in pass_env:
            _env_name(name, "pass_env")
        self.command = tuple(command)
        self.input = input
        self.mode = mode
        self.format = format
        self.cwd = cwd
        self.env = dict(env or {})
        self.clean_env = clean_env
        self.pass_env = tuple(pass_env)
        self.grace = grace
        self.timeout = timeout
        self.first = tuple(first)
        self.then = tuple(then)

    @classmethod
    def from_options(cls, options: Mapping[str, str], command: Sequence[str] = ()) -> CommandAgent:
        preset: Preset | None = None
        name = options.get("preset")
        if name is not None:
            preset = PRESETS.get(name)
            if preset is None:
                raise _fail("preset", f"must be one of {', '.join(PRESETS)}, got {name!r}")
            options = {**preset.options, **options}
        env: dict[str, str] = {}
        for key, value in options.items():
            if key.startswith("env."):
                env[_env_name(key[4:], key)] = value
            elif key not in _OPTIONS:
                raise ValueError(
                    f"command agent: unknown option {key!r} (known: {', '.join(_OPTIONS)})"
                )
        if not command:
            if preset is None:
                raise ValueError(
                    "command agent: no command: give one after -- "
                    "(latis-unit --agent command -- claude -p) "
                    f"or a preset (-o preset=NAME: {', '.join(PRESETS)})"
                )
            command = preset.command
        clean_env = _flag(options, "clean_env", False)
        pass_env: tuple[str, ...] = DEFAULT_PASS_ENV
        if "pass_env" in options:
            if not clean_env:
                raise _fail("pass_env", "applies only with clean_env=true")
            pass_env = tuple(n.strip() for n in options["pass_env"].split(",") if n.strip())
        continues = preset is not None and preset.continues
        keep = _flag(options, "continue", continues)
        if keep and not continues:
            which = f"preset {name!r}" if preset is not None else "a command without a preset"
            supported = ", ".join(n for n, p in PRESETS.items() if p.continues)
            raise _fail(
                "continue", f"is not supported by {which} (only by the presets {supported})"
            )
        grace = _seconds(options, "grace", DEFAULT_GRACE)
        assert grace is not None
        return cls(
            command,
            input=_choice(options, "input", INPUTS),
            mode=_choice(options, "mode", MODES),
            format=_choice(options, "format", FORMATS),
            cwd=options.get("cwd") or None,
            env=env,
            clean_env=clean_env,
            pass_env=pass_env,
            grace=grace,
            timeout=_seconds(options, "timeout", None),
            first=preset.first if keep and preset is not None else (),
            then=preset.then if keep and preset is not None else (),
        )

    @property
    def display(self) -> str:
        """The command line as configured, for messages."""
        return shlex.join(self.command)

    async def open_session(self, session_id: str, options: Mapping[str, Any]) -> AgentSession:
        if options:
            raise ValueError(
                f"command agent: a session takes no options, got {sorted(options)} "
                "(the unit's -o options apply to every session)"
            )
        return CommandSession(self)

    def environment(self) -> dict[str, str] | None:
        """The command's environment (None: the unit's own, unchanged)."""
        if not self.clean_env:
            return {**os.environ, **self.env} if self.env else None
        base = {name: os.environ[name] for name in self.pass_env if name in os.environ}
        return {**base, **self.env}

    def argv(self, text: str, extra: Sequence[str], path: str | None) -> list[str]:
        """The command line of one run for prompt `text` (or its file at `path`)."""
        words = [*self.command, *extra]
        if self.input == "stdin":
            return words
        value, placeholder = (path, FILE) if path is not None else (text, PROMPT)
        if _has(words, placeholder):
            return [word.replace(placeholder, value) for word in words]
        return [*words, value]

    async def run(self, text: str, reply: Reply, extra: Sequence[str] = ()) -> None:
        """Run the command once for prompt `text`, streaming its stdout to `reply`.

        Raises:
            CommandFailed: it could not start, it exited non-zero, or it timed out.
        """
        if self.input == "arg" and "\0" in text:
            raise CommandFailed(
                "the prompt has a NUL character, which cannot be passed as an argument "
                "(use -o input=stdin or -o input=file)"
            )
        path = None
        if self.input == "file":
            path = await trio.to_thread.run_sync(_write_temp, text)
        try:
            argv = self.argv(text, extra, path)
            data = text.encode("utf-8", "surrogateescape") if self.input == "stdin" else None
            await _Run(self, argv, data).main(reply)
        finally:
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass


class CommandSession(AgentSession):
    """A working context: each prompt is one run of the command.

    With `continue` (the claude preset), the session has a UUID of its own:
    the first prompt starts that conversation (`--session-id UUID`), later
    ones resume it (`--resume UUID`). Until a run has succeeded, the
    conversation may not exist: a first prompt that fails or is cancelled
    makes the next one start a new conversation under a new UUID.
    """

    def __init__(self, agent: CommandAgent) -> None:
        self.agent = agent
        self.conversation = str(uuid.uuid4())
        self.started = False

    async def prompt(self, text: str, reply: Reply) -> None:
        agent = self.agent
        words = agent.then if self.started else agent.first
        extra = [word.replace(SESSION, self.conversation) for word in words]
        try:
            await agent.run(text, reply, extra)
        except BaseException:
            if not self.started:
                self.conversation = str(uuid.uuid4())
            raise
        self.started = True


def _write_temp(text: str) -> str:
    fd, path = tempfile.mkstemp(prefix="latis-prompt-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    except BaseException:
        os.unlink(path)
        raise
    return path


class _Linger:
    """Bounds the reads of a pipe once the command's process group is gone.

    Until `start`, reads wait as long as it takes; after it, each read gives
    up after LINGER seconds without data (something that left the group holds
    the pipe).
    """

    def __init__(self) -> None:
        self.on = False
        self.scopes: set[trio.CancelScope] = set()

    def start(self) -> None:
        self.on = True
        deadline = trio.current_time() + LINGER
        for scope in self.scopes:
            scope.deadline = deadline

    async def receive(self, stream: trio.abc.ReceiveStream) -> bytes:
        """The next bytes from `stream`; b"" at EOF or when lingering ran out."""
        deadline = trio.current_time() + LINGER if self.on else math.inf
        with trio.CancelScope(deadline=deadline) as scope:
            self.scopes.add(scope)
            try:
                return bytes(await stream.receive_some(READ_SIZE))
            finally:
                self.scopes.discard(scope)
        log.warning("gave up reading a pipe that a process outside the group still holds")
        return b""


class _Run:
    """One run of the command."""

    def __init__(self, agent: CommandAgent, argv: list[str], data: bytes | None) -> None:
        self.agent = agent
        self.argv = argv
        self.data = data
        self.stderr = bytearray()
        self.linger = _Linger()
        self.parser: _ClaudeStream | _CodexStream | None = None

    async def main(self, reply: Reply) -> None:
        agent = self.agent
        if agent.format == "claude-stream-json":
            self.parser = _ClaudeStream(reply)
        elif agent.format == "codex-json":
            self.parser = _CodexStream(reply)
        try:
            process = await trio.lowlevel.open_process(
                self.argv,
                stdin=subprocess.PIPE if self.data is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=agent.cwd,
                env=agent.environment(),
                start_new_session=True,
            )
        except OSError as exc:
            raise CommandFailed(_start_error(exc, self.argv)) from exc
        try:
            with trio.move_on_after(
                agent.timeout if agent.timeout is not None else math.inf
            ) as timer:
                await self._serve(process, reply)
        finally:
            with trio.CancelScope(shield=True):
                await _end_group(process, agent.grace)
                for pipe in (process.stdin, process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()
        if timer.cancelled_caught:
            raise CommandFailed(
                f"{agent.display} timed out after {agent.timeout:g} s{self._stderr_tail()}"
            )
        code = process.returncode
        said = self.parser.error if self.parser is not None else None
        if code:
            said = f": {said}" if said else ""
            raise CommandFailed(f"{agent.display} {_exit_words(code)}{said}{self._stderr_tail()}")
        if said:
            raise CommandFailed(f"{agent.display} reported an error: {said}")

    async def _serve(self, process: trio.Process, reply: Reply) -> None:
        assert process.stdout is not None and process.stderr is not None
        async with trio.open_nursery() as nursery:
            feeding = trio.CancelScope()
            if self.data is not None:
                assert process.stdin is not None
                nursery.start_soon(self._feed, process.stdin, self.data, feeding)
            nursery.start_soon(self._drain, process.stderr)
            nursery.start_soon(self._pump, process.stdout, reply)
            await process.wait()
            # It has exited: end what it left running in its group, stop
            # feeding stdin, and read the pipes to their end.
            await _end_group(process, self.agent.grace)
            feeding.cancel()
            self.linger.start()

    async def _feed(self, stdin: trio.abc.SendStream, data: bytes, scope: trio.CancelScope) -> None:
        with scope:
            try:
                if data:
                    await stdin.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it stopped reading: its business
        with trio.CancelScope(shield=True):
            await stdin.aclose()

    async def _drain(self, stderr: trio.abc.ReceiveStream) -> None:
        tail = self.stderr
        receive = self.linger.receive
        while data := await receive(stderr):
            tail += data
            if len(tail) > STDERR_LIMIT:
                del tail[: len(tail) - STDERR_LIMIT]

    async def _pump(self, stdout: trio.abc.ReceiveStream, reply: Reply) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        receive = self.linger.receive
        if self.agent.mode == "bytes":
            send = reply.send
            while data := await receive(stdout):
                text = decoder.decode(data)
                if text:
                    await send(text)
            rest = decoder.decode(b"", True)
            if rest:
                await send(rest)
            return
        line: Callable[[str], Awaitable[None]] = reply.send
        limit = LINE_LIMIT
        if self.parser is not None:
            line, limit = self.parser.line, JSON_LINE_LIMIT
        parts: list[str] = []  # the line so far, when it spans reads
        size = 0
        while data := await receive(stdout):
            text = decoder.decode(data)
            start = 0
            while (end := text.find("\n", start)) >= 0:
                piece = text[start : end + 1]
                if parts:
                    piece = "".join(parts) + piece
                    parts.clear()
                    size = 0
                await line(piece)
                start = end + 1
            if start < len(text):
                parts.append(text[start:] if start else text)
                size += len(text) - start
                if size >= limit:
                    long = "".join(parts)
                    while len(long) >= limit:
                        await line(long[:limit])
                        long = long[limit:]
                    parts[:] = [long] if long else []
                    size = len(long)
        rest = "".join(parts) + decoder.decode(b"", True)
        if rest:
            await line(rest)

    def _stderr_tail(self) -> str:
        text = bytes(self.stderr).decode("utf-8", "replace").rstrip()
        if not text:
            return " (its stderr was empty)"
        lines = text.splitlines()[-ERROR_LINES:]
        quoted = "\n".join(lines)
        if len(quoted) > ERROR_CHARS:
            quoted = "..." + quoted[-ERROR_CHARS:]
        return f"; the last lines of its stderr:\n{quoted}"


def _start_error(exc: OSError, argv: Sequence[str]) -> str:
    what = exc.strerror or str(exc)
    if exc.errno == errno.E2BIG:
        size = sum(len(word.encode("utf-8", "surrogateescape")) for word in argv)
        return (
            f"cannot start {argv[0]!r}: {what} ({size} bytes of arguments: "
            "pass a long prompt with -o input=stdin or -o input=file)"
        )
    name = exc.filename if exc.filename is not None else argv[0]
    return f"cannot start {argv[0]!r}: {what}: {name!r}"


def _exit_words(code: int) -> str:
    if code < 0:
        return f"was killed by {signal_name(-code)} (exit code {code})"
    return f"exited with code {code}"


# ---- ending a process group -----------------------------------------------------------


async def _group_alive(pgid: int) -> bool:
    # The cheap check inline; the /proc scan in a thread.
    if not signal_group(pgid, 0):
        return False
    return await trio.to_thread.run_sync(group_alive, pgid)


async def _gone(process: trio.Process, deadline: float) -> bool:
    """Wait until the leader has exited and its group is empty, or `deadline`."""
    delay = 0.005
    while True:
        if process.returncode is None:
            with trio.move_on_at(min(deadline, trio.current_time() + delay)):
                await process.wait()
        elif not await _group_alive(process.pid):
            return True
        else:
            await trio.sleep(max(0.0, min(delay, deadline - trio.current_time())))
        if trio.current_time() >= deadline:
            return process.returncode is not None and not await _group_alive(process.pid)
        delay = min(delay * 2, 0.05)


async def _end_group(process: trio.Process, grace: float) -> None:
    """End `process` and everything in its process group: SIGTERM, then SIGKILL."""
    pgid = process.pid  # start_new_session: the leader's pid is the group's id
    if process.returncode is not None and not await _group_alive(pgid):
        return
    signal_group(pgid, signal.SIGTERM)
    signal_group(pgid, signal.SIGCONT)  # a stopped process handles SIGTERM only once continued
    if await _gone(process, trio.current_time() + grace):
        return
    signal_group(pgid, signal.SIGKILL)
    if not await _gone(process, trio.current_time() + KILL_WAIT):
        log.warning("process group %d still has processes after SIGKILL", pgid)
