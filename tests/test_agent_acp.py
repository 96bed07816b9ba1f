"""The `acp` agent adapter, through a real `latis-unit --agent acp` process.

Every agent here is a separate process written with the real ACP SDK
(`agent-client-protocol`, tests/acp_agents/): the unit speaks ACP to it over
its stdin and stdout, the test speaks latis to the unit. The path guard's
THREATS.md corpus (scenario 16) is checked here too, without processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from latis_agents.acp import AcpAgent
from latis_agents.acp.permissions import _choose

import latis_core
from latis_core import ErrorCode, InputRequest, RequestError, ResponseChunk
from latis_core._os.pathguard import PathRefused, resolve_inside

pytest.importorskip("acp", reason="the ACP SDK (agent-client-protocol) runs the test agents")

AGENTS = Path(__file__).resolve().parent / "acp_agents"


@asynccontextmanager
async def acp_unit(
    root: Path, script: str, *agent_args: str, **options: str
) -> AsyncIterator[latis_core.UnitClient]:
    """A real `latis-unit --stdio --agent acp -- python tests/acp_agents/SCRIPT ...`."""
    argv = latis_core.unit_command(
        "acp",
        {"cwd": str(root), **options},
        args=["--", sys.executable, str(AGENTS / script), *agent_args],
    )
    async with latis_core.connect_local(argv) as unit:
        yield unit


async def chunks_of(stream: latis_core.PromptStream) -> list[ResponseChunk]:
    out = []
    async for ev in stream:
        assert isinstance(ev, ResponseChunk), ev
        out.append(ev)
    return out


def texts(chunks: list[ResponseChunk]) -> str:
    return "".join(c.text for c in chunks if c.kind is None)


def real(path: Path) -> str:
    """`path` with its symlinks resolved, as the agent sees it."""
    return os.path.realpath(path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not a process left behind: its parent just has not reaped it yet.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---- sessions and streamed prompts ------------------------------------------------------


class TestEcho:
    async def test_streams_each_chunk_and_the_stop_reason(self, tmp_path: Path) -> None:
        """Each agent_message_chunk is a text chunk; the stop reason is the last chunk."""
        async with acp_unit(tmp_path, "echo_agent.py") as unit:
            # The unit starts the agent before its hello, so the hello names the agent.
            assert (unit.agent.name, unit.agent.version) == ("echo-agent", "1.0")
            assert "input" in unit.capabilities
            session = await unit.create_session()
            stream = session.prompt("one two three")
            chunks = await chunks_of(stream)
            assert stream.outcome == "complete"
            assert [c.text for c in chunks if c.kind is None] == ["one ", "two ", "three"]
            assert chunks[-1].kind == "stop"
            assert chunks[-1].data == {"stopReason": "end_turn"}
            assert await session.prompt("four five").text() == "four five"
            assert await session.prompt("history").text() == "2 prompts, new"

    async def test_an_error_from_the_agent_surfaces_with_its_message(self, tmp_path: Path) -> None:
        """A JSON-RPC error answering session/prompt ends the prompt with its message."""
        async with acp_unit(tmp_path, "echo_agent.py") as unit:
            session = await unit.create_session()
            with pytest.raises(RequestError) as info:
                await session.prompt("fail: the model is on fire").text()
            assert info.value.code == ErrorCode.AGENT_ERROR
            assert "the model is on fire" in info.value.message
            assert "-32001" in info.value.message
            with pytest.raises(RequestError) as info:
                await session.prompt("boom: kaboom").text()
            assert "Internal error: kaboom" in info.value.message
            # The session goes on.
            assert await session.prompt("still here").text() == "still here"

    async def test_session_cwd_is_the_root_or_inside_it(self, tmp_path: Path) -> None:
        """session/new gets the unit's directory, or a `cwd` option inside it; never outside."""
        (tmp_path / "sub").mkdir()
        async with acp_unit(tmp_path, "echo_agent.py") as unit:
            session = await unit.create_session()
            assert await session.prompt("cwd").text() == real(tmp_path)
            sub = await unit.create_session(cwd="sub")
            assert await sub.prompt("cwd").text() == real(tmp_path / "sub")
            for outside in ("..", "/etc", "sub/../../.."):
                with pytest.raises(RequestError) as info:
                    await unit.create_session(cwd=outside)
                assert "refused" in info.value.message
            with pytest.raises(RequestError) as info:
                await unit.create_session(model="x")
            assert "unknown session option 'model'" in info.value.message

    async def test_session_load_after_destroy(self, tmp_path: Path) -> None:
        """session.resume of a session the unit no longer holds is session/load."""
        async with acp_unit(tmp_path, "echo_agent.py") as unit:
            session = await unit.create_session()
            await session.prompt("remember this").text()
            await session.destroy()
            again = await unit.resume_session(session.id)
            # The history session/load replays is not streamed anywhere.
            assert await again.prompt("history").text() == "1 prompts, loaded"
            with pytest.raises(RequestError) as info:
                await unit.resume_session("no-such-session")
            assert info.value.code == ErrorCode.UNKNOWN_SESSION

    async def test_session_load_after_the_unit_restarts(self, tmp_path: Path) -> None:
        """With `-o sessions=FILE`, a new unit (and a new agent process) loads the session."""
        sessions = str(tmp_path / "sessions.json")
        async with acp_unit(tmp_path, "echo_agent.py", "--persist", sessions=sessions) as unit:
            session = await unit.create_session()
            await session.prompt("one").text()
            await session.prompt("two").text()
        async with acp_unit(tmp_path, "echo_agent.py", "--persist", sessions=sessions) as unit:
            again = await unit.resume_session(session.id)
            assert await again.prompt("history").text() == "2 prompts, loaded"

    async def test_a_dead_agent_that_loads_sessions_is_restarted(self, tmp_path: Path) -> None:
        """The agent killed between prompts: with loadSession, the next prompt starts a
        new agent process, loads the session into it, and goes on."""
        async with acp_unit(tmp_path, "echo_agent.py", "--persist") as unit:
            session = await unit.create_session()
            await session.prompt("first").text()
            pid = int(await session.prompt("pid").text())
            os.kill(pid, signal.SIGKILL)
            while alive(pid):
                await trio.sleep(0.02)
            await trio.sleep(0.2)  # the unit sees its stdout end
            assert await session.prompt("history").text() == "2 prompts, loaded"
            assert int(await session.prompt("pid").text()) != pid

    async def test_sessions_answer_side_by_side(self, tmp_path: Path) -> None:
        """One agent process, many sessions: their prompts run at once, each gets its own."""
        async with acp_unit(tmp_path, "echo_agent.py") as unit:
            sessions = [await unit.create_session() for _ in range(4)]
            answers: dict[int, str] = {}

            async def ask(i: int) -> None:
                words = " ".join(f"s{i}w{j}" for j in range(50))
                answers[i] = await sessions[i].prompt(words).text()

            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(ask, i)
            for i in range(4):
                assert answers[i] == " ".join(f"s{i}w{j}" for j in range(50))

    async def test_no_load_without_the_capability(self, tmp_path: Path) -> None:
        """An agent that does not announce loadSession cannot resume: unknown_session."""
        async with acp_unit(tmp_path, "tools_agent.py") as unit:
            with pytest.raises(RequestError) as info:
                await unit.resume_session("tools-agent-1")
            assert info.value.code == ErrorCode.UNKNOWN_SESSION


