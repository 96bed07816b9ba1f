"""The whole protocol against a real `latis-unit --stdio` process."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from wire import HELLO, frame, raw_unit

import latis_core
from latis_core import ErrorCode, InputRequest, RequestError, ResponseChunk

WORDS = "one two three four five six seven eight nine ten"


class TestHandshake:
    async def test_hello_names_unit_agent_and_capabilities(self) -> None:
        """The unit answers hello with its name, its agent and what it can do."""
        async with latis_core.connect_local(
            latis_core.unit_command(args=["--name", "box-1"])
        ) as unit:
            assert unit.name == "box-1"
            assert unit.agent.name == "echo"
            assert unit.agent.version == latis_core.__version__
            assert {"session.resume", "prompt.cancel", "state.subscribe", "input"} <= set(
                unit.capabilities
            )
            assert unit.hello.protocol == latis_core.PROTOCOL_VERSION
            assert unit.hello.max_frame == latis_core.DEFAULT_MAX_FRAME

    async def test_ping_round_trips(self) -> None:
        """A ping gets a pong and measures the round trip."""
        async with latis_core.connect_local() as unit:
            assert 0 < await unit.ping() < 5


class TestSessions:
    async def test_create_resume_destroy(self) -> None:
        """A session is created idle, can be resumed by id, and is gone once destroyed."""
        async with latis_core.connect_local() as unit:
            session = await unit.create_session()
            assert session.initial_state == "idle"
            again = await unit.resume_session(session.id)
            assert again.id == session.id
            assert again.initial_state == "idle"
            state = await unit.state()
            assert state.sessions == {session.id: "idle"}
            await session.destroy()
            assert (await unit.state()).sessions == {}
            with pytest.raises(RequestError) as info:
                await unit.resume_session(session.id)
            assert info.value.code == ErrorCode.UNKNOWN_SESSION
            with pytest.raises(RequestError) as info:
                await session.destroy()
            assert info.value.code == ErrorCode.UNKNOWN_SESSION

    async def test_sessions_are_independent(self) -> None:
        """Each session gets its own id and its own answers."""
        async with latis_core.connect_local() as unit:
            a = await unit.create_session()
            b = await unit.create_session()
            assert a.id != b.id
            assert await a.prompt("alpha").text() == "alpha"
            assert await b.prompt("beta").text() == "beta"

    async def test_session_limit(self) -> None:
        """A unit with --max-sessions 1 refuses a second session with limit_reached."""
        async with latis_core.connect_local(
            latis_core.unit_command(args=["--max-sessions", "1"])
        ) as unit:
            await unit.create_session()
            with pytest.raises(RequestError) as info:
                await unit.create_session()
            assert info.value.code == ErrorCode.LIMIT_REACHED
            assert "at most 1" in info.value.message


class TestPrompts:
    async def test_streamed_prompt(self) -> None:
        """A prompt streams one chunk per word, numbered from 0, then completes."""
        async with latis_core.connect_local() as unit:
            session = await unit.create_session()
            stream = session.prompt(WORDS)
            chunks = [chunk async for chunk in stream]
            assert [c.seq for c in chunks] == list(range(10))
            assert "".join(c.text for c in chunks) == WORDS
            assert stream.outcome == "complete"
            assert stream.final == latis_core.ResponseComplete(stream.id, chunks=10)

    async def test_chunks_arrive_as_they_are_made(self) -> None:
        """With a delay per word, the first chunk arrives long before the last is made."""
        async with latis_core.connect_local(options={"delay": "0.2"}) as unit:
            session = await unit.create_session()
            start = trio.current_time()
            async with session.prompt(WORDS) as stream:
                first = await stream.__anext__()
                assert first.text == "one "
                assert trio.current_time() - start < 1.5  # 10 words would take 2 s

    async def test_two_prompts_interleave_on_one_connection(self) -> None:
        """Two sessions' prompts stream at the same time over one connection."""
        async with latis_core.connect_local(options={"delay": "0.02"}) as unit:
            a = await unit.create_session()
            b = await unit.create_session()
            arrivals: list[tuple[str, int]] = []

            async def consume(name: str, session: latis_core.Session) -> None:
                async for chunk in session.prompt(WORDS):
                    arrivals.append((name, chunk.seq))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume, "a", a)
                nursery.start_soon(consume, "b", b)
            assert sorted(arrivals) == [(n, i) for n in "ab" for i in range(10)]
            first_b = next(i for i, (n, _) in enumerate(arrivals) if n == "b")
            last_a = max(i for i, (n, _) in enumerate(arrivals) if n == "a")
            assert first_b < last_a, "the second prompt waited for the first"

    async def test_busy_session_refuses_a_second_prompt(self) -> None:
        """A session answering a prompt refuses another with session_busy."""
        async with latis_core.connect_local(options={"delay": "0.05"}) as unit:
            session = await unit.create_session()
            async with session.prompt(WORDS) as first:
                await first.__anext__()
                with pytest.raises(RequestError) as info:
                    await session.prompt("again").text()
                assert info.value.code == ErrorCode.SESSION_BUSY

    async def test_a_prompt_right_after_leaving_one_waits_for_its_cancel(self) -> None:
        """`break` out of a prompt's chunks cancels it; the next prompt, sent at once,
        starts when the cancelled one has ended (not `session_busy`), every time."""
        async with latis_core.connect_local(options={"delay": "0.02", "repeat": "20"}) as unit:
            session = await unit.create_session()
            for i in range(25):
                async for chunk in session.prompt(f"p{i}"):
                    assert chunk.text.startswith(f"p{i}")
                    break
            assert await session.prompt("last").text() == " ".join(["last"] * 20)

    async def test_unknown_session(self) -> None:
        """A prompt to a session that does not exist fails with unknown_session."""
        async with latis_core.connect_local() as unit:
            ghost = latis_core.Session(unit, "no-such-session")
            with pytest.raises(RequestError) as info:
                await ghost.prompt("hi").text()
            assert info.value.code == ErrorCode.UNKNOWN_SESSION


