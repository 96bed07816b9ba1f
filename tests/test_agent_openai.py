"""The `openai` agent, through a real `latis-unit` process, against a real HTTP server.

The server is tests/openai_stub.py on 127.0.0.1: it streams server-sent
events the way ollama, vLLM, llama.cpp and OpenAI do (chunked, one event per
write). The API key reaches the unit through its environment only.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from latis_agents.openai import OpenAIAgent
from latis_agents.openai.agent import TRUNCATED_MARK
from latis_agents.openai.sse import SSEDecoder
from openai_stub import OpenAIStub, StubRequest, StubResponse, open_stub, stream_text

import latis_core
from latis_core import ErrorCode, RequestError, ResponseChunk

KEY_ENV = "LATIS_TEST_OPENAI_KEY"
KEY = "sk-latis-test-" + secrets.token_hex(16)
ENV = {**os.environ, KEY_ENV: KEY}


class Unit:
    """A running unit, and its stderr once it has exited."""

    client: latis_core.UnitClient
    stderr = ""

    async def session(self, **options: Any) -> latis_core.Session:
        return await self.client.create_session(**options)


@asynccontextmanager
async def openai_unit(
    stub: OpenAIStub | None,
    *,
    key: bool = True,
    args: tuple[str, ...] = (),
    base_url: str | None = None,
    options: Mapping[str, str] | None = None,
    **more: str,
) -> AsyncIterator[Unit]:
    """A `latis-unit --stdio --agent openai` pointed at `stub`, its stderr kept.

    On the way out, checks that the key never showed in its stderr.
    """
    opts = {"base_url": base_url or (stub.base_url if stub else ""), "model": "stub-model"}
    if key:
        opts["api_key_env"] = KEY_ENV
    opts.update(options or {})
    opts.update(more)
    argv = latis_core.unit_command("openai", opts, args=args)
    with tempfile.TemporaryFile() as err:
        unit = Unit()
        async with latis_core.connect_local(argv, env=ENV, stderr=err.fileno()) as client:
            unit.client = client
            yield unit
        err.seek(0)
        unit.stderr = err.read().decode("utf-8", "replace")
    assert KEY not in unit.stderr, "the API key showed in the unit's stderr"


async def collect(stream: latis_core.PromptStream) -> list[ResponseChunk]:
    return [c async for c in stream if isinstance(c, ResponseChunk)]


async def failure(session: latis_core.Session, text: str = "hi") -> str:
    """The message of the agent_error a prompt ends with."""
    with pytest.raises(RequestError) as info:
        await session.prompt(text).text()
    assert info.value.code == ErrorCode.AGENT_ERROR
    message = info.value.message
    assert KEY not in message
    assert message.startswith("OpenAIError: ")
    return message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- streaming ------------------------------------------------------------------------------


class TestStreaming:
    async def test_streamed_answer_arrives_as_the_server_sends_it(self) -> None:
        """Each content delta is one chunk, sent on as it arrives (before the rest is made)."""
        go_on = trio.Event()

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.start()
            await response.chunk(role="assistant", content="")
            await response.chunk(content="Hel")
            await response.chunk(content="lo")
            await go_on.wait()  # the rest comes only once the client has the first chunks
            await response.chunk(content=", world")
            await response.chunk(content="!", finish_reason="stop")
            await response.done()

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            async with session.prompt("Say hello") as stream:
                first, second = await stream.__anext__(), await stream.__anext__()
                assert isinstance(first, ResponseChunk) and isinstance(second, ResponseChunk)
                assert (first.text, second.text) == ("Hel", "lo")
                go_on.set()
                rest = await collect(stream)
            assert [c.text for c in rest] == [", world", "!"]
            assert all(c.kind is None for c in [first, second, *rest])
            assert stream.outcome == "complete"
            [request] = stub.requests
            assert request.target == "/v1/chat/completions"
            assert request.headers["authorization"] == f"Bearer {KEY}"
            assert request.json() == {
                "model": "stub-model",
                "messages": [{"role": "user", "content": "Say hello"}],
                "stream": True,
            }
            assert stub.problems == []

    async def test_history_is_sent_with_each_prompt(self) -> None:
        """The second request carries the first exchange; sessions keep their own history."""
        async with open_stub(stream_text(["Paris", " it is."])) as stub, openai_unit(stub) as unit:
            a = await unit.session()
            b = await unit.session()
            assert await a.prompt("Capital of France?").text() == "Paris it is."
            assert await a.prompt("And of Italy?").text() == "Paris it is."
            assert await b.prompt("Fresh start").text() == "Paris it is."
            assert stub.requests[1].messages == [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris it is."},
                {"role": "user", "content": "And of Italy?"},
            ]
            assert stub.requests[2].messages == [{"role": "user", "content": "Fresh start"}]
            # One connection per session, kept alive between its prompts.
            assert stub.connections == 2

    async def test_system_prompt_temperature_max_tokens_headers(self) -> None:
        """Agent options go into every request; header.NAME adds a header."""
        options = {
            "system": "You are terse.",
            "temperature": "0.25",
            "max_tokens": "64",
            "header.X-Team": "latis",
        }
        async with open_stub() as stub, openai_unit(stub, options=options) as unit:
            session = await unit.session()
            await session.prompt("one").text()
            await session.prompt("two").text()
            body = stub.requests[1].json()
            assert body["messages"][0] == {"role": "system", "content": "You are terse."}
            assert [m["role"] for m in body["messages"]] == [
                "system", "user", "assistant", "user"
            ]
            assert body["temperature"] == 0.25
            assert body["max_tokens"] == 64
            assert stub.requests[1].headers["x-team"] == "latis"

    async def test_session_options_override_the_agent_options(self) -> None:
        """session.create may set model, system, temperature and max_tokens for one session."""
        async with open_stub() as stub, openai_unit(stub, system="Default.") as unit:
            custom = await unit.session(model="other-model", system="Be brief.", temperature=0.5)
            plain = await unit.session()
            await custom.prompt("hi").text()
            await plain.prompt("hi").text()
            body = stub.requests[0].json()
            assert body["model"] == "other-model"
            assert body["messages"][0] == {"role": "system", "content": "Be brief."}
            assert body["temperature"] == 0.5
            body = stub.requests[1].json()
            assert body["model"] == "stub-model"
            assert body["messages"][0]["content"] == "Default."
            assert "temperature" not in body
            with pytest.raises(RequestError) as info:
                await unit.session(modle="typo")
            assert info.value.code == ErrorCode.BAD_MESSAGE  # the request's options, not the agent
            assert "session options: " in info.value.message
            assert "unknown session option 'modle'" in info.value.message
            with pytest.raises(RequestError) as info:
                await unit.session(temperature="hot")
            assert "option 'temperature' must be a number" in info.value.message

    async def test_tool_call_deltas(self) -> None:
        """Tool-call deltas become tool_call chunks: each names its call and carries its
        piece of the arguments."""

        def call(index: int, args: str, **head: str) -> list[dict[str, Any]]:
            entry: dict[str, Any] = {"index": index, "function": {"arguments": args}}
            if "id" in head:
                entry |= {"id": head["id"], "type": "function"}
                entry["function"]["name"] = head["name"]
            return [entry]

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.chunk(role="assistant", content="Looking it up.")
            await response.chunk(tool_calls=call(0, "", id="call_1", name="get_weather"))
            await response.chunk(tool_calls=call(0, '{"city": '))
            await response.chunk(tool_calls=call(0, '"Paris"}'))
            await response.chunk(tool_calls=call(1, '{"tz": "CET"}', id="call_2", name="time"))
            await response.chunk(finish_reason="tool_calls")
            await response.done()

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            chunks = await collect(session.prompt("Weather in Paris?"))
            assert chunks[0].text == "Looking it up." and chunks[0].kind is None
            calls = [c for c in chunks if c.kind == "tool_call"]
            assert len(calls) == 4 and len(chunks) == 5, "a finish or other chunk slipped in"
            assert calls[0].data == {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "name": "get_weather",
                "arguments": "",
            }
            assert calls[1].data is not None and calls[1].data["id"] == "call_1"
            assert calls[2].data is not None and calls[2].data["name"] == "get_weather"
            by_call: dict[str, str] = {}
            for c in calls:
                assert c.data is not None
                by_call[c.data["name"]] = by_call.get(c.data["name"], "") + c.data["arguments"]
            assert by_call == {"get_weather": '{"city": "Paris"}', "time": '{"tz": "CET"}'}
            # The history keeps the text only (see docs/agent-openai.md).
            await session.prompt("thanks").text()
            assert stub.requests[1].messages[1] == {
                "role": "assistant", "content": "Looking it up."
            }

    async def test_reasoning_deltas(self) -> None:
        """reasoning_content and reasoning deltas become reasoning chunks, kept out of history."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.chunk(role="assistant", reasoning="Think")
            await response.chunk(reasoning="ing...", reasoning_field="reasoning")
            await response.chunk(content="42")
            await response.chunk(finish_reason="stop")
            await response.done()

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            chunks = await collect(session.prompt("Meaning of life?"))
            assert [(c.kind, c.text) for c in chunks] == [
                ("reasoning", "Think"),
                ("reasoning", "ing..."),
                (None, "42"),
            ]
            await session.prompt("Sure?").text()
            assert stub.requests[1].messages[1] == {"role": "assistant", "content": "42"}

    async def test_events_split_across_reads(self) -> None:
        """An event cut anywhere (mid-JSON, mid-UTF-8, between CR and LF) arrives whole;
        comments, keep-alives and other fields are ignored."""
        event = (
            b'data: {"choices": [{"index": 0, "delta": {"content": "caf\xc3\xa9 \xe2\x98\x95"}}]}'
        )

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.start()
            await response.write(": keep-alive\n\n")
            await response.write("id: 1\r\nretry: 100\r\n")
            await response.write(event[:7])
            await trio.sleep(0.02)
            await response.write(event[7:58])  # inside the UTF-8 of é
            await trio.sleep(0.02)
            await response.write(event[58:] + b"\r")
            await trio.sleep(0.02)
            await response.write(b"\n\r\n")
            await response.write(b': ping\n\ndata: {"choices": [{"delta": {"content": "!"}}]}\n')
            await trio.sleep(0.02)
            await response.write(b"\ndata: [DONE]\n\n")
            await response.end()

        assert event[57:59] == b"\xc3\xa9"
        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            chunks = await collect(session.prompt("coffee?"))
            assert [c.text for c in chunks] == ["café ☕", "!"]

    async def test_unusual_finish_reason_is_noted(self) -> None:
        """A finish_reason other than stop or tool_calls ends the answer with a finish chunk."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.chunk(content="I can")
            await response.chunk(finish_reason="content_filter")
            await response.done()

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            chunks = await collect(session.prompt("..."))
            assert chunks[-1].kind == "finish"
            assert chunks[-1].data == {"finish_reason": "content_filter"}

    async def test_usage_and_a_server_that_does_not_stream(self) -> None:
        """A whole JSON completion (a server that ignores stream) still answers; usage
        becomes a usage chunk."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.json(
                {
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "All at once."},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
                }
            )

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            chunks = await collect(session.prompt("hi"))
            assert [(c.kind, c.text) for c in chunks] == [(None, "All at once."), ("usage", "")]
            assert chunks[1].data == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