class TestUpdates:
    async def test_tool_calls_plans_and_other_kinds_are_typed_chunks(self, tmp_path: Path) -> None:
        """Nothing is dropped: each update kind is a chunk, even one sent between prompts."""
        async with acp_unit(tmp_path, "tools_agent.py") as unit:
            session = await unit.create_session()
            await trio.sleep(0.3)  # the agent sends available_commands_update after new
            chunks = await chunks_of(session.prompt("go"))
        kinds = [c.kind for c in chunks]
        assert kinds == [
            "available_commands_update",
            "plan",
            "thought",
            "tool_call",
            "tool_call",
            "tool_call",
            "current_mode_update",
            None,
            "stop",
        ]
        commands, plan, thought, start, progress, done, mode, text, stop = chunks
        assert commands.data is not None
        assert commands.data["availableCommands"][0]["name"] == "test"
        assert plan.data is not None
        assert [e["content"] for e in plan.data["entries"]] == ["read the file", "answer"]
        assert thought.text == "Let me look."
        assert start.data == {
            "sessionUpdate": "tool_call",
            "toolCallId": "t1",
            "title": "Read README",
            "kind": "read",
            "status": "pending",
        }
        assert progress.data is not None and progress.data["sessionUpdate"] == "tool_call_update"
        assert progress.data["status"] == "in_progress"
        assert done.data is not None and done.data["status"] == "completed"
        assert done.data["content"][0]["content"]["text"] == "# latis"
        assert mode.data == {"sessionUpdate": "current_mode_update", "currentModeId": "code"}
        assert text.text == "done"
        assert stop.data == {"stopReason": "end_turn"}