class TestCancel:
    async def test_cancel_mid_stream_stops_the_unit(self) -> None:
        """Cancelling a prompt's scope ends it as cancelled and the unit stops producing."""
        async with latis_core.connect_local(options={"delay": "0.05"}) as unit:
            session = await unit.create_session()
            stream = session.prompt(WORDS * 10)
            got = 0
            with trio.CancelScope() as scope:  # cancelled at the third chunk, whenever it comes
                async for _ in stream:
                    got += 1
                    if got == 3:
                        scope.cancel()
            assert got == 3
            assert stream.outcome == "cancelled"
            assert stream.final.chunks < 100
            assert await session.state() == "idle"
            # The session is free again: the unit really stopped the first prompt.
            assert await session.prompt("after").text() == "after"

    async def test_leaving_early_cancels(self) -> None:
        """Breaking out of the stream inside `async with` cancels the prompt on the unit."""
        async with latis_core.connect_local(options={"delay": "0.05"}) as unit:
            session = await unit.create_session()
            async with session.prompt(WORDS) as stream:
                async for _ in stream:
                    break
            assert stream.outcome == "cancelled"
            assert await session.state() == "idle"

    async def test_dropping_the_iterator_cancels(self) -> None:
        """A bare `async for ... break` (no `async with`) still cancels the prompt."""
        async with latis_core.connect_local(options={"delay": "0.05"}) as unit:
            session = await unit.create_session()
            async for _ in session.prompt(WORDS):
                break
            with trio.fail_after(5):
                while await session.state() != "idle":
                    await trio.sleep(0.02)

    async def test_cancel_on_the_wire_stops_chunks(self) -> None:
        """After prompt.cancel, the unit sends response.cancelled and no more chunks."""
        async with raw_unit({"delay": "0.02"}) as wire:
            sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
            await wire.send({"type": "prompt.send", "id": 2, "session": sid, "text": WORDS * 10})
            first = await wire.recv_for(2)
            assert first["type"] == "response.chunk"
            await wire.send({"type": "prompt.cancel", "id": 2})
            rest = await wire.stream_of(2)
            assert rest[-1]["type"] == "response.cancelled"
            assert rest[-1]["chunks"] == 1 + len(rest) - 1
            await trio.sleep(0.3)
            pong = await wire.request({"type": "ping", "id": 3})
            assert pong == {"type": "pong", "id": 3}
            assert wire.stash == [], "chunks kept coming after the cancel"

    async def test_cancel_of_a_finished_prompt_is_ignored(self) -> None:
        """A prompt.cancel that crosses the prompt's end gets no reply and breaks nothing."""
        async with raw_unit() as wire:
            sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
            await wire.send({"type": "prompt.send", "id": 2, "session": sid, "text": "a b"})
            assert (await wire.stream_of(2))[-1]["type"] == "response.complete"
            await wire.send({"type": "prompt.cancel", "id": 2})
            assert await wire.request({"type": "ping", "id": 3}) == {"type": "pong", "id": 3}


