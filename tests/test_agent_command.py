"""The `command` agent, through a real `latis-unit --stdio --agent command -- ...` process.

The commands are small Python scripts written to tmp_path. Where a test must
know that a chunk arrived before the script went on, the script waits for a
file that the test creates once it has the chunk: no timing assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_agents.command import PRESETS, CommandAgent

import latis_core
from latis_core import ErrorCode, RequestError, UnitClient

PROMPT = "héllo 'wörld' \"✓\" $HOME `x` {braces}\nsecond line"

WAIT_FOR = """
import os, sys, time

def wait_for(path):
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"{path} never appeared")
        time.sleep(0.002)
"""

# Prints, as one JSON line, what it was given: arguments, stdin, working
# directory, environment, and the contents of any prompt file named in its
# arguments.
SHOWN = """
import json, os, sys
files = {a: open(a, encoding="utf-8").read() for a in sys.argv[1:]
         if os.path.basename(a).startswith("latis-prompt-") and os.path.isfile(a)}
shown = json.dumps({
    "name": os.path.basename(sys.argv[0]),
    "argv": sys.argv[1:],
    "stdin": sys.stdin.read(),
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "files": files,
})
"""
SHOW = SHOWN + "print(shown)\n"

# A fake `claude -p --output-format stream-json --verbose --include-partial-messages`:
# the lines are shaped like those of Claude Code 2.1 (trimmed), its answer
# is what SHOW prints, and it makes one tool call. The prompt "fail" makes
# it report an API error and exit 1, as Claude Code does.
FAKE_CLAUDE = (
    SHOWN
    + """
def emit(event):
    print(json.dumps(event), flush=True)

def delta(text):
    return {"type": "stream_event", "session_id": "s", "parent_tool_use_id": None,
            "event": {"type": "content_block_delta", "index": 0,
                      "delta": {"type": "text_delta", "text": text}}}

emit({"type": "system", "subtype": "init", "cwd": os.getcwd(), "session_id": "s"})
if sys.argv[-1] == "fail":
    emit({"type": "result", "subtype": "success", "is_error": True,
          "result": "API Error: 404 model not found", "session_id": "s"})
    sys.exit(1)
