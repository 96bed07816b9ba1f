"""The multiplexed peer: concurrency, backpressure, failures, cancellation, closing."""

from __future__ import annotations

import contextlib
import os
import select
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from latis_transports import socket_stream_pair

import latis_core
from latis_core import (
    ConnectError,
    ConnectionClosed,
    EchoAgent,
    ErrorCode,
    FrameDecoder,
    ResponseChunk,
)
from latis_core._io.link import FdLink, Interrupted, gathered, open_link

Handler = Callable[["FakeUnit", dict[str, Any]], Awaitable[None]]


class FakeUnit:
    """A unit that speaks raw frames, so a test can make it misbehave."""

    def __init__(self, stream: trio.abc.Stream, handler: Handler | None = None) -> None:
        self.stream = stream
        self.handler = handler
        self.received: list[dict[str, Any]] = []

    async def send(self, obj: dict[str, Any] | bytes) -> None:
        payload = obj if isinstance(obj, bytes) else orjson.dumps(obj)
        await self.stream.send_all(struct.pack(">I", len(payload)) + payload)

    async def run(self) -> None:
        try:
            await self._run()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # one side closed the stream on purpose

    async def _run(self) -> None:
        decoder = FrameDecoder()
        while data := await self.stream.receive_some(65536):
            decoder.feed(data)
            while (payload := decoder.next_frame()) is not None:
                msg = orjson.loads(payload)
                self.received.append(msg)
                if self.handler is not None:
                    await self.handler(self, msg)
                elif msg["type"] == "hello":
                    await self.send({"type": "hello", "id": 0, "protocol": 1, "role": "unit"})


async def answer_hello(unit: FakeUnit, msg: dict[str, Any]) -> bool:
    if msg["type"] == "hello":
        await unit.send({"type": "hello", "id": 0, "protocol": 1, "role": "unit", "unit": "fake"})
        return True
    return False


async def answer_opening(unit: FakeUnit, msg: dict[str, Any]) -> bool:
    """Answer `hello`, or a `session.create` (with session "s"); False for anything else."""
    if await answer_hello(unit, msg):
        return True
    if msg["type"] == "session.create":
        await unit.send({"type": "ack", "id": msg["id"], "data": {"session": "s"}})
        return True
    return False


async def first_then_ready(stream: Any, ready: int) -> Any:
    """The stream's first reply, once `ready` more have arrived behind it."""
    first = await stream.__anext__()
    while stream.ready < ready:
        await trio.sleep(0.01)
    return first


def paced_unit(go: trio.Event, *, question: bool) -> Handler:
    """A unit whose prompt sends chunks 0 and 1, waits for `go`, then sends (a
    question and) chunk 2 and the end."""

    async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
        if await answer_opening(unit, msg):
            return
        if msg["type"] == "prompt.send":
            rid = msg["id"]
            for seq in (0, 1):
                await unit.send({"type": "response.chunk", "id": rid, "seq": seq,
                                 "text": f"c{seq}"})
            await go.wait()
            if question:
                await unit.send({"type": "input.request", "id": rid, "input": 0,
                                 "question": "go on?"})
            await unit.send({"type": "response.chunk", "id": rid, "seq": 2, "text": "c2"})
            await unit.send({"type": "response.complete", "id": rid, "chunks": 3})

    return handler


@contextlib.asynccontextmanager
async def paced_session(*, question: bool) -> AsyncIterator[tuple[Any, trio.Event]]:
    """A session on a `paced_unit`, and the event that lets its prompts go on."""
    ours, theirs = socket_stream_pair()
    go = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(FakeUnit(theirs, paced_unit(go, question=question)).run)
        async with latis_core.connect(ours) as unit:
            session = await unit.create_session()
            yield session, go
        nursery.cancel_scope.cancel()


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    return walk(trio.lowlevel.current_root_task())