class TestState:
    async def test_subscribe_follows_busy_and_idle(self) -> None:
        """A subscription gets a snapshot, then busy and idle as a prompt runs."""
        async with latis_core.connect_local() as unit:
            session = await unit.create_session()
            async with unit.subscribe() as updates:
                snapshot = await updates.__anext__()
                assert snapshot.state == "idle"
                assert snapshot.sessions == {session.id: "idle"}
                await session.prompt("a b c").text()
                busy = await updates.__anext__()
                idle = await updates.__anext__()
                assert (busy.state, busy.sessions) == ("busy", {session.id: "busy"})
                assert (idle.state, idle.sessions) == ("idle", {session.id: "idle"})
            assert updates.final == latis_core.ResponseCancelled(updates.id)

    async def test_state_of_one_session(self) -> None:
        """state.get for one session names only that one; an unknown one is an error."""
        async with latis_core.connect_local() as unit:
            a = await unit.create_session()
            await unit.create_session()
            assert (await unit.state(a.id)).sessions == {a.id: "idle"}
            with pytest.raises(RequestError) as info:
                await unit.state("nope")
            assert info.value.code == ErrorCode.UNKNOWN_SESSION


class TestInput:
    async def test_question_answered(self) -> None:
        """The agent's question arrives mid-prompt; the answer reaches the agent."""
        async with latis_core.connect_local(options={"ask": "Proceed?"}) as unit:
            session = await unit.create_session()
            stream = session.prompt("the plan")
            question = await stream.__anext__()
            assert isinstance(question, InputRequest)
            assert question.question == "Proceed?"
            assert await session.state() == "waiting"
            assert (await unit.state()).state == "waiting"
            await stream.reply("yes please")
            assert await stream.text() == "yes please the plan"

    async def test_on_input_callback(self) -> None:
        """With on_input, questions are answered by the callback and never yielded."""
        async with latis_core.connect_local(options={"ask": "Name?"}) as unit:
            session = await unit.create_session()
            asked = []

            async def answer(request: InputRequest) -> str:
                asked.append(request.question)
                return "bob"

            chunks = [c async for c in session.prompt("hi", on_input=answer)]
            assert all(isinstance(c, ResponseChunk) for c in chunks)
            assert "".join(c.text for c in chunks) == "bob hi"
            assert asked == ["Name?"]

    async def test_cancel_while_waiting_for_input(self) -> None:
        """A prompt waiting for an answer can be cancelled; the session is idle again."""
        async with latis_core.connect_local(options={"ask": "Proceed?"}) as unit:
            session = await unit.create_session()
            async with session.prompt("x") as stream:
                assert isinstance(await stream.__anext__(), InputRequest)
            assert stream.outcome == "cancelled"
            assert await session.state() == "idle"