# ---- permissions ----------------------------------------------------------------------------


class TestPermission:
    async def ask(
        self, unit: latis_core.UnitClient, text: str, *answers: str
    ) -> tuple[str, list[InputRequest]]:
        session = await unit.create_session()
        asked: list[InputRequest] = []
        replies = iter(answers)

        async def answer(request: InputRequest) -> str:
            asked.append(request)
            return next(replies)

        return await session.prompt(text, on_input=answer).text(), asked

    async def test_answered_yes_and_no(self, tmp_path: Path) -> None:
        """session/request_permission is an input.request; yes and no pick allow and reject."""
        async with acp_unit(tmp_path, "permission_agent.py") as unit:
            text, asked = await self.ask(unit, "go", "yes")
            assert text == "allowed: allow-once\n"
            (request,) = asked
            assert request.kind == "permission"
            assert request.question == "Write notes.txt"
            assert request.options == ("Allow", "Always allow", "Reject")
            text, _ = await self.ask(unit, "go", "no")
            assert text == "rejected: reject-once\n"

    async def test_answered_by_name_by_id_and_unknown(self, tmp_path: Path) -> None:
        """An option's name or id picks it; an answer that is neither rejects."""
        async with acp_unit(tmp_path, "permission_agent.py") as unit:
            text, asked = await self.ask(unit, "twice", "Always allow", "reject-once")
            assert text == "allowed: allow-always\nrejected: reject-once\n"
            assert [r.input for r in asked] == [0, 1]
            text, _ = await self.ask(unit, "go", "maybe later")
            assert text == "rejected: reject-once\n"

    async def test_cancel_while_asking(self, tmp_path: Path) -> None:
        """Cancelling a prompt that waits for an answer answers the agent `cancelled`."""
        async with acp_unit(tmp_path, "permission_agent.py") as unit:
            session = await unit.create_session()
            stream = session.prompt("go")
            async for ev in stream:
                if isinstance(ev, InputRequest):
                    break
            assert await session.state() == "waiting"
            await stream.aclose()
            assert stream.outcome == "cancelled"
            assert await session.state() == "idle"
            # The agent got its answer (cancelled) and the session goes on.
            text, _ = await self.ask(unit, "go", "Allow")
            assert text == "allowed: allow-once\n"

    async def test_the_agent_dying_while_asking_ends_the_prompt(self, tmp_path: Path) -> None:
        """No answer needed: the agent's end ends the question and the prompt."""
        async with acp_unit(tmp_path, "permission_agent.py") as unit:
            session = await unit.create_session()
            stream = session.prompt("crash")
            with pytest.raises(RequestError) as info:
                with trio.fail_after(5):
                    async for _ev in stream:
                        pass  # the question comes, and is left unanswered
            assert isinstance(stream.pending, InputRequest)
            assert "exit status 4" in info.value.message
            assert await session.state() == "idle"

    def test_choose(self) -> None:
        """The answer-to-option mapping, including options without a reject."""
        options = [
            {"optionId": "a", "name": "Allow", "kind": "allow_once"},
            {"optionId": "r", "name": "Reject", "kind": "reject_always"},
        ]
        assert _choose(options, "a") == {"outcome": "selected", "optionId": "a"}
        assert _choose(options, " allow ") == {"outcome": "selected", "optionId": "a"}
        assert _choose(options, "Y") == {"outcome": "selected", "optionId": "a"}
        assert _choose(options, "no") == {"outcome": "selected", "optionId": "r"}
        assert _choose(options, "???") == {"outcome": "selected", "optionId": "r"}
        only_allow = options[:1]
        assert _choose(only_allow, "nope") == {"outcome": "cancelled"}
        assert _choose([], "yes") == {"outcome": "cancelled"}