class TestConcurrency:
    @pytest.mark.parametrize("kind", ["fd", "generic"])
    async def test_many_requests_in_flight(self, kind: str) -> None:
        """A hundred requests of different kinds in flight at once each get their own reply."""
        if kind == "fd":
            ours, theirs = socket_stream_pair()
        else:
            ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent())
            async with latis_core.connect(ours) as unit:
                sessions = {i: await unit.create_session() for i in range(1, 100, 3)}
                results: dict[int, str] = {}

                async def one(i: int) -> None:
                    if i % 3 == 0:
                        assert await unit.ping() > 0
                        results[i] = "pong"
                    elif i % 3 == 1:
                        results[i] = await sessions[i].prompt(f"w{i} x{i}").text()
                    else:
                        results[i] = (await unit.state()).state

                async with trio.open_nursery() as inner:
                    for i in range(100):
                        inner.start_soon(one, i)
                for i, got in results.items():
                    assert got == ("pong", f"w{i} x{i}", "idle")[i % 3] or (
                        i % 3 == 2 and got == "busy"
                    )
                assert len(results) == 100
            nursery.cancel_scope.cancel()

    async def test_many_connections_at_once_then_one(self) -> None:
        """Requests waiting at once on many connections (two on each) all get their replies, while
        requests come and go (a lone one reads its connection itself, many leave it to
        each connection's reader: the hand-over between the two loses nothing), and a
        lone request afterwards still does."""
        async with trio.open_nursery() as nursery:
            units: list[latis_core.UnitClient] = []
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(12):
                    ours, theirs = socket_stream_pair()
                    nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent())
                    units.append(await stack.enter_async_context(latis_core.connect(ours)))
                sessions = [await unit.create_session() for unit in units]
                done: list[str] = []

                async def one(i: int) -> None:
                    for round_ in range(5):
                        if (i + round_) % 2:
                            await units[i].ping()
                            done.append("pong")
                        else:
                            text = await sessions[i].prompt(f"a{i} b{round_}").text()
                            assert text == f"a{i} b{round_}"
                            done.append(text)
                        await trio.sleep(0.001 * (i % 3))  # waits start and end unevenly

                async def pings(i: int) -> None:
                    for _ in range(5):
                        await units[i].ping()
                        done.append("pong")

                with trio.fail_after(20):
                    async with trio.open_nursery() as inner:
                        for i in range(len(units)):
                            inner.start_soon(one, i)
                            inner.start_soon(pings, i)  # two waiting on one connection
                    assert len(done) == 10 * len(units)
                    assert await sessions[3].prompt("alone now").text() == "alone now"
            nursery.cancel_scope.cancel()

    async def test_take_chunks_takes_what_is_here_up_to_a_gap(self) -> None:
        """A batch consumer's `take_chunks` returns the chunks already here, in order,
        without waiting; it leaves a gap in their sequence and the end to `__anext__`,
        which reports the gap (chunk 3 after chunk 1)."""
        ours, theirs = socket_stream_pair()

        async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
            if await answer_opening(unit, msg):
                return
            if msg["type"] == "prompt.send":
                for seq in (0, 1, 3, 4):
                    await unit.send({"type": "response.chunk", "id": msg["id"], "seq": seq,
                                     "text": f"c{seq}"})
                await unit.send({"type": "response.complete", "id": msg["id"], "chunks": 5})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(FakeUnit(theirs, handler).run)
            async with latis_core.connect(ours) as unit:
                session = await unit.create_session()
                stream = session.prompt("go")
                first = await first_then_ready(stream, 4)  # 3 chunks and the end
                with trio.testing.assert_no_checkpoints():
                    taken = stream.take_chunks(100)
                assert [first.text, *(c.text for c in taken)] == ["c0", "c1"]
                with pytest.raises(latis_core.RemoteProtocolError, match="chunks are missing"):
                    await stream.__anext__()
            nursery.cancel_scope.cancel()

    async def test_take_chunks_leaves_the_end(self) -> None:
        """After `take_chunks` took every chunk, iteration ends with the prompt's outcome."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent())
            async with latis_core.connect(ours) as unit:
                session = await unit.create_session()
                stream = session.prompt("a b c d")
                first = await first_then_ready(stream, 4)  # three chunks and the end
                rest = stream.take_chunks(100)
                assert first.text + "".join(c.text for c in rest) == "a b c d"
                assert [c async for c in stream] == []
                assert stream.outcome == "complete"
            nursery.cancel_scope.cancel()

    async def test_a_sink_takes_chunks_while_the_consumer_waits(self) -> None:
        """`on_ready`: chunks that arrive while the consumer waits in `__anext__` are
        taken by the sink without waking the consumer; a question wakes it, and
        every chunk is seen once, in order, around it."""
        async with paced_session(question=True) as (session, go):
            stream = session.prompt("go")
            seen: list[str] = []
            woken: list[Any] = []

            async def consume() -> None:
                woken.append(await stream.__anext__())

            stream.on_ready(lambda: seen.extend(c.text for c in stream.take_chunks(100)))
            async with trio.open_nursery() as inner:
                inner.start_soon(consume)
                with trio.fail_after(10):
                    while len(seen) < 2:
                        await trio.sleep(0.01)
                assert woken == []  # still waiting: both chunks went to the sink
                go.set()
            assert type(woken[0]) is latis_core.InputRequest
            assert seen == ["c0", "c1"]  # taken before the question came
            stream.on_ready(None)
            assert [c.text async for c in stream] == ["c2"]
            assert stream.outcome == "complete"

    async def test_a_sink_that_fails_leaves_the_replies_to_the_consumer(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A sink that raises is logged and dropped; the consumer gets every chunk,
        and the connection serves on."""
        async with paced_session(question=False) as (session, go):
            stream = session.prompt("go")
            got: list[str] = []

            def sink() -> None:
                raise RuntimeError("a bug in the sink")

            async def consume() -> None:
                got.extend([c.text async for c in stream])

            stream.on_ready(sink)
            async with trio.open_nursery() as inner:
                inner.start_soon(consume)
                with trio.fail_after(10):
                    while "taking replies failed" not in caplog.text:
                        await trio.sleep(0.01)
                go.set()
            assert got == ["c0", "c1", "c2"]
            again = [c.text async for c in session.prompt("again")]
            assert again == ["c0", "c1", "c2"]  # the connection serves on

    async def test_request_is_a_checkpoint(self) -> None:
        """Awaiting a request always lets other tasks run and honours cancellation."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent())
            async with latis_core.connect(ours) as unit:
                with trio.testing.assert_checkpoints():
                    await unit.ping()
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await unit.ping()
                assert scope.cancelled_caught
                assert await unit.ping() > 0  # a cancelled request leaves the connection usable
            nursery.cancel_scope.cancel()


class TestBackpressure:
    async def test_an_unread_stream_pauses_reading(self) -> None:
        """Replies pile up for one request only to its limit; then reading waits for its reader."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent(repeat=2000))
            async with latis_core.connect(ours, queue_limit=50) as unit:
                session = await unit.create_session()
                stream = session.prompt("a b c d e f g h i j")
                await stream.__anext__()
                await trio.sleep(0.2)  # the unit fills the socket and waits
                with trio.move_on_after(0.5) as scope:
                    await unit.ping()  # stuck behind the unread chunks: head-of-line
                assert scope.cancelled_caught
                assert len(stream._w.events) <= 50 + 2000, "the queue grew without bound"
                assert unit.peer._over == 1
                assert len([c async for c in stream]) == 20000 - 1
                assert await unit.ping() > 0
            nursery.cancel_scope.cancel()


