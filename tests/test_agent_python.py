"""The `python` agent: callables of every shape, in-process and in a real unit process."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import latis_core
from latis_core import ErrorCode, InputRequest, PythonAgent, RequestError


async def answer(agent: PythonAgent, text: str, **kwargs: Any) -> list[Any]:
    async with latis_core.connect_agent(agent) as unit:
        session = await unit.create_session()
        return [c async for c in session.prompt(text, **kwargs)]


async def words(text: str) -> Any:
    for word in text.split():
        yield word.upper() + " "


async def whole(text: str) -> str:
    await trio.lowlevel.checkpoint()
    return text[::-1]


def sync_gen(text: str) -> Any:
    yield "in a "
    yield "loop" if threading.current_thread() is threading.main_thread() else "thread"


def sync_fn(text: str) -> str:
    return f"len={len(text)}"


class TestShapes:
    @pytest.mark.parametrize(
        ("fn", "expected"),
        [
            (words, ["A ", "B "]),
            (whole, ["b a"]),
            (sync_gen, ["in a ", "thread"]),
            (sync_fn, ["len=3"]),
        ],
    )
    async def test_each_shape_of_callable(self, fn: Any, expected: list[str]) -> None:
        """Async generators, coroutines, generators and functions all answer."""
        chunks = await answer(PythonAgent(fn), "a b")
        assert [c.text for c in chunks] == expected

    async def test_typed_chunks_and_context(self) -> None:
        """A callable that takes a context can ask the human, keep memory, send typed chunks."""

        async def agent(text: str, ctx: Any) -> Any:
            ctx.memory["turns"] = ctx.memory.get("turns", 0) + 1
            yes = await ctx.ask("Run it?", options=("yes", "no"))
            yield {"kind": "tool_call", "data": {"tool": "run", "allowed": yes == "yes"}}
            yield f"turn {ctx.memory['turns']} in {ctx.session_id[:0]}session"

        async def say_yes(request: InputRequest) -> str:
            assert request.options == ("yes", "no")
            return "yes"

        async with latis_core.connect_agent(PythonAgent(agent)) as unit:
            assert unit.agent.name.endswith("agent")
            session = await unit.create_session()
            first = [c async for c in session.prompt("x", on_input=say_yes)]
            second = [c async for c in session.prompt("x", on_input=say_yes)]
        assert first[0].kind == "tool_call" and first[0].data == {"tool": "run", "allowed": True}
        assert [first[1].text, second[1].text] == ["turn 1 in session", "turn 2 in session"]

    async def test_a_failing_callable_is_an_agent_error(self) -> None:
        """An exception in the callable ends the prompt with agent_error and its message."""

        async def broken(text: str) -> Any:
            yield "so far "
            raise RuntimeError("out of ideas")

        async with latis_core.connect_agent(PythonAgent(broken)) as unit:
            session = await unit.create_session()
            with pytest.raises(RequestError) as info:
                await session.prompt("x").text()
        assert info.value.code == ErrorCode.AGENT_ERROR
        assert "RuntimeError: out of ideas" in info.value.message

    async def test_cancel_stops_an_async_callable(self) -> None:
        """Cancelling the prompt stops the callable at its next await."""
        stopped = trio.Event()

        async def forever(text: str) -> Any:
            try:
                while True:
                    yield "tick "
                    await trio.sleep(0.01)
            finally:
                stopped.set()

        async with latis_core.connect_agent(PythonAgent(forever)) as unit:
            session = await unit.create_session()
            async with session.prompt("x") as stream:
                await stream.__anext__()
            assert stream.outcome == "cancelled"
            with trio.fail_after(5):
                await stopped.wait()

    async def test_bad_items(self) -> None:
        """Yielding something that is not a chunk is an agent_error that says what it was."""

        async def odd(text: str) -> Any:
            yield 42

        with pytest.raises(RequestError, match="yielded a int: expected str, dict or None"):
            await answer(PythonAgent(odd), "x")


MODULE = '''
import trio

async def shout(text):
    for word in text.split():
        yield word.upper() + " "

async def forever(text):
    try:
        while True:
            yield "tick "
            await trio.sleep(0.01)
    finally:
        open(text, "w").write("stopped")

def broken(text):
    raise ValueError("no " + text)
'''


class TestAsAUnit:
    async def test_target_from_a_module(self, tmp_path: Path) -> None:
        """latis-unit --agent python -o target=module:function serves that function."""
        (tmp_path / "myagents.py").write_text(MODULE)
        argv = latis_core.unit_command(
            "python", {"target": "myagents:shout", "path": str(tmp_path)}
        )
        async with latis_core.connect_local(argv) as unit:
            assert unit.agent.name == "shout"
            session = await unit.create_session()
            assert await session.prompt("hello there").text() == "HELLO THERE "

    async def test_cancel_and_error_in_a_unit_process(self, tmp_path: Path) -> None:
        """Through a real unit: a cancel stops the callable; its exception is an agent_error."""
        (tmp_path / "myagents.py").write_text(MODULE)
        path = str(tmp_path)
        marker = tmp_path / "stopped.txt"
        forever = latis_core.unit_command("python", {"target": "myagents:forever", "path": path})
        async with latis_core.connect_local(forever) as unit:
            session = await unit.create_session()
            async with session.prompt(str(marker)) as stream:
                assert (await stream.__anext__()).text == "tick "
            assert stream.outcome == "cancelled"
            assert marker.read_text() == "stopped"
        broken = latis_core.unit_command("python", {"target": "myagents:broken", "path": path})
        async with latis_core.connect_local(broken) as unit:
            session = await unit.create_session()
            with pytest.raises(RequestError) as info:
                await session.prompt("luck").text()
            assert info.value.code == ErrorCode.AGENT_ERROR
            assert "ValueError: no luck" in info.value.message

    @pytest.mark.parametrize(
        ("options", "says"),
        [
            ({}, "option 'target' (module:function) is required"),
            ({"target": "nocolon"}, "is not module:function"),
            ({"target": "no_such_module_xyz:f"}, "cannot import 'no_such_module_xyz'"),
            ({"target": "os:nope"}, "'os' has no attribute 'nope'"),
            ({"target": "os:sep"}, "is not callable"),
            ({"target": "os:getcwd", "colour": "x"}, "unknown option 'colour'"),
        ],
    )
    def test_bad_options(self, options: dict[str, str], says: str) -> None:
        """A bad target or option is a usage error that says what is wrong."""
        result = subprocess.run(latis_core.unit_command("python", options), capture_output=True,
                                text=True, input="", timeout=30)
        assert result.returncode == 2
        assert says in result.stderr

    def test_a_command_is_refused(self) -> None:
        """The python agent runs no command: words after -- are an error."""
        argv = latis_core.unit_command("python", {"target": "os:getcwd"}, args=["--", "x"])
        result = subprocess.run(argv, capture_output=True, text=True, input="", timeout=30)
        assert result.returncode == 2
        assert "python agent runs no command" in result.stderr


def test_blocking_notebook_style() -> None:
    """From code that is not async, an in-process python agent is one call away."""
    from latis_core import blocking

    with blocking.connect_local(
        [sys.executable, "-m", "latis_core._unit.cli", "--stdio", "--agent", "python",
         "-o", "target=os.path:basename"]
    ) as unit:
        assert unit.create_session().prompt("/a/b/c.txt").text() == "c.txt"