# ---- elicitation: structured questions ------------------------------------------------------


class TestElicitation:
    async def test_a_form_and_its_answers(self, tmp_path: Path) -> None:
        """elicitation/create is an input.request of kind `form` with its schema; a JSON
        answer is the content, a choice or other text fills the field it belongs to,
        `decline` declines."""
        async with acp_unit(tmp_path, "hitl_agent.py") as unit:
            session = await unit.create_session()
            asked: list[InputRequest] = []

            async def ask(text: str, answer: str) -> str:
                async def on_input(request: InputRequest) -> str:
                    asked.append(request)
                    return answer

                return await session.prompt(text, on_input=on_input).text()

            assert await ask("elicit", '{"branch": "main"}') == 'accept {"branch": "main"}'
            form = asked[-1]
            assert (form.kind, form.options) == ("form", ())
            assert form.data is not None and form.data["schema"]["required"] == ["branch"]
            assert await ask("choose", "red") == 'accept {"colour": "Red"}'
            assert asked[-1].options == ("Red", "Blue")
            assert await ask("choose", "teal") == 'accept {"colour_custom": "teal"}'
            assert await ask("elicit", "decline") == "decline"

    async def test_cancel_while_asking_answers_cancel(self, tmp_path: Path) -> None:
        """Cancelling a prompt whose form waits for an answer answers the agent's
        request `cancel` (it would wait for ever); the session goes on."""
        async with acp_unit(tmp_path, "hitl_agent.py") as unit:
            session = await unit.create_session()
            stream = session.prompt("elicit")
            async for ev in stream:
                if isinstance(ev, InputRequest):
                    break
            await stream.aclose()
            assert stream.outcome == "cancelled"
            record = tmp_path / "elicited.txt"
            with trio.fail_after(10):
                while not record.exists():
                    await trio.sleep(0.05)
            assert record.read_text() == "cancel\n"
            assert await session.prompt("hello").text() == "hello"


# ---- cancel and crash -----------------------------------------------------------------------


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestCancel:
    async def test_cancel_mid_stream_stops_the_agent(self, tmp_path: Path) -> None:
        """prompt.cancel is session/cancel: the agent sees it and really stops."""
        record = tmp_path / "record.jsonl"
        async with acp_unit(tmp_path, "slow_agent.py", str(record)) as unit:
            session = await unit.create_session()
            for attempt in range(2):  # and the session takes prompts afterwards
                stream = session.prompt("go")
                got = []
                async for chunk in stream:
                    assert isinstance(chunk, ResponseChunk)
                    got.append(chunk.text)
                    if len(got) == 3:
                        break
                t0 = time.monotonic()
                await stream.aclose()
                assert stream.outcome == "cancelled"
                assert time.monotonic() - t0 < 2
                assert got == ["tick0 ", "tick1 ", "tick2 "]
                # The unit waited for the agent's answer: it has stopped already.
                events = [r["event"] for r in records(record)]
                assert events == ["prompt", "cancel", "stopped"] * (attempt + 1)
                stopped = records(record)[-1]
                assert stopped["cancelled"] is True
                assert stopped["sent"] < 10
            await trio.sleep(0.3)
            assert len(records(record)) == 6  # and nothing more happened

    async def test_crash_mid_prompt(self, tmp_path: Path) -> None:
        """The agent dying mid-prompt ends it with its exit status and last stderr lines."""
        async with acp_unit(tmp_path, "crash_agent.py") as unit:
            session = await unit.create_session()
            stream = session.prompt("go")
            got = []
            with pytest.raises(RequestError) as info:
                async for chunk in stream:
                    got.append(chunk)
            assert [c.text for c in got if isinstance(c, ResponseChunk)] == ["starting "]
            message = info.value.message
            assert info.value.code == ErrorCode.AGENT_ERROR
            assert "exit status 3" in message
            assert "fatal: the model server went away" in message
            assert "loading the model" in message
            # Later prompts of that session: a clear error, at once.
            with pytest.raises(RequestError) as info:
                await session.prompt("again").text()
            assert "has ended" in info.value.message
            assert "create a new session" in info.value.message
            # A new session starts a new agent process.
            fresh = await unit.create_session()
            with pytest.raises(RequestError) as info:
                await fresh.prompt("go").text()
            assert "exit status 3" in info.value.message