class TestFailures:
    async def test_unreadable_reply_fails_only_its_request(self) -> None:
        """A malformed reply fails the request it names; the unit hears why; others go on."""
        ours, theirs = socket_stream_pair()

        async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
            if await answer_hello(unit, msg):
                return
            if msg["type"] == "ping" and msg["id"] == 1:
                await unit.send({"type": "pong", "id": 1, "extra": "ignored"})
            elif msg["type"] == "ping":
                await unit.send({"type": "pong", "id": "wrong kind" and msg["id"], "x": 1})
            elif msg["type"] == "state.get":
                await unit.send({"type": "state.update", "id": msg["id"], "state": 3})

        fake = FakeUnit(theirs, handler)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.run)
            async with latis_core.connect(ours) as unit:
                await unit.ping()
                with pytest.raises(latis_core.RemoteProtocolError) as info:
                    await unit.state()
                assert info.value.code == ErrorCode.BAD_MESSAGE
                expected = "state.update: expected a string, got an integer @ $.state"
                assert expected in str(info.value)
                await unit.ping()
                await trio.testing.wait_all_tasks_blocked()
                errors = [m for m in fake.received if m["type"] == "error"]
                assert [e["code"] for e in errors] == ["bad_message"]
            nursery.cancel_scope.cancel()

    async def test_unit_closing_fails_requests_in_flight(self) -> None:
        """When the unit goes away, waiting and new requests fail with ConnectionClosed."""
        ours, theirs = socket_stream_pair()

        async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
            if not await answer_hello(unit, msg) and msg["type"] == "ping":
                await unit.stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(FakeUnit(theirs, handler).run)
            async with latis_core.connect(ours, label="unit box-7") as unit:
                with pytest.raises(ConnectionClosed) as info:
                    await unit.ping()
                assert "unit box-7 closed the connection" in str(info.value)
                assert unit.peer.closed
                with pytest.raises(ConnectionClosed):
                    await unit.state()
            nursery.cancel_scope.cancel()

    async def test_keepalive_notices_a_silent_unit(self) -> None:
        """With keep-alive on, a unit that stops answering is declared gone."""
        ours, theirs = socket_stream_pair()

        async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
            await answer_hello(unit, msg)  # and never a pong

        async with trio.open_nursery() as nursery:
            nursery.start_soon(FakeUnit(theirs, handler).run)
            async with latis_core.connect(ours, keepalive=0.05, keepalive_timeout=0.1) as unit:
                with trio.fail_after(5):
                    while not unit.peer.closed:
                        await trio.sleep(0.01)
                with pytest.raises(ConnectionClosed) as info:
                    await unit.state()
                assert "went silent" in str(info.value)
            nursery.cancel_scope.cancel()

    async def test_keepalive_keeps_a_live_unit(self) -> None:
        """Keep-alive pings to a unit that answers them change nothing."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent())
            async with latis_core.connect(ours, keepalive=0.02, keepalive_timeout=1) as unit:
                await trio.sleep(0.2)
                assert not unit.peer.closed
                assert await unit.ping() > 0
            nursery.cancel_scope.cancel()

    async def test_prompt_over_the_units_frame_limit(self) -> None:
        """A prompt too big for the unit's announced limit fails here, before it is sent."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: latis_core.serve_unit(theirs, EchoAgent(), max_frame=1024)
            )
            async with latis_core.connect(ours) as unit:
                session = await unit.create_session()
                with pytest.raises(latis_core.LocalProtocolError) as info:
                    session.prompt("x" * 2000)
                assert info.value.code == ErrorCode.FRAME_TOO_LARGE
                assert await session.prompt("small").text() == "small"
            nursery.cancel_scope.cancel()