class TestLifetime:
    async def test_exits_on_stdin_eof(self) -> None:
        """The unit exits by itself, status 0, when its stdin reaches EOF."""
        async with raw_unit() as wire:
            await wire.stream.send_stream.aclose()
            with trio.fail_after(5):
                assert await wire.process.wait() == 0

    async def test_exits_on_eof_with_a_prompt_running(self) -> None:
        """EOF ends the unit even while a prompt is still being answered."""
        async with raw_unit({"delay": "1"}) as wire:
            sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
            await wire.send({"type": "prompt.send", "id": 2, "session": sid, "text": WORDS})
            await wire.stream.send_stream.aclose()
            with trio.fail_after(5):
                assert await wire.process.wait() == 0

    async def test_slow_reader_backpressure_and_cancel(self) -> None:
        """A reader that stops reading makes the unit wait; it still honours prompt.cancel."""
        async with raw_unit({"repeat": "300000"}) as wire:
            sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
            # 3 million chunks, ~60 MB of frames if nothing pushed back.
            await wire.send({"type": "prompt.send", "id": 2, "session": sid, "text": WORDS})
            await trio.sleep(1.0)  # read nothing
            assert wire.rss_kib() < 150_000, "the unit buffered what nobody read"
            await wire.send({"type": "prompt.cancel", "id": 2})
            messages = await wire.stream_of(2, timeout=30)
            assert messages[-1]["type"] == "response.cancelled"
            assert messages[-1]["chunks"] == len(messages) - 1 < 3_000_000
            assert [m["seq"] for m in messages[:-1]] == list(range(len(messages) - 1))


async def _busy_prompt(wire, sid: str, rid: int = 90) -> None:
    await wire.send({"type": "prompt.send", "id": rid, "session": sid, "text": WORDS})


async def _check_still_serving(wire, sid: str, rid: int = 90) -> None:
    """The prompt sent before the bad input completes, whole; a ping still works."""
    messages = await wire.stream_of(rid)
    assert messages[-1]["type"] == "response.complete"
    assert [m["seq"] for m in messages[:-1]] == list(range(10))
    assert await wire.request({"type": "ping", "id": 91}) == {"type": "pong", "id": 91}


BAD_INPUTS = [
    pytest.param(frame(b"{nope"), ErrorCode.BAD_MESSAGE, None, "not JSON", id="not-json"),
    pytest.param(frame(b"[1, 2]"), ErrorCode.BAD_MESSAGE, None, "JSON object", id="not-object"),
    pytest.param(frame(b'{"id": 5}'), ErrorCode.BAD_MESSAGE, 5, "no 'type'", id="no-type"),
    pytest.param(
        frame(b'{"type": 7, "id": 5}'), ErrorCode.BAD_MESSAGE, 5, "'type' must be", id="type-int"
    ),
    pytest.param(
        frame(b'{"type": "session.explode", "id": 5}'),
        ErrorCode.UNKNOWN_TYPE,
        5,
        "session.explode",
        id="unknown-type",
    ),
    pytest.param(
        frame(b'{"type": "prompt.send", "id": 5, "session": "s", "text": 7}'),
        ErrorCode.BAD_MESSAGE,
        5,
        "prompt.send: expected a string, got an integer @ $.text",
        id="wrong-kind",
    ),
    pytest.param(
        frame(b'{"type": "prompt.send", "id": 5, "session": "s"}'),
        ErrorCode.BAD_MESSAGE,
        5,
        "required field missing @ $.text",
        id="missing-field",
    ),
    pytest.param(
        frame(b'{"type": "ping", "id": true}'),
        ErrorCode.BAD_MESSAGE,
        None,
        "got a boolean @ $.id",
        id="bool-id",
    ),
    pytest.param(frame(b"\xff\xfe{}"), ErrorCode.BAD_FRAME, None, "UTF-8", id="not-utf8"),
    pytest.param(
        frame(b'{"type": "response.chunk", "id": 5, "seq": 0, "text": "x"}'),
        ErrorCode.BAD_MESSAGE,
        None,  # the id of a reply is the receiver's own: the error cannot carry it
        "not sent by a cmdr",
        id="wrong-direction",
    ),
    pytest.param(
        frame(b'{"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"}'),
        ErrorCode.BAD_MESSAGE,
        0,
        "already exchanged",
        id="second-hello",
    ),
    pytest.param(
        frame(b'{"type": "prompt.send", "id": 90, "session": "s", "text": "x"}'),
        ErrorCode.BAD_MESSAGE,
        None,
        "already in flight",
        id="duplicate-id",
    ),
]