emit({"type": "stream_event", "session_id": "s",
      "event": {"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}})
emit(delta(shown[:7]))
emit(delta(shown[7:]))
emit({"type": "assistant", "session_id": "s", "parent_tool_use_id": None,
      "message": {"role": "assistant", "content": [{"type": "text", "text": shown}]}})
emit({"type": "assistant", "session_id": "s", "parent_tool_use_id": None,
      "message": {"role": "assistant", "content": [
          {"type": "tool_use", "id": "toolu_1", "name": "Bash",
           "input": {"command": "echo hi", "description": "Say hi"}}]}})
emit({"type": "user", "session_id": "s", "message": {"role": "user", "content": [
    {"tool_use_id": "toolu_1", "type": "tool_result", "content": "hi", "is_error": False}]}})
emit({"type": "result", "subtype": "success", "is_error": False, "result": shown,
      "session_id": "s"})
"""
)


def script(tmp_path: Path, name: str, body: str, *, waits: bool = False) -> str:
    """Write a Python script; with `waits`, it has `wait_for(path)`."""
    path = tmp_path / name
    path.write_text((WAIT_FOR if waits else "") + textwrap.dedent(body))
    return str(path)


def py(path: str, *args: str) -> list[str]:
    return [sys.executable, path, *args]


def unit(options: Mapping[str, str] | None, command: Sequence[str], **kwargs: Any) -> Any:
    args = ["--", *command] if command else []
    return latis_core.connect_local(
        latis_core.unit_command("command", dict(options or {}), args=args), **kwargs
    )


@asynccontextmanager
async def session_on(
    options: Mapping[str, str] | None, command: Sequence[str], **kwargs: Any
) -> AsyncIterator[tuple[UnitClient, latis_core.Session]]:
    async with unit(options, command, **kwargs) as u:
        yield u, await u.create_session()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: this machine's init may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def group(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def assert_gone(pids: Sequence[int], pgid: int | None = None) -> None:
    """Every one of `pids` has stopped, and so has every process of group `pgid`.

    Checked at once, not polled: a prompt ends only when its processes are gone.
    """
    assert [pid for pid in pids if alive(pid)] == [], "processes were left behind"
    if pgid is not None:
        assert group(pgid) == [], f"process group {pgid} was left behind"


async def shown(session: latis_core.Session, text: str = PROMPT) -> dict[str, Any]:
    return json.loads(await session.prompt(text).text())


class TestStreaming:
    async def test_session_and_streamed_prompt(self, tmp_path: Path) -> None:
        """Chunks arrive as the command prints them, one per line, and it completes."""
        go = tmp_path / "go"
        stream_py = script(
            tmp_path,
            "stream.py",
            """
            print("first line", flush=True)
            wait_for(sys.argv[1])
            sys.stdout.write("second line\\nthird, without a newline")
            """,
            waits=True,
        )
        async with session_on({}, py(stream_py, str(go))) as (u, session):
            assert u.agent.name == "command"
            assert session.initial_state == "idle"
            with pytest.raises(RequestError) as info:
                await u.create_session(model="x")
            assert "a session takes no options, got ['model']" in info.value.message
            async with session.prompt("hi") as stream:
                first = await stream.__anext__()
                # The script cannot go on before `go` exists: this chunk came
                # while it was still running.
                assert (first.seq, first.text) == (0, "first line\n")
                assert await session.state() == "busy"
                go.touch()
                rest = [chunk.text async for chunk in stream]
            assert rest == ["second line\n", "third, without a newline"]
            assert stream.outcome == "complete"
            assert await session.state() == "idle"
            # Each prompt is a new run of the command.
            assert await session.prompt("again").text() == (
                "first line\nsecond line\nthird, without a newline"
            )

    async def test_sessions_run_at_once(self, tmp_path: Path) -> None:
        """Two sessions' prompts run side by side, each its own process."""
        go = tmp_path / "go"
        both = script(
            tmp_path,
            "both.py",
            """
            print("started", flush=True)
            wait_for(sys.argv[1])
            print("done")
            """,
            waits=True,
        )
        async with unit({}, py(both, str(go))) as u:
            a, b = await u.create_session(), await u.create_session()
            async with a.prompt("a") as first, b.prompt("b") as second:
                # Both started before either could finish.
                assert (await first.__anext__()).text == "started\n"
                assert (await second.__anext__()).text == "started\n"
                go.touch()
                assert [c.text async for c in first] == ["done\n"]
                assert [c.text async for c in second] == ["done\n"]

    async def test_bytes_mode_never_splits_a_character(self, tmp_path: Path) -> None:
        """In bytes mode a chunk is what was read, decoded without splitting a character."""
        go1, go2 = tmp_path / "go1", tmp_path / "go2"
        bytes_py = script(
            tmp_path,
            "bytes.py",
            """
            out = sys.stdout.buffer
            out.write(b"caf\\xc3"); out.flush()              # 'é' cut after its first byte
            wait_for(sys.argv[1])
            out.write(b"\\xa9 \\xe2\\x9c"); out.flush()       # the rest, and 2/3 of a check mark
            wait_for(sys.argv[2])
            out.write(b"\\x93 two\\nlines\\n\\xff"); out.flush()
            """,
            waits=True,
        )
        async with session_on({"mode": "bytes"}, py(bytes_py, str(go1), str(go2))) as (
            _,
            session,
        ):
            async with session.prompt("x") as stream:
                assert (await stream.__anext__()).text == "caf"
                go1.touch()
                assert (await stream.__anext__()).text == "é "
                go2.touch()
                rest = [chunk.text async for chunk in stream]
            assert rest == ["✓ two\nlines\n\ufffd"]
            assert stream.outcome == "complete"

    async def test_line_mode_cuts_a_huge_line(self, tmp_path: Path) -> None:
        """A line longer than 64 KiB comes in pieces, and nothing is lost."""
        long_py = script(
            tmp_path, "long.py", 'import sys; sys.stdout.write("ab" * 100_000 + "\\nend\\n")'
        )
        async with session_on({}, py(long_py)) as (_, session):
            chunks = [chunk.text async for chunk in session.prompt("x")]
        assert "".join(chunks) == "ab" * 100_000 + "\nend\n"
        assert max(len(c) for c in chunks) <= 64 * 1024
        assert chunks[-1] == "end\n"


class TestInput:
    @pytest.mark.parametrize(
        ("options", "args", "expect_argv"),
        [
            ({}, ["--flag"], ["--flag", PROMPT]),
            ({"input": "arg"}, ["--message", "{prompt}", "--yes"], ["--message", PROMPT, "--yes"]),
            ({}, ["--m={prompt}", "-v"], [f"--m={PROMPT}", "-v"]),
        ],
        ids=["appended", "placeholder-word", "placeholder-in-word"],
    )
    async def test_arg(
        self, tmp_path: Path, options: dict[str, str], args: list[str], expect_argv: list[str]
    ) -> None:
        """The prompt is one argument, appended or in place of {prompt}; stdin is empty."""
        show = script(tmp_path, "show.py", SHOW)
        async with session_on(options, py(show, *args)) as (_, session):
            out = await shown(session)
        assert out["argv"] == expect_argv
        assert out["stdin"] == ""

    async def test_stdin(self, tmp_path: Path) -> None:
        """With input=stdin the prompt is the command's stdin, then EOF."""
        show = script(tmp_path, "show.py", SHOW)
        async with session_on({"input": "stdin"}, py(show, "-")) as (_, session):
            out = await shown(session)
            assert out["argv"] == ["-"]
            assert out["stdin"] == PROMPT
            # More than a pipe holds, to a command that reads it all...
            big = "x" * (2 * 1024 * 1024)
            assert (await shown(session, big))["stdin"] == big

    async def test_stdin_not_read(self, tmp_path: Path) -> None:
        """A command that never reads its stdin still completes."""
        quiet = script(tmp_path, "quiet.py", 'print("no thanks")')
        async with session_on({"input": "stdin"}, py(quiet)) as (_, session):
            assert await session.prompt("y" * (2 * 1024 * 1024)).text() == "no thanks\n"

    @pytest.mark.parametrize("placeholder", [True, False], ids=["placeholder", "appended"])
    async def test_file(self, tmp_path: Path, placeholder: bool) -> None:
        """With input=file the prompt is in a temporary file, gone after the run."""
        show = script(tmp_path, "show.py", SHOW)
        args = ["--file", "{file}"] if placeholder else []
        async with session_on({"input": "file"}, py(show, *args)) as (_, session):
            out = await shown(session)
        path = out["argv"][-1]
        assert out["argv"][:-1] == args[:-1]
        assert out["files"] == {path: PROMPT}
        assert out["stdin"] == ""
        assert not await trio.Path(path).exists()


class TestCancel:
    @pytest.mark.parametrize("stubborn", [False, True], ids=["sigterm", "sigkill-after-grace"])
    async def test_cancel_mid_stream_ends_the_group(self, tmp_path: Path, stubborn: bool) -> None:
        """Cancelling ends the command and its grandchild (SIGKILL when they ignore SIGTERM)."""
        ticker = script(
            tmp_path,
            "ticker.py",
            """
            import os, signal, subprocess, sys, time
            ignore = sys.argv[1] == "stubborn"
            if ignore:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            code = "import time\\nwhile True: time.sleep(0.05)"
            if ignore:
                code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" + code
            child = subprocess.Popen([sys.executable, "-c", code])
            print(os.getpid(), child.pid, flush=True)
            while True:
                print("tick", flush=True)
                time.sleep(0.01)
            """,
        )
        mode = "stubborn" if stubborn else "polite"
        async with session_on({"grace": "0.3"}, py(ticker, mode)) as (_, session):
            async with session.prompt("go") as stream:
                first = await stream.__anext__()
                pids = [int(word) for word in first.text.split()]
                assert len(pids) == 2 and all(alive(pid) for pid in pids)
                assert sorted(group(pids[0])) == sorted(pids)  # the command leads its group
                assert (await stream.__anext__()).text == "tick\n"
            assert stream.outcome == "cancelled"
            assert_gone(pids, pgid=pids[0])
            assert await session.state() == "idle"

    async def test_leftovers_are_ended_when_the_command_exits(self, tmp_path: Path) -> None:
        """What the command leaves running (holding stdout) is ended; the prompt completes."""
        leaver = script(
            tmp_path,
            "leaver.py",
            """
            import subprocess, sys
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            print(child.pid, flush=True)
            """,
        )
        async with session_on({"grace": "1"}, py(leaver)) as (_, session):
            stream = session.prompt("x")
            text = await stream.text()
            assert stream.outcome == "complete"
        assert_gone([int(text)])

    async def test_a_process_that_left_the_group_does_not_hold_the_prompt(
        self, tmp_path: Path
    ) -> None:
        """A process that left the group (setsid) and holds stdout: reading stops soon after."""
        escaper = script(
            tmp_path,
            "escaper.py",
            """
            import subprocess, sys
            child = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
            )
            print(child.pid, flush=True)
            """,
        )
        pid = None
        try:
            async with session_on({}, py(escaper)) as (_, session):
                stream = session.prompt("x")
                pid = int(await stream.text())
                assert stream.outcome == "complete"
                assert alive(pid)  # out of reach of process-group signals: documented
        finally:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)

    async def test_timeout(self, tmp_path: Path) -> None:
        """A run that outlives `timeout` is ended and the prompt fails, saying so."""
        sleeper = script(
            tmp_path,
            "sleeper.py",
            """
            import os, sys, time
            print(os.getpid(), flush=True)
            print("still thinking", file=sys.stderr, flush=True)
            time.sleep(60)
            """,
        )
        async with session_on({"timeout": "0.5", "grace": "0.2"}, py(sleeper)) as (_, session):
            stream = session.prompt("x")
            pid = int((await stream.__anext__()).text)
            with pytest.raises(RequestError) as info:
                await stream.__anext__()
        assert info.value.code == ErrorCode.AGENT_ERROR
        assert "timed out after 0.5 s" in info.value.message
        assert "still thinking" in info.value.message
        assert_gone([pid])


class TestErrors:
    FAILER = """
    import os, signal, sys
    prompt = sys.argv[-1]
    if prompt == "fail":
        print("a partial answer", flush=True)
        print("loading the model\\nmodel not found: gpt-9", file=sys.stderr)
        sys.exit(3)
    if prompt == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    print("fine")
    """

    async def test_exit_code_and_stderr(self, tmp_path: Path) -> None:
        """A non-zero exit is agent_error with the code and stderr's last lines."""
        failer = script(tmp_path, "failer.py", self.FAILER)
        async with session_on({}, py(failer)) as (_, session):
            stream = session.prompt("fail")
            assert (await stream.__anext__()).text == "a partial answer\n"
            with pytest.raises(RequestError) as info:
                await stream.__anext__()
            assert info.value.code == ErrorCode.AGENT_ERROR
            message = info.value.message
            assert "exited with code 3" in message
            assert "loading the model\nmodel not found: gpt-9" in message
            assert "failer.py" in message  # the command, as configured
            with pytest.raises(RequestError) as info:
                await session.prompt("crash").text()
            assert "killed by SIGKILL" in info.value.message
            # The session goes on.
            assert await session.prompt("ok").text() == "fine\n"

    async def test_cannot_start(self, tmp_path: Path) -> None:
        """A command that does not exist is agent_error saying it cannot start."""
        missing = str(tmp_path / "no-such-agent")
        async with session_on({}, [missing]) as (_, session):
            with pytest.raises(RequestError) as info:
                await session.prompt("x").text()
        assert info.value.code == ErrorCode.AGENT_ERROR
        assert "cannot start" in info.value.message and "No such file" in info.value.message

    @pytest.mark.parametrize("code", [0, 1])
    async def test_chatty_stderr(self, tmp_path: Path, code: int) -> None:
        """Megabytes on stderr never block the command; an error quotes only its end."""
        chatty = script(
            tmp_path,
            "chatty.py",
            f"""
            import sys
            for i in range(40_000):
                sys.stderr.write(f"noise {{i:06d}} " + "." * 40 + "\\n")
            print("done")
            sys.exit({code})
            """,
        )
        async with session_on({}, py(chatty)) as (_, session):
            stream = session.prompt("x")
            if code == 0:
                assert await stream.text() == "done\n"
                return
            with pytest.raises(RequestError) as info:
                await stream.text()
        message = info.value.message
        assert "exited with code 1" in message and "noise 039999" in message
        assert "noise 000000" not in message
        assert len(message) < 5000


class TestEnvironment:
    async def test_cwd_and_env(self, tmp_path: Path) -> None:
        """cwd (relative to the unit's) and env.NAME options reach the command."""
        show = script(tmp_path, "show.py", SHOW)
        (tmp_path / "work").mkdir()
        unit_env = {**os.environ, "LATIS_T_UNIT": "from the unit"}
        options = {"cwd": "work", "env.LATIS_T_ONE": "1", "env.LATIS_T_TWO": "a=b c"}
        async with session_on(options, py(show), env=unit_env, cwd=str(tmp_path)) as (_, s):
            out = await shown(s)
        assert out["cwd"] == str(tmp_path / "work")
        env = out["env"]
        assert (env["LATIS_T_ONE"], env["LATIS_T_TWO"]) == ("1", "a=b c")
        assert env["LATIS_T_UNIT"] == "from the unit"  # the unit's environment, inherited

    @pytest.mark.parametrize("pass_env", [None, "PATH,LATIS_T_UNIT"])
    async def test_clean_env(self, tmp_path: Path, pass_env: str | None) -> None:
        """clean_env=true keeps only pass_env's variables (default PATH, HOME, ...) and env.*."""
        show = script(tmp_path, "show.py", SHOW)
        unit_env = {**os.environ, "LATIS_T_UNIT": "from the unit", "HOME": str(tmp_path)}
        options = {"clean_env": "true", "env.LATIS_T_ONE": "1"}
        if pass_env is not None:
            options["pass_env"] = pass_env
        async with session_on(options, py(show), env=unit_env) as (_, session):
            out = await shown(session)
        names = set(out["env"]) - {"LC_CTYPE"}  # Python's locale coercion may add it
        if pass_env is None:
            expected = {"PATH", "HOME", "LATIS_T_ONE"}
            expected |= {n for n in ("LANG", "LC_ALL", "TMPDIR") if n in os.environ}
        else:
            expected = {"PATH", "LATIS_T_UNIT", "LATIS_T_ONE"}
        assert names == expected


BAD_OPTIONS = [
    ({}, [], "no command"),
    ({"colour": "red"}, ["x"], "unknown option 'colour'"),
    ({"input": "pipe"}, ["x"], "option 'input' must be one of arg, stdin, file, got 'pipe'"),
    ({"mode": "words"}, ["x"], "option 'mode' must be one of line, bytes, got 'words'"),
    ({"format": "yaml"}, ["x"], "option 'format' must be one of text, claude-stream-json"),
    ({"format": "claude-stream-json", "mode": "bytes"}, ["x"], "option 'mode' must be line"),
    ({"grace": "soon"}, ["x"], "option 'grace' must be a number of seconds, got 'soon'"),
    ({"grace": "-1"}, ["x"], "option 'grace' must be 0 or more seconds"),
    ({"timeout": "0"}, ["x"], "option 'timeout' must be more than 0 seconds"),
    ({"timeout": "inf"}, ["x"], "option 'timeout' must be a finite number"),
    ({"cwd": "/no/such/dir"}, ["x"], "option 'cwd' must be an existing directory"),
    ({"preset": "hal"}, [], "option 'preset' must be one of claude, codex"),
    ({"clean_env": "maybe"}, ["x"], "option 'clean_env' must be true or false"),
    ({"pass_env": "PATH"}, ["x"], "option 'pass_env' applies only with clean_env=true"),
    ({"env.": "x"}, ["x"], "option 'env.' needs a variable name"),
    ({"input": "stdin"}, ["x", "{prompt}"], "option 'input' is stdin but the command has {prompt}"),
    ({}, ["x", "{file}"], "option 'input' is arg but the command has {file}"),
    ({"continue": "true"}, ["x"], "option 'continue' is not supported"),
    ({"preset": "codex", "continue": "yes"}, [], "not supported by preset 'codex'"),
]


class TestOptions:
    @pytest.mark.parametrize(
        ("options", "command", "message"), BAD_OPTIONS, ids=[m for _, _, m in BAD_OPTIONS]
    )
    async def test_bad_option_is_a_usage_error(
        self, options: dict[str, str], command: list[str], message: str
    ) -> None:
        """Each bad value stops latis-unit with exit 2 and a message naming the option."""
        args = ["--", *command] if command else []
        result = await trio.run_process(
            latis_core.unit_command("command", options, args=args),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        stderr = result.stderr.decode()
        assert result.returncode == 2, stderr
        assert "usage: latis-unit" in stderr
        assert message in stderr

    def test_presets_give_command_and_defaults(self) -> None:
        """A preset gives its command and options; -- COMMAND and options override."""
        agent = CommandAgent.from_options({"preset": "llm"})
        assert (agent.command, agent.mode) == (("llm", "{prompt}"), "bytes")
        agent = CommandAgent.from_options({"preset": "llm", "mode": "line"}, ["my-llm"])
        assert (agent.command, agent.mode) == (("my-llm",), "line")
        agent = CommandAgent.from_options({"preset": "claude"})
        assert agent.command[:4] == ("claude", "-p", "--output-format", "stream-json")
        assert (agent.format, agent.first[0], agent.then[0]) == (
            "claude-stream-json",
            "--session-id",
            "--resume",
        )
        agent = CommandAgent.from_options({"preset": "claude", "continue": "false"})
        assert (agent.first, agent.then) == ((), ())
        assert set(PRESETS) == {"claude", "codex", "gemini", "aider", "llm"}


@pytest.fixture
def fake_bin(tmp_path: Path) -> dict[str, str]:
    """A PATH whose claude, codex, gemini, aider and llm are a script that shows its input."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in PRESETS:
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n" + (FAKE_CLAUDE if name == "claude" else SHOW))
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


class TestPresets:
    @pytest.mark.parametrize(
        ("preset", "expect_argv"),
        [
            ("codex", ["exec", PROMPT]),
            ("gemini", ["-p", PROMPT]),
            ("aider", ["--message", PROMPT, "--yes"]),
            ("llm", [PROMPT]),
        ],
    )
    async def test_command_lines(
        self, fake_bin: dict[str, str], preset: str, expect_argv: list[str]
    ) -> None:
        """Each preset runs its documented command line, stdin from /dev/null."""
        async with session_on({"preset": preset}, [], env=fake_bin) as (_, session):
            out = await shown(session)
        assert (out["name"], out["argv"], out["stdin"]) == (preset, expect_argv, "")

    async def test_claude_streams_text_and_tool_calls(self, fake_bin: dict[str, str]) -> None:
        """claude: text deltas are text chunks, tool uses tool_call chunks; errors fail."""
        async with session_on({"preset": "claude"}, [], env=fake_bin) as (_, session):
            chunks = [chunk async for chunk in session.prompt(PROMPT)]
            texts = [c.text for c in chunks if c.kind is None]
            assert len(texts) == 2  # the deltas; the whole message is not repeated
            assert json.loads("".join(texts))["argv"][-1] == PROMPT
            calls = [(c.text, c.data) for c in chunks if c.kind == "tool_call"]
            assert calls == [
                (
                    "Bash",
                    {
                        "id": "toolu_1",
                        "name": "Bash",
                        "input": {"command": "echo hi", "description": "Say hi"},
                    },
                )
            ]
            assert [c.kind for c in chunks] == [None, None, "tool_call"]
            with pytest.raises(RequestError) as info:
                await session.prompt("fail").text()
            assert info.value.code == ErrorCode.AGENT_ERROR
            assert "exited with code 1: API Error: 404 model not found" in info.value.message

    async def test_claude_continues_its_conversation(self, fake_bin: dict[str, str]) -> None:
        """claude: a session's first prompt sets --session-id, later ones --resume it."""
        base = list(PRESETS["claude"].command[1:])
        async with unit({"preset": "claude"}, [], env=fake_bin) as u:
            a, b = await u.create_session(), await u.create_session()
            first = (await shown(a))["argv"]
            n = len(base)
            assert first[:n] == base and first[n] == "--session-id" and first[n + 2 :] == [PROMPT]
            conversation = first[n + 1]
            uuid.UUID(conversation)
            assert (await shown(a, "more"))["argv"] == [*base, "--resume", conversation, "more"]
            # Another session is another conversation.
            other = (await shown(b))["argv"]
            assert other[n] == "--session-id" and other[n + 1] != conversation
            # A first prompt that fails leaves no conversation to resume: start anew.
            c = await u.create_session()
            with pytest.raises(RequestError):
                await c.prompt("fail").text()
            retry = (await shown(c))["argv"]
            assert retry[n] == "--session-id"
            assert (await shown(c, "next"))["argv"][n:] == ["--resume", retry[n + 1], "next"]
