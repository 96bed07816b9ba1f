"""The blocking facade, from plain code and from inside a running asyncio loop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest
import trio
import trio.testing

from latis_core import ConnectError, ErrorCode, InputRequest, RequestError, blocking


def test_prompt_streams_without_async() -> None:
    """A script with no event loop streams a prompt chunk by chunk."""
    with blocking.connect_local() as unit:
        assert unit.agent.name == "echo"
        session = unit.create_session()
        stream = session.prompt("one two three")
        assert [chunk.text for chunk in stream] == ["one ", "two ", "three"]
        assert stream.outcome == "complete"
        assert unit.ping() > 0


def test_works_inside_a_running_asyncio_loop() -> None:
    """Called from a thread running an asyncio loop (as in a notebook cell), it works."""

    def cell() -> str:
        with blocking.connect_local(options={"ask": "Go?"}) as unit:
            session = unit.create_session()
            text = session.prompt("the plan", on_input=lambda q: "go").text()
            session.destroy()
            return text

    async def notebook() -> str:
        assert asyncio.get_running_loop().is_running()
        return cell()

    # The stock loop, whatever an earlier test in this process imported.
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    try:
        assert asyncio.run(notebook()) == "go the plan"
    finally:
        asyncio.set_event_loop_policy(None)


def test_works_when_asyncio_runs_on_trio() -> None:
    """Once trio_asyncio is imported (the ssh transport does), a notebook's asyncio
    loop runs on trio; blocking calls from its cells still work."""
    import trio_asyncio  # noqa: F401  (importing it is what changes asyncio.run)

    def cell() -> str:
        with blocking.connect_local() as unit:
            return unit.create_session().prompt("on trio").text()

    async def notebook() -> str:
        assert type(asyncio.get_running_loop()).__module__.startswith("trio_asyncio")
        return cell()

    asyncio.set_event_loop_policy(None)
    assert asyncio.run(notebook()) == "on trio"


def test_questions_without_a_callback() -> None:
    """Without on_input, the question is yielded and answered with reply()."""
    with blocking.connect_local(options={"ask": "Name?"}) as unit:
        stream = unit.create_session().prompt("hi")
        question = next(stream)
        assert isinstance(question, InputRequest) and question.question == "Name?"
        stream.reply("ann")
        assert [c.text for c in stream] == ["ann ", "hi"]


def test_errors_keep_their_type() -> None:
    """An error from the unit is the same exception as in the async API."""
    with blocking.connect_local() as unit:
        with pytest.raises(RequestError) as info:
            unit.resume_session("nope")
        assert info.value.code == ErrorCode.UNKNOWN_SESSION


def test_a_failed_connect_raises_its_own_error() -> None:
    """A connection that cannot be made raises what the async API raises (not trio's
    "child exited without calling task_status.started()")."""
    with pytest.raises(ConnectError, match="cannot connect to unix:/nonexistent"):
        with blocking.connect("unix:/nonexistent"):
            pass
    with pytest.raises(ValueError, match="not an address latis knows"):
        with blocking.connect("garbage"):
            pass
    with pytest.raises(ConnectError, match="closed the connection during the handshake"):
        with blocking.connect_local(options={"nosuch": "1"}):
            pass


def test_a_call_after_the_block_says_it_is_closed() -> None:
    with blocking.connect_local() as unit:
        session = unit.create_session()
    for call in (unit.create_session, unit.ping, lambda: session.prompt("x").text()):
        with pytest.raises(trio.ClosedResourceError, match="`with` block .* has ended"):
            call()


def test_closing_a_stream_cancels_the_prompt() -> None:
    """Closing a stream early (or leaving its `with`) cancels the prompt on the unit."""
    with blocking.connect_local(options={"delay": "0.05"}) as unit:
        session = unit.create_session()
        with session.prompt("a b c d e f g h i j") as stream:
            next(stream)
        assert stream.outcome == "cancelled"
        assert session.state() == "idle"


def test_state_subscription() -> None:
    """A state subscription yields a snapshot, then changes."""
    with blocking.connect_local() as unit:
        session = unit.create_session()
        with unit.subscribe() as updates:
            assert next(updates).sessions == {session.id: "idle"}
            session.prompt("x").text()
            assert next(updates).state == "busy"
            assert next(updates).state == "idle"


def test_ctrl_c_cancels_the_prompt() -> None:
    """Ctrl-C while a prompt streams cancels it on the unit, then raises KeyboardInterrupt."""
    with blocking.connect_local(options={"delay": "0.1"}) as unit:
        session = unit.create_session()
        stream = session.prompt(" ".join(["word"] * 100))
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            for _ in stream:
                pass
        assert time.monotonic() - started < 5
        assert session.state() == "idle"
        assert unit.ping() > 0


def test_a_ctrl_c_in_the_loop_body_cancels_the_prompt_as_its_with_block_ends() -> None:
    """Where a Ctrl-C usually lands when the loop does work of its own: not in
    the stream. The `with` block (the documented form) cancels the prompt on the
    unit as the interrupt leaves it; the session is free for the next prompt."""
    with blocking.connect_local(options={"delay": "0.05"}) as unit:
        session = unit.create_session()
        with pytest.raises(KeyboardInterrupt):
            with session.prompt(" ".join(["word"] * 100)) as stream:
                for _ in stream:
                    raise KeyboardInterrupt  # (the signal, landing in the loop body)
        assert stream.outcome == "cancelled"
        assert session.state() == "idle"
        assert session.prompt("again").text() == "again"


def test_a_ctrl_c_before_its_fetch_starts_still_cancels_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C that lands after the next fetch was handed to the trio thread and
    before it started there (a fault injected: the fetch is held until the
    interrupt has cancelled what it could). The fetch that starts late takes
    nothing: the cancel gets the prompt's end from the unit, instead of the late
    fetch taking it and the cancel waiting out its whole bound (CI once saw a
    Ctrl-C take 5.5 s)."""
    with blocking.connect_local(options={"delay": "0.1"}) as unit:
        session = unit.create_session()
        stream = session.prompt(" ".join(["word"] * 100))
        assert next(stream).text == "word "
        portal = stream._portal
        # A bound far past what the test allows: waiting it out is the failure.
        stream._stream._peer.cancel_timeout = 60.0
        gate = portal.run_sync(trio.Event)
        run, run_sync = portal.run, portal.run_sync
        late: list[Any] = []
        interrupted = False

        def interrupted_run(afn: Any, *args: Any) -> Any:
            nonlocal interrupted
            if afn != stream._fetch or interrupted:
                return run(afn, *args)

            async def held() -> None:
                await gate.wait()
                late.append(await afn())

            run_sync(portal._nursery.start_soon, held)  # handed over...
            interrupted = True
            raise KeyboardInterrupt  # ... and the Ctrl-C lands before it runs

        def run_sync_then_start(fn: Any, *args: Any) -> Any:
            result = run_sync(fn, *args)
            if interrupted and not gate.is_set():
                # The interrupt's first hop is done: the held fetch starts now,
                # and waits for the prompt's next reply before the cancel does.
                run_sync(gate.set)
                run(trio.testing.wait_all_tasks_blocked)
            return result

        monkeypatch.setattr(portal, "run", interrupted_run)
        monkeypatch.setattr(portal, "run_sync", run_sync_then_start)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            next(stream)
        assert time.monotonic() - started < 30  # (not the 60 s bound)
        assert stream.outcome == "cancelled"
        assert session.state() == "idle"
        assert late == [([], True)]  # the late fetch ran, and took nothing