class TestBadInput:
    @pytest.mark.parametrize(("data", "code", "rid", "says"), BAD_INPUTS)
    async def test_one_bad_message_costs_one_error(
        self, data: bytes, code: ErrorCode, rid: object, says: str
    ) -> None:
        """A bad message gets its error code and message; the rest of the connection goes on."""
        async with raw_unit({"delay": "0.01"}) as wire:
            sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
            await _busy_prompt(wire, sid)
            await wire.send_raw(data)
            error = await wire.recv_for(rid)
            assert error["code"] == code.value
            assert says in error["message"]
            await _check_still_serving(wire, sid)

    async def test_unknown_session_and_busy(self) -> None:
        """Requests for a missing or busy session fail alone; the running prompt goes on."""
        async with raw_unit({"delay": "0.01"}) as wire:
            sid = (await wire.request({"type": "session.create", "id": 1}))["data"]["session"]
            await _busy_prompt(wire, sid)
            missing = await wire.request(
                {"type": "prompt.send", "id": 2, "session": "ghost", "text": "x"}
            )
            assert (missing["type"], missing["code"]) == ("error", "unknown_session")
            busy = await wire.request({"type": "prompt.send", "id": 3, "session": sid, "text": "x"})
            assert (busy["type"], busy["code"]) == ("error", "session_busy")
            await _check_still_serving(wire, sid)

    async def test_request_before_hello(self) -> None:
        """A request before hello gets handshake_required; hello still works after it."""
        async with raw_unit(hello=False) as wire:
            error = await wire.request({"type": "session.create", "id": 1})
            assert (error["type"], error["code"], error["id"]) == (
                "error",
                "handshake_required",
                1,
            )
            assert (await wire.request(HELLO))["type"] == "hello"
            ack = await wire.request({"type": "session.create", "id": 1})
            assert ack["type"] == "ack"

    async def test_version_mismatch_closes(self) -> None:
        """A hello with another protocol version gets version_mismatch, then the unit closes."""
        async with raw_unit(hello=False) as wire:
            error = await wire.request({**HELLO, "protocol": 2})
            assert (error["code"], error["id"]) == ("version_mismatch", 0)
            assert "protocol 1" in error["message"]
            assert await wire.eof()

    async def test_role_mismatch_closes(self) -> None:
        """A hello that claims to come from a unit gets role_mismatch, then the unit closes."""
        async with raw_unit(hello=False) as wire:
            error = await wire.request({**HELLO, "role": "unit"})
            assert error["code"] == "role_mismatch"
            assert await wire.eof()

    async def test_frame_too_large_is_refused_before_its_payload(self) -> None:
        """A length over the limit is answered at once, without the payload, and the unit closes."""
        async with raw_unit(args=["--max-frame", "1024"]) as wire:
            # Only the 4 length bytes: the unit must not wait for 1 GiB to arrive.
            await wire.send_raw(struct.pack(">I", 1 << 30))
            error = await wire.recv(timeout=5)
            assert (error["type"], error["code"], error["id"]) == ("error", "frame_too_large", None)
            assert "1073741824" in error["message"] and "1024" in error["message"]
            assert await wire.eof()

    async def test_limit_is_announced_and_kept(self) -> None:
        """A frame just under the announced limit is read; one just over is refused."""
        async with raw_unit(args=["--max-frame", "1100"]) as wire:
            await wire.send({"type": "ping", "id": "x" * 1050})
            assert (await wire.recv())["type"] == "pong"
            await wire.send({"type": "ping", "id": "x" * 1150})
            assert (await wire.recv())["code"] == "frame_too_large"

    async def test_eof_mid_frame(self) -> None:
        """A stream that ends in the middle of a frame ends the unit cleanly."""
        async with raw_unit() as wire:
            await wire.send_raw(struct.pack(">I", 100) + b'{"type"')
            await wire.stream.send_stream.aclose()
            with trio.fail_after(5):
                assert await wire.process.wait() == 0