# ---- errors -------------------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "message"),
        [
            (400, "This model's maximum context length is 8192 tokens."),
            (401, "Incorrect API key provided."),
            (500, "The server had an error while processing your request."),
        ],
    )
    async def test_http_error_carries_the_servers_message(
        self, status: int, message: str
    ) -> None:
        """An HTTP error fails the prompt with the server's own message and the status."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.error(status, message)

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            text = await failure(session)
            assert f"HTTP {status}" in text
            assert message in text
            assert stub.base_url in text
            assert len(stub.requests) == 1
            # An errored prompt adds nothing to the history.
            stub.handler = stream_text(["ok"])
            assert await session.prompt("again").text() == "ok"
            assert stub.requests[1].messages == [{"role": "user", "content": "again"}]

    async def test_a_body_that_is_not_json_is_quoted(self) -> None:
        """Without OpenAI's error shape, the body's first 500 characters are the message."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.body(b"<html>Bad Gateway " + b"x" * 2000 + b"</html>", 502)

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            text = await failure(await unit.session())
            assert "HTTP 502 Bad Gateway: <html>Bad Gateway xxx" in text
            assert text.endswith("x" * 482 + "…")  # 500 characters of the body
            assert "x" * 483 not in text

    async def test_rate_limited_with_retry_after(self) -> None:
        """429 says "rate limited", with the server's message and its Retry-After."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.error(
                429, "Rate limit reached for requests", type="requests",
                headers={"Retry-After": "7"},
            )

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            text = await failure(await unit.session())
            assert "rate limited" in text and "HTTP 429" in text
            assert "Rate limit reached for requests" in text
            assert "Retry-After: 7 s" in text
            assert len(stub.requests) == 1, "retried with retries=0"

    async def test_retries_after_5xx_and_429_but_not_4xx(self) -> None:
        """retries=N tries again after 5xx and 429 (honouring Retry-After), not after 400."""
        answers = iter(["503", "429", "ok", "400"])

        async def answer(request: StubRequest, response: StubResponse) -> None:
            what = next(answers)
            if what == "503":
                await response.error(503, "overloaded", type="server_error")
            elif what == "429":
                await response.error(429, "slow down", headers={"Retry-After": "0"})
            elif what == "400":
                await response.error(400, "bad request")
            else:
                await stream_text(["third", " time"])(request, response)

        async with open_stub(answer) as stub, openai_unit(stub, retries="3") as unit:
            session = await unit.session()
            start = trio.current_time()
            assert await session.prompt("hi").text() == "third time"
            assert 0.4 < trio.current_time() - start < 3  # one backoff of 0.5 s
            assert len(stub.requests) == 3
            assert "HTTP 400" in await failure(session)
            assert len(stub.requests) == 4

    async def test_server_down(self) -> None:
        """A server that is not there: a clear message naming the base_url."""
        base_url = f"http://127.0.0.1:{free_port()}/v1"
        async with openai_unit(None, base_url=base_url) as unit:
            text = await failure(await unit.session())
            assert f"cannot connect to {base_url}" in text
            assert "is the server running?" in text

    @pytest.mark.parametrize("when", ["before the answer", "mid-stream"])
    async def test_timeout(self, when: str) -> None:
        """A server that goes quiet for longer than `timeout` fails the prompt, naming it."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            if when == "mid-stream":
                await response.chunk(content="Let me think")
            await trio.sleep(30)

        async with open_stub(answer) as stub, openai_unit(stub, timeout="0.4") as unit:
            session = await unit.session()
            start = trio.current_time()
            text = await failure(session)
            assert trio.current_time() - start < 3
            assert "timed out" in text and "0.4 s" in text and stub.base_url in text

    async def test_connection_closed_mid_stream(self) -> None:
        """A server that drops the connection mid-answer fails the prompt, saying so."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.chunk(content="Half an ans")
            await response.abort()

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            text = await failure(await unit.session())
            assert "closed before the answer was complete" in text

    async def test_error_event_mid_stream(self) -> None:
        """An error sent as an event (OpenAI's shape, or llama.cpp's `error:` field) fails the
        prompt with its message."""

        async def answer(request: StubRequest, response: StubResponse) -> None:
            await response.chunk(content="Start")
            if request.messages[-1]["content"] == "openai":
                await response.event({"error": {"message": "The model crashed", "type": "x"}})
            else:
                await response.write('error: {"code": 500, "message": "slot unavailable"}\n\n')
            await response.done()

        async with open_stub(answer) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            assert "The model crashed" in await failure(session, "openai")
            assert "slot unavailable" in await failure(session, "llama.cpp")


# ---- cancel ---------------------------------------------------------------------------------


class TestCancel:
    async def test_cancel_mid_stream_closes_the_connection(self) -> None:
        """Cancelling a prompt closes the HTTP stream at once; the streamed part stays in the
        history, marked as interrupted."""

        async def endless(request: StubRequest, response: StubResponse) -> None:
            await response.start()
            n = 0
            while True:
                await response.chunk(content=f"w{n} ")
                n += 1
                await trio.sleep(0.02)

        async with open_stub(endless) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            async with session.prompt("Count forever") as stream:
                got = [await stream.__anext__() for _ in range(3)]
                assert all(isinstance(c, ResponseChunk) for c in got)
                cancelled_at = trio.current_time()
            assert stream.outcome == "cancelled"
            request = stub.requests[0]
            with trio.fail_after(2):
                await request.disconnected.wait()
            assert request.disconnected_at is not None
            assert request.disconnected_at - cancelled_at < 1
            assert [getattr(c, "text", None) for c in got] == ["w0 ", "w1 ", "w2 "]
            assert await session.state() == "idle"

            stub.handler = stream_text(["fine"])
            assert await session.prompt("Stop.").text() == "fine"
            user, assistant, again = stub.requests[1].messages
            assert user == {"role": "user", "content": "Count forever"}
            assert assistant["role"] == "assistant"
            assert assistant["content"].startswith("w0 w1 w2 ")
            assert assistant["content"].endswith(TRUNCATED_MARK)
            assert again == {"role": "user", "content": "Stop."}

    async def test_cancel_before_the_answer_starts(self) -> None:
        """A prompt cancelled while the server has not answered yet closes the connection too;
        the history records the question and an interrupted, empty answer."""

        asked = trio.Event()

        async def slow(request: StubRequest, response: StubResponse) -> None:
            asked.set()
            await trio.sleep(30)

        async with open_stub(slow) as stub, openai_unit(stub) as unit:
            session = await unit.session()
            stream = session.prompt("Take your time")
            # Cancelled once the server has the question (not after a fixed time:
            # on a busy machine the unit's first request may take longer).
            with trio.move_on_after(20) as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_when_asked() -> None:
                        await asked.wait()
                        scope.cancel()

                    nursery.start_soon(cancel_when_asked)
                    await collect(stream)
            assert asked.is_set()
            assert stream.outcome == "cancelled"
            with trio.fail_after(2):
                await stub.requests[0].disconnected.wait()
            stub.handler = stream_text(["ok"])
            assert await session.prompt("Never mind").text() == "ok"
            assert stub.requests[1].messages[:2] == [
                {"role": "user", "content": "Take your time"},
                {"role": "assistant", "content": TRUNCATED_MARK},
            ]


# ---- the key --------------------------------------------------------------------------------


class TestKey:
    async def test_key_never_shows(self) -> None:
        """The key reaches the server, and never the unit's stderr (at debug level), an
        error message or the command line."""

        async def echo_auth(request: StubRequest, response: StubResponse) -> None:
            # A careless server that repeats the key in its error message.
            await response.error(401, f"Bad key {request.headers['authorization']}")

        async with open_stub(echo_auth) as stub, openai_unit(
            stub, args=("--log-level", "debug")
        ) as unit:
            session = await unit.session()
            text = await failure(session)
            assert "Bad key Bearer ***" in text
            assert stub.requests[0].headers["authorization"] == f"Bearer {KEY}"
            ps = await trio.run_process(["ps", "-eww", "-o", "args="], capture_stdout=True)
            listing = ps.stdout.decode()
            assert stub.base_url in listing and KEY_ENV in listing, "the unit is not in ps"
            assert KEY not in listing
        assert "DEBUG" in unit.stderr and "401" in unit.stderr  # it did log, at length

    async def test_no_key_no_authorization(self) -> None:
        """Without api_key_env no Authorization header is sent (ollama, llama.cpp, ...)."""
        async with open_stub() as stub, openai_unit(stub, key=False) as unit:
            await (await unit.session()).prompt("hi").text()
            assert "authorization" not in stub.requests[0].headers


# ---- options ------------------------------------------------------------------------------


def run_unit(*options: str, env: Mapping[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "latis_core._unit.cli", "--stdio", "--agent", "openai"]
    for option in options:
        argv += ["-o", option]
    return subprocess.run(
        argv, env=dict(env), capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
    )


class TestOptions:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            (["model=m"], "option 'base_url' is required"),
            (["base_url=http://127.0.0.1:1/v1"], "option 'model' is required"),
            (
                ["base_url=http://127.0.0.1:1/v1", "model=m", "api_key_env=LATIS_NOT_SET_X"],
                "environment variable 'LATIS_NOT_SET_X' (option api_key_env) is not set",
            ),
            (
                ["base_url=http://127.0.0.1:1/v1", "model=m", "temprature=1"],
                "unknown option 'temprature'",
            ),
        ],
    )
    def test_usage_errors_exit_2(self, options: list[str], message: str) -> None:
        """latis-unit refuses bad options before it starts: exit 2 and a precise message."""
        result = run_unit(*options)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"base_url": "ftp://x/v1"}, "must be an http:// or https:// URL"),
            ({"base_url": "http://user:pw@host/v1"}, "must not hold credentials"),
            ({"base_url": "http://h/v1/chat/completions"}, "without /chat/completions"),
            ({"base_url": "http://h:99999/v1"}, "is not a URL"),
            ({"model": ""}, "option 'model' is required"),
            ({"temperature": "warm"}, "option 'temperature' must be a number"),
            ({"temperature": "-1"}, "option 'temperature' must be a number >= 0"),
            ({"max_tokens": "0"}, "option 'max_tokens' must be >= 1"),
            ({"max_tokens": "1.5"}, "option 'max_tokens' must be a whole number"),
            ({"timeout": "0"}, "option 'timeout' must be a number > 0"),
            ({"timeout": "nan"}, "option 'timeout' must be a number > 0"),
            ({"retries": "-1"}, "option 'retries' must be >= 0"),
            ({"header.Authorization": "Bearer x"}, "api_key_env"),
            ({"header.X-Api-Key": "x"}, "is refused"),
            ({"header.Content-Length": "3"}, "the adapter sets Content-Length itself"),
            ({"header.bad name": "x"}, "not a valid HTTP header name"),
            ({"header.": "x"}, "needs a NAME"),
            ({"api_key_env": "EMPTY_KEY_VAR"}, "'EMPTY_KEY_VAR' (option api_key_env) is empty"),
        ],
    )
    def test_bad_options(
        self, options: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each bad option gets a ValueError that says what is wrong."""
        monkeypatch.setenv("EMPTY_KEY_VAR", "")
        full = {"base_url": "http://127.0.0.1:1/v1", "model": "m", **options}
        with pytest.raises(ValueError, match="openai agent: ") as info:
            OpenAIAgent.from_options(full)
        assert message in str(info.value)

    def test_a_key_given_as_the_variable_name_is_not_echoed(self) -> None:
        """api_key_env=<the key itself> is refused without repeating it."""
        result = run_unit("base_url=http://127.0.0.1:1/v1", "model=m", f"api_key_env={KEY}")
        assert result.returncode == 2
        assert "NAME of an environment variable" in result.stderr
        assert KEY not in result.stderr.replace(f"api_key_env={KEY}", "")

    def test_a_command_is_refused(self) -> None:
        with pytest.raises(ValueError, match="runs no command"):
            OpenAIAgent.from_options({"base_url": "http://h/v1", "model": "m"}, ["ollama"])

    def test_repr_hides_the_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(KEY_ENV, KEY)
        agent = OpenAIAgent.from_options(
            {"base_url": "http://h/v1", "model": "m", "api_key_env": KEY_ENV}
        )
        assert KEY not in repr(agent) and KEY not in repr(vars(agent))
        assert KEY_ENV in repr(agent)

    def test_import_does_not_load_httpx(self) -> None:
        """httpx is imported on first use, not with the adapter."""
        code = "import sys, latis_agents.openai; print('httpx' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip() == "False", out.stderr