# ---- the agent's files and terminals ---------------------------------------------------------


class TestFiles:
    async def test_read_and_write_inside_the_working_directory(self, tmp_path: Path) -> None:
        """fs/write_text_file and fs/read_text_file (with line and limit) inside the root."""
        async with acp_unit(tmp_path, "fs_agent.py") as unit:
            session = await unit.create_session()
            target = tmp_path / "notes" / "a.txt"
            assert await session.prompt(f"write {target} hello world").text() == "written"
            assert target.read_text() == "hello world"
            assert await session.prompt(f"read {target}").text() == "hello world"
            (tmp_path / "lines.txt").write_text("l1\nl2\nl3\nl4\n")
            assert await session.prompt("read lines.txt 2 2").text() == "l2\nl3\n"
            assert (await session.prompt("read missing.txt").text()).startswith("error: no such")

    async def test_requests_outside_the_working_directory_are_refused(self, tmp_path: Path) -> None:
        """Every path that leads out is refused with an error the agent sees."""
        root = tmp_path / "root"
        root.mkdir()
        secret = tmp_path / "secret.txt"
        secret.write_text("do not read")
        (root / "out").symlink_to(tmp_path)
        async with acp_unit(root, "fs_agent.py") as unit:
            session = await unit.create_session()
            for path in (
                "/etc/passwd",
                "../secret.txt",
                str(secret),
                "out/secret.txt",
                "sub/../../secret.txt",
                "C:\\secret.txt",
            ):
                answer = await session.prompt(f"read {path}").text()
                assert answer.startswith("error: path "), (path, answer)
                assert "refused" in answer
            answer = await session.prompt("write ../written.txt x").text()
            assert "refused" in answer
            assert not (tmp_path / "written.txt").exists()
            answer = await session.prompt("write out/written.txt x").text()
            assert "refused" in answer
            assert not (tmp_path / "written.txt").exists()
            answer = await session.prompt("run .. pwd").text()
            assert "refused" in answer

    async def test_terminals_run_inside_the_working_directory(self, tmp_path: Path) -> None:
        """terminal/create runs the command with its cwd in the root; kill ends it."""
        (tmp_path / "sub").mkdir()
        async with acp_unit(tmp_path, "fs_agent.py") as unit:
            session = await unit.create_session()
            assert await session.prompt("run - echo hi").text() == "exit 0: hi\n"
            answer = await session.prompt("run sub pwd").text()
            assert answer == f"exit 0: {real(tmp_path / 'sub')}\n"
            assert await session.prompt("run - false").text() == "exit 1: "
            t0 = time.monotonic()
            assert await session.prompt("kill sleep 30").text() == "signal SIGTERM"
            assert time.monotonic() - t0 < 5
            answer = await session.prompt("run - no-such-command-here").text()
            assert answer.startswith("error: cannot run 'no-such-command-here'")

    async def test_options_switch_capabilities_off(self, tmp_path: Path) -> None:
        """`-o fs=ro -o terminal=off`: initialize says so, and the requests are refused."""
        async with acp_unit(tmp_path, "fs_agent.py", fs="ro", terminal="off") as unit:
            session = await unit.create_session()
            caps = json.loads(await session.prompt("caps").text())
            assert caps["fs"] == {"readTextFile": True, "writeTextFile": False}
            assert caps["terminal"] is False
            answer = await session.prompt("write a.txt x").text()
            assert answer.startswith("error: the client has no method 'fs/write_text_file'")
            assert not (tmp_path / "a.txt").exists()
            answer = await session.prompt("run - echo hi").text()
            assert "no method 'terminal/create'" in answer


# ---- the agent process -----------------------------------------------------------------------