class TestCallersMistakes:
    """A script's wrong argument is a TypeError that says which, at the call: nothing
    is sent that the other side would refuse later (or, for an answer, never)."""

    async def test_prompts_and_answers_must_be_text(self) -> None:
        async with latis_core.connect_local(options={"ask": "Go on?"}) as unit:
            session = await unit.create_session()
            with pytest.raises(TypeError, match="a prompt's text must be a str, got int"):
                session.prompt(123)  # type: ignore[arg-type]

            async def five(_: InputRequest) -> str:
                return 5  # type: ignore[return-value]

            async def boom(_: InputRequest) -> str:
                raise ZeroDivisionError("boom")

            with trio.fail_after(10):
                with pytest.raises(TypeError, match="on_input must return the answer as a str"):
                    await session.prompt("x", on_input=five).text()
                with pytest.raises(ZeroDivisionError):
                    await session.prompt("x", on_input=boom).text()
                # Each of those prompts was cancelled: the session takes the next.
                stream = session.prompt("next")
                async for event in stream:
                    if isinstance(event, InputRequest):
                        with pytest.raises(TypeError, match="an answer must be a str, got int"):
                            await stream.reply(5)  # type: ignore[arg-type]
                        await stream.reply("yes")
                assert stream.outcome == "complete"

    async def test_a_unit_that_exits_at_once_says_why_in_the_error(self) -> None:
        """Its stderr's reason is in the ConnectError (in a notebook, the unit's stderr
        is the server's terminal), and the unit is named by its agent."""
        with pytest.raises(latis_core.ConnectError) as info:
            async with latis_core.connect_local(options={"nosuch": "1"}):
                pass
        assert str(info.value).startswith("local unit (latis-unit --agent echo) closed")
        assert str(info.value).endswith(
            "(the unit exited with code 2: latis-unit: error: echo agent: unknown option "
            "'nosuch' (known: ask, delay, remember, repeat))")

    async def test_wrong_kinds_of_arguments(self) -> None:
        with pytest.raises(TypeError, match="argv is the command line as a list of words"):
            async with latis_core.connect_local("latis-unit --stdio"):  # type: ignore[arg-type]
                pass
        with pytest.raises(TypeError, match=r"needs an Agent, got function: .*PythonAgent"):
            async with latis_core.connect_agent(lambda text: text):  # type: ignore[arg-type]
                pass
        with pytest.raises(TypeError, match="token must be bytes"):
            async with latis_core.connect("tcp://127.0.0.1:1", token="abc"):  # type: ignore[arg-type]
                pass


def test_a_script_without_logging_set_up_gets_exceptions_not_log_lines(tmp_path: Path) -> None:
    """An agent failing under a script prints nothing to stderr (no last-resort log
    lines, no traceback): the script gets the RequestError, once."""
    script = tmp_path / "script.py"
    script.write_text(
        "import trio, latis_core\n"
        "class Boom(latis_core.Agent):\n"
        "    info = latis_core.AgentInfo('boom', '1')\n"
        "    async def open_session(self, sid, options):\n"
        "        return self\n"
        "    async def prompt(self, text, reply):\n"
        "        raise RuntimeError('kaput')\n"
        "async def main():\n"
        "    async with latis_core.connect_agent(Boom()) as unit:\n"
        "        session = await unit.create_session()\n"
        "        try:\n"
        "            await session.prompt('x').text()\n"
        "        except latis_core.RequestError as exc:\n"
        "            print(exc)\n"
        "trio.run(main)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "agent_error: RuntimeError: kaput\n", "")


async def test_an_agent_that_exits_the_process_is_a_systemexit_not_a_group() -> None:
    """An in-process agent raising SystemExit (or KeyboardInterrupt) reaches the script
    as that exception, not as a group of it and the connection's end."""

    class Quits(latis_core.Agent):
        info = latis_core.AgentInfo("quits", "1")

        async def open_session(self, session_id: str, options: Any) -> Any:
            return self

        async def prompt(self, text: str, reply: Any) -> None:
            raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        async with latis_core.connect_agent(Quits()) as unit:  # type: ignore[abstract]
            session = await unit.create_session()
            await session.prompt("x").text()
    assert info.value.code == 3