# ---- the SSE decoder ------------------------------------------------------------------------


class TestSSEDecoder:
    STREAM = (
        b"\xef\xbb\xbf: comment\r\n"
        b"event: message\r\n"
        b"data: one\r\n"
        b"data:two\r\r"
        b"id: 7\n"
        b"data: {\"a\": \"\xc3\xa9\"}\n\n"
        b"\n\n"
        b"event: error\ndata: boom\n\n"
        b"data: [DONE]\n\n"
    )
    EVENTS = [
        ("message", "one\ntwo"),
        ("message", '{"a": "é"}'),
        ("error", "boom"),
        ("message", "[DONE]"),
    ]

    def test_whole(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(self.STREAM) + decoder.close() == self.EVENTS

    def test_cut_at_every_byte(self) -> None:
        """However the stream is cut into two reads, the same events come out."""
        for cut in range(len(self.STREAM) + 1):
            decoder = SSEDecoder()
            events = decoder.feed(self.STREAM[:cut]) + decoder.feed(self.STREAM[cut:])
            assert events + decoder.close() == self.EVENTS, cut

    def test_one_byte_at_a_time(self) -> None:
        decoder = SSEDecoder()
        events = []
        for i in range(len(self.STREAM)):
            events += decoder.feed(self.STREAM[i : i + 1])
        assert events + decoder.close() == self.EVENTS

    def test_an_unterminated_last_event_is_kept(self) -> None:
        decoder = SSEDecoder()
        assert decoder.feed(b"data: last") == []
        assert decoder.close() == [("message", "last")]