class TestHandshake:
    async def test_refused(self) -> None:
        """A unit that refuses the hello gives a ConnectError with its reason."""
        ours, theirs = socket_stream_pair()

        async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
            await unit.send(
                {"type": "error", "id": 0, "code": "version_mismatch", "message": "I speak 9"}
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(FakeUnit(theirs, handler).run)
            with pytest.raises(ConnectError, match="version_mismatch: I speak 9"):
                async with latis_core.connect(ours):
                    pass
            nursery.cancel_scope.cancel()

    async def test_silent(self) -> None:
        """A unit that never answers the hello gives a ConnectError after the timeout."""
        ours, theirs = socket_stream_pair()

        async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
            pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(FakeUnit(theirs, handler).run)
            with pytest.raises(ConnectError, match="no hello from unit within 0.2 s"):
                async with latis_core.connect(ours, handshake_timeout=0.2):
                    pass
            nursery.cancel_scope.cancel()

    async def test_wrong_role(self) -> None:
        """A peer that answers as a cmdr is refused."""
        ours, theirs = socket_stream_pair()

        async def handler(unit: FakeUnit, msg: dict[str, Any]) -> None:
            if msg["type"] == "hello":
                await unit.send({"type": "hello", "id": 0, "protocol": 1, "role": "cmdr"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(FakeUnit(theirs, handler).run)
            with pytest.raises(ConnectError, match="role_mismatch"):
                async with latis_core.connect(ours, handshake_timeout=2):
                    pass
            nursery.cancel_scope.cancel()


class TestClosing:
    async def test_no_task_is_left_behind(self) -> None:
        """Leaving `connect` ends every task the connection started, and closes the stream."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent(delay=0.05))
            await trio.testing.wait_all_tasks_blocked()
            before = count_tasks()
            async with latis_core.connect(ours) as unit:
                session = await unit.create_session()
                stream = session.prompt("a b c d e f")
                await stream.__anext__()
                assert count_tasks() > before
            with trio.fail_after(5):
                while count_tasks() > before - 1:  # the unit's server ends too (EOF)
                    await trio.sleep(0.01)
            with pytest.raises(trio.ClosedResourceError):
                await ours.send_all(b"x")
            assert unit.peer.closed
            nursery.cancel_scope.cancel()

    async def test_aclose_inside_the_block(self) -> None:
        """aclose() ends the connection's tasks and fails what is in flight; exit stays clean."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent(delay=1))
            await trio.testing.wait_all_tasks_blocked()
            before = count_tasks()
            async with latis_core.connect(ours, keepalive=0.5) as unit:
                session = await unit.create_session()
                stream = session.prompt("a b c")
                await unit.aclose()
                await unit.aclose()  # twice is fine
                with pytest.raises(ConnectionClosed):
                    await stream.__anext__()
                with pytest.raises(ConnectionClosed):
                    await unit.ping()
                with trio.fail_after(5):
                    while count_tasks() > before - 1:
                        await trio.sleep(0.01)
                await trio.sleep(0.01)  # the caller's own block is not cancelled
                reached_the_end = True
            assert reached_the_end
            nursery.cancel_scope.cancel()

    async def test_cancelled_stream_waits_for_its_end(self) -> None:
        """A cancelled prompt stream waits (bounded) until the unit has ended the prompt."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent(delay=0.01))
            async with latis_core.connect(ours) as unit:
                session = await unit.create_session()
                stream = session.prompt("a b c d e f g h")
                with trio.CancelScope() as scope:
                    async for _ in stream:
                        scope.cancel()
                assert stream.outcome == "cancelled"
                assert not unit.peer.conn.in_flight(stream.id)
                assert (await unit.state()).state == "idle"
            nursery.cancel_scope.cancel()

    async def test_chunks_already_here_are_cancel_points_and_let_others_run(self) -> None:
        """Reading chunks that have all arrived: in order, with every 64th a point
        where other tasks run, and a cancel stops the reading within 8 chunks (every
        8th is a cancel point: a check on each cost a sixth of the reader's work)."""
        ours, theirs = socket_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, theirs, EchoAgent(repeat=100))
            async with latis_core.connect(ours) as unit:
                session = await unit.create_session()
                stream = session.prompt("a b c d e f g h i j")
                first = await first_then_ready(stream, 700)
                ticks = 0

                async def tick() -> None:
                    nonlocal ticks
                    while True:
                        ticks += 1
                        await trio.lowlevel.checkpoint()

                nursery.start_soon(tick)
                await trio.lowlevel.checkpoint()
                before = ticks
                read = [await stream.__anext__() for _ in range(640)]
                assert [c.seq for c in read] == list(range(first.seq + 1, 641))
                # Made from their objects as they are taken: the very chunks sent.
                words = "a b c d e f g h i j".split()
                assert read == [ResponseChunk(stream.id, c.seq, words[c.seq % 10] + " ")
                                for c in read]
                assert ticks - before >= 640 // 64 - 1
                more = 0
                with trio.CancelScope() as scope:
                    scope.cancel()
                    while True:
                        await stream.__anext__()
                        more += 1
                assert scope.cancelled_caught
                assert more < 8
                assert stream.done
                assert not unit.peer.conn.in_flight(stream.id)
            nursery.cancel_scope.cancel()



# ---- gathered writes (a read's replies to many followers on one connection) -------------


async def test_writes_gathered_leave_together_in_order_one_write_per_link() -> None:
    """Inside `gathered()` what is written to fd links waits, in order, and leaves
    when the outermost one ends (a read that carries many prompts' chunks for
    followers on one connection is one write to it, not one each); outside, a
    write leaves at once. A link that fails in that write says so at its next."""
    a1, b1 = socket_stream_pair()
    a2, b2 = socket_stream_pair()
    async with trio.open_nursery() as nursery:
        one, two = open_link(a1, nursery), open_link(a2, nursery)
        assert isinstance(one, FdLink) and isinstance(two, FdLink)
        with gathered():
            one.write(b"one ")
            two.write(b"x")
            one.write(b"two")
            with gathered():
                one.write(b" three")
            assert one.buffered == len(b"one two three")  # the inner one sent nothing
            assert select.select([b1.socket.fileno()], [], [], 0)[0] == []  # nothing yet
        assert (one.buffered, two.buffered) == (0, 0)
        assert await b1.receive_some() == b"one two three"
        assert await b2.receive_some() == b"x"
        one.write(b"now")
        assert one.buffered == 0
        assert await b1.receive_some() == b"now"

        await b2.aclose()
        with gathered():
            two.write(b"lost")  # (the peer is gone: EPIPE when it leaves)
        with pytest.raises(trio.BrokenResourceError):
            two.write(b"more")
        nursery.cancel_scope.cancel()


async def test_an_interrupt_stops_its_read_though_another_read_has_started() -> None:
    """A read that `interrupt` stopped ends with `Interrupted`, not as if the fd
    had closed, even when another task's read started before it woke (a leader
    taking over the fd from the idle reader); that read gets the bytes."""
    a, b = socket_stream_pair()
    async with trio.open_nursery() as nursery:
        link = open_link(a, nursery)
        assert isinstance(link, FdLink)
        ended: list[str] = []

        async def idle() -> None:
            try:
                await link.read()
            except Interrupted:
                ended.append("interrupted")

        nursery.start_soon(idle)
        await trio.testing.wait_all_tasks_blocked()
        link.interrupt()
        os.write(b.socket.fileno(), b"x")  # (no checkpoint: the stopped read has not run)
        assert bytes(await link.read()) == b"x"
        await trio.testing.wait_all_tasks_blocked()
        assert ended == ["interrupted"]
        nursery.cancel_scope.cancel()