class TestProcess:
    async def test_leaving_the_unit_ends_the_agent_and_its_group(self, tmp_path: Path) -> None:
        """EOF, SIGTERM, then SIGKILL: even an agent that ignores the first two goes,
        and so do the processes it started."""
        record = tmp_path / "record.jsonl"
        async with acp_unit(tmp_path, "slow_agent.py", str(record), "--stubborn") as unit:
            session = await unit.create_session()
            agent_pid, child_pid = map(int, (await session.prompt("pid").text()).split())
            assert alive(agent_pid) and alive(child_pid)
        deadline = time.monotonic() + 5
        while (alive(agent_pid) or alive(child_pid)) and time.monotonic() < deadline:
            await trio.sleep(0.05)
        assert not alive(agent_pid)
        assert not alive(child_pid)

    async def test_a_command_that_cannot_start(self, tmp_path: Path) -> None:
        """The agent's command not found: session.create fails and says why."""
        argv = latis_core.unit_command(
            "acp", {"cwd": str(tmp_path)}, args=["--", "no-such-acp-agent", "--acp"]
        )
        async with latis_core.connect_local(argv) as unit:
            with pytest.raises(RequestError) as info:
                await unit.create_session()
            assert "cannot start the agent 'no-such-acp-agent --acp'" in info.value.message

    def test_no_command_or_a_bad_option_is_a_usage_error(self, tmp_path: Path) -> None:
        """`latis-unit --agent acp` needs the agent's command after --."""
        proc = subprocess.run(
            latis_core.unit_command("acp"), capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 2
        assert "command after --" in proc.stderr
        with pytest.raises(ValueError, match="unknown option 'colour'"):
            AcpAgent.from_options({"colour": "red"}, ["agent"])
        with pytest.raises(ValueError, match="'fs' must be rw, ro or off"):
            AcpAgent.from_options({"fs": "all"}, ["agent"])
        with pytest.raises(ValueError, match="not a folder"):
            AcpAgent.from_options({"cwd": str(tmp_path / "none")}, ["agent"])


# ---- the path guard: THREATS.md scenario 16 ----------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "to-root").symlink_to("/")
    (root / "to-parent").symlink_to(tmp_path)
    (root / "to-sub").symlink_to(root / "sub")
    return root


class TestPathGuard:
    @pytest.mark.parametrize(
        "path",
        [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "sub/../../x",
            "to-root/etc/passwd",
            "to-root",
            "to-parent/x",
            "to-sub/../../x",
            "C:\\x",
            "c:x",
            "C:/x",
            "\\\\host\\share",
            "//host/share",
            "..\\x",
            "x\0y",
            "x" * 256,
            "a/" * 2100,
            "",
            "\ud800",
            "/",
            "..",
        ],
    )
    def test_corpus_is_refused(self, root: Path, path: str) -> None:
        with pytest.raises(PathRefused) as info:
            resolve_inside(root, path)
        assert "refused" in str(info.value)
        assert isinstance(info.value, ValueError)

    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            ("a.txt", "a.txt"),
            ("sub/a.txt", "sub/a.txt"),
            ("sub/../a.txt", "a.txt"),
            ("./sub", "sub"),
            (".", ""),
            ("to-sub/a.txt", "sub/a.txt"),
            ("new/dir/file", "new/dir/file"),
            ("100%/x", "100%/x"),  # a percent sign alone is just a character
        ],
    )
    def test_inside_is_accepted(self, root: Path, path: str, expected: str) -> None:
        resolved = resolve_inside(root, path)
        assert resolved == (root / expected).resolve()
        assert resolve_inside(root, str(root / path)) == resolved  # absolute, the same

    @pytest.mark.parametrize("path", ["..%2f..%2fetc%2fpasswd", "%2e%2e/x", "a%5Cb", "x%2F"])
    def test_percent_encoded_traversal_is_refused(self, root: Path, path: str) -> None:
        with pytest.raises(PathRefused, match="percent-encoded"):
            resolve_inside(root, path)

    def test_the_reason_is_given(self, root: Path) -> None:
        with pytest.raises(PathRefused, match="outside the working directory"):
            resolve_inside(root, "../x")
        with pytest.raises(PathRefused, match="NUL byte"):
            resolve_inside(root, "x\0")
        with pytest.raises(PathRefused, match="drive"):
            resolve_inside(root, "D:\\x".replace("\\", "/"))
        with pytest.raises(PathRefused, match="longer than 255"):
            resolve_inside(root, "y" * 300)

    def test_a_root_that_is_a_symlink(self, root: Path, tmp_path: Path) -> None:
        link = tmp_path / "link"
        link.symlink_to(root)
        assert resolve_inside(link, "sub") == (root / "sub").resolve()
        assert resolve_inside(link, str(link / "sub")) == (root / "sub").resolve()
        with pytest.raises(PathRefused):
            resolve_inside(link, "../x")
