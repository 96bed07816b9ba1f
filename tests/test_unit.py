"""The unit server in-process: sessions outliving connections, resume and replay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from latis_transports import socket_stream_pair

import latis_core
from latis_core import Agent, AgentSession, EchoAgent, ErrorCode, Reply, RequestError

WORDS = "one two three four five six seven eight nine ten"


@asynccontextmanager
async def dial(
    unit: latis_core.Unit, nursery: trio.Nursery
) -> AsyncIterator[latis_core.UnitClient]:
    """A new connection to `unit`, served in `nursery`."""
    ours, theirs = socket_stream_pair()
    nursery.start_soon(unit.serve, theirs)
    async with latis_core.connect(ours) as client:
        yield client


class Gate(Agent):
    """Sends chunks only when the test opens the gate; for exact control of a stream."""

    info = latis_core.AgentInfo("gate", "1")

    def __init__(self) -> None:
        self.open = trio.Semaphore(0)
        self.cancelled = trio.Event()

    async def open_session(self, session_id, options):  # type: ignore[no-untyped-def]
        return _GateSession(self)


class _GateSession(AgentSession):
    def __init__(self, agent: Gate) -> None:
        self.agent = agent

    async def prompt(self, text: str, reply: Reply) -> None:
        try:
            for word in text.split():
                await self.agent.open.acquire()
                await reply.send(word)
        except trio.Cancelled:
            self.agent.cancelled.set()
            raise


class TestResume:
    async def test_prompt_survives_a_dropped_connection(self) -> None:
        """A prompt goes on when its connection drops; a new one reattaches with nothing lost."""
        agent = Gate()
        async with latis_core.open_unit(agent) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as first:
                session = await first.create_session()
                stream = session.prompt(WORDS)
                for _ in range(3):
                    agent.open.release()
                seen = [await stream.__anext__() for _ in range(3)]
                prompt_id = stream.id
            # The connection is gone; the agent keeps going.
            for _ in range(4):
                agent.open.release()
            await trio.testing.wait_all_tasks_blocked()
            assert unit.sessions[session.id].state == "busy"
            async with dial(unit, nursery) as second:
                resumed = await second.resume_session(session.id)
                assert resumed.initial_state == "busy"
                rest = await resumed.reattach(prompt_id, after=seen[-1].seq)
                for _ in range(3):
                    agent.open.release()
                chunks = [chunk async for chunk in rest]
            assert [c.seq for c in seen + chunks] == list(range(10))
            assert "".join(c.text for c in seen + chunks) == WORDS.replace(" ", "")
            assert rest.outcome == "complete"
            assert not agent.cancelled.is_set()
            nursery.cancel_scope.cancel()

    async def test_replay_of_a_finished_prompt(self) -> None:
        """A prompt that finished while nobody listened is replayed whole, then its end."""
        async with latis_core.open_unit(EchoAgent()) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as first:
                session = await first.create_session()
                unread = session.prompt(WORDS)  # sent; never read
                await trio.testing.wait_all_tasks_blocked()
            prompt_id = unread.id
            async with dial(unit, nursery) as second:
                again = await second.resume_session(session.id)
                stream = await again.reattach(prompt_id)
                assert await stream.text() == WORDS
                assert stream.outcome == "complete"
            nursery.cancel_scope.cancel()

    async def test_replay_keeps_every_chunk_as_it_was_sent(self) -> None:
        """A replay from the middle gives the chunks after it as the agent sent them:
        plain text, and chunks with a kind and data, each with its seq."""

        class Mixed(Agent):
            info = latis_core.AgentInfo("mixed", "1")

            async def open_session(self, session_id, options):  # type: ignore[no-untyped-def]
                return _MixedSession()

        class _MixedSession(AgentSession):
            async def prompt(self, text: str, reply: Reply) -> None:
                await reply.send("plan: ")
                await reply.send("", kind="tool_call", data={"name": "ls", "args": ["-l"]})
                await reply.send("listed ")
                await reply.send("step 1", kind="plan")
                await reply.send("done")

        async with latis_core.open_unit(Mixed()) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt("go")
                sent = [chunk async for chunk in stream]
                assert [c.seq for c in sent] == [0, 1, 2, 3, 4]
                for after in (None, 0, 2, 3):
                    again = await session.reattach(stream.id, after=after)
                    replayed = [chunk async for chunk in again]
                    assert replayed == sent[0 if after is None else after + 1 :]
                    assert again.outcome == "complete"
            nursery.cancel_scope.cancel()

    async def test_reattach_unknown_prompt(self) -> None:
        """Reattaching a prompt the session never had fails with unknown_request."""
        async with latis_core.open_unit(EchoAgent()) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = await session.reattach(12345)
                with pytest.raises(RequestError) as info:
                    await stream.text()
                assert info.value.code == ErrorCode.UNKNOWN_REQUEST
                assert await client.ping() > 0
            nursery.cancel_scope.cancel()

    async def test_resume_unknown_session_ends_the_prompt_too(self) -> None:
        """A resume of a missing session fails, and the prompt id it named is not left open."""
        async with latis_core.open_unit(EchoAgent()) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                ghost = latis_core.Session(client, "ghost")
                with pytest.raises(RequestError) as info:
                    await ghost.reattach(7)
                assert info.value.code == ErrorCode.UNKNOWN_SESSION
                await trio.testing.wait_all_tasks_blocked()
                assert not client.peer.conn.in_flight(7)
            nursery.cancel_scope.cancel()

    async def test_replay_limit(self) -> None:
        """Chunks beyond the replay limit are dropped oldest first; asking for them says so."""
        async with latis_core.open_unit(
            EchoAgent(repeat=50), replay_limit=2000
        ) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt(WORDS)
                assert len(await stream.text()) > 2000
                again = await session.reattach(stream.id, after=None)
                with pytest.raises(RequestError) as info:
                    await again.text()
                assert info.value.code == ErrorCode.LIMIT_REACHED
                assert "no longer kept" in info.value.message
                # The newest chunks are still there.
                tail = await session.reattach(stream.id, after=490)
                assert [c.seq async for c in tail] == list(range(491, 500))
            nursery.cancel_scope.cancel()

    async def test_detached_prompt_waits_when_its_log_is_full(self) -> None:
        """With nobody attached and the replay log full, the agent waits: nothing is dropped."""
        agent = Gate()
        text = " ".join(f"w{i:02d}" for i in range(100))
        async with latis_core.open_unit(agent, replay_limit=1000) as unit, trio.open_nursery() as n:
            async with dial(unit, n) as first:
                session = await first.create_session()
                unread = session.prompt(text)  # sent; never read
                await trio.testing.wait_all_tasks_blocked()
            for _ in range(100):
                agent.open.release()
            await trio.testing.wait_all_tasks_blocked()
            run = unit.sessions[session.id].run
            assert run is not None and run.final is None, "the prompt ran on with nobody to read"
            assert run.first_seq == 0 and 1000 < run.log_bytes < 1100
            assert agent.open.value > 0, "the agent was not made to wait"
            async with dial(unit, n) as second:
                again = await second.resume_session(session.id)
                stream = await again.reattach(unread.id)
                seqs = [c.seq async for c in stream]
            assert seqs == list(range(100))
            n.cancel_scope.cancel()


class TestConnections:
    async def test_a_unit_serves_many_connections(self) -> None:
        """Two controllers share one unit's sessions and see each other's state changes."""
        async with latis_core.open_unit(EchoAgent()) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as a, dial(unit, nursery) as b:
                async with b.subscribe() as updates:
                    assert (await updates.__anext__()).sessions == {}
                    session = await a.create_session()
                    created = await updates.__anext__()
                    assert created.sessions == {session.id: "idle"}
                    on_b = await b.resume_session(session.id)
                    assert await on_b.prompt("hi there").text() == "hi there"
            nursery.cancel_scope.cancel()

    async def test_reattach_elsewhere_ends_the_old_stream(self) -> None:
        """A prompt reattached on a second connection ends on the first with unknown_request."""
        agent = Gate()
        async with latis_core.open_unit(agent) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as a, dial(unit, nursery) as b:
                session = await a.create_session()
                old = session.prompt(WORDS)
                taken = await (await b.resume_session(session.id)).reattach(old.id)
                with pytest.raises(RequestError) as info:
                    await old.__anext__()
                assert info.value.code == ErrorCode.UNKNOWN_REQUEST
                for _ in range(10):
                    agent.open.release()
                assert len([c async for c in taken]) == 10
            nursery.cancel_scope.cancel()

    async def test_generic_streams_work_too(self) -> None:
        """Over a stream without file descriptors (trio memory streams), all of it works."""
        left, right = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, right, EchoAgent(ask="ok?"))
            async with latis_core.connect(left) as client:
                assert client.peer.link.can_lead is False
                session = await client.create_session()

                async def yes(_: object) -> str:
                    return "yes"

                text = await session.prompt(WORDS, on_input=yes).text()
                assert text == "yes " + WORDS
                async with trio.open_nursery() as inner:
                    for _ in range(5):
                        inner.start_soon(client.ping)
            nursery.cancel_scope.cancel()


class Failing(Agent):
    """An agent that fails: at session start, or in the middle of a prompt."""

    info = latis_core.AgentInfo("failing", "1")

    def __init__(self, at: str) -> None:
        self.at = at

    async def open_session(self, session_id, options):  # type: ignore[no-untyped-def]
        if self.at == "open":
            raise RuntimeError("no sessions today")
        return _FailingSession()


class _FailingSession(AgentSession):
    async def prompt(self, text: str, reply: Reply) -> None:
        await reply.send("partial ")
        raise ValueError("the model fell over")


class TestAgentErrors:
    async def test_failure_opening_a_session(self) -> None:
        """An agent that cannot open a session gives agent_error with its reason."""
        async with latis_core.open_unit(Failing("open")) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                with pytest.raises(RequestError) as info:
                    await client.create_session()
                assert info.value.code == ErrorCode.AGENT_ERROR
                assert "no sessions today" in info.value.message
            nursery.cancel_scope.cancel()

    async def test_failure_mid_prompt(self) -> None:
        """A prompt whose agent raises ends with agent_error after the chunks it sent."""
        async with latis_core.open_unit(Failing("prompt")) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt("x")
                assert (await stream.__anext__()).text == "partial "
                with pytest.raises(RequestError) as info:
                    await stream.__anext__()
                assert info.value.code == ErrorCode.AGENT_ERROR
                assert "ValueError: the model fell over" in info.value.message
                assert await session.state() == "idle"
            nursery.cancel_scope.cancel()


class TestDestroy:
    async def test_destroy_cancels_the_running_prompt(self) -> None:
        """Destroying a session cancels its prompt, which ends as cancelled."""
        agent = Gate()
        async with latis_core.open_unit(agent) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt(WORDS)
                agent.open.release()
                await stream.__anext__()
                await session.destroy()
                assert [c async for c in stream] == []
                assert stream.outcome == "cancelled"
                assert agent.cancelled.is_set()
                assert unit.sessions == {}
            nursery.cancel_scope.cancel()


class Burst(Agent):
    """Sends "first", waits (shielded) for the test's `go`, then sends "x" until
    cancelled, counting the sends that returned; with `own_cancel`, inside a
    cancel scope of its own, cancelled before the first of them."""

    info = latis_core.AgentInfo("burst", "1")

    def __init__(self, own_cancel: bool = False) -> None:
        self.own_cancel = own_cancel
        self.go = trio.Event()
        self.sent = 0

    async def open_session(self, session_id, options):  # type: ignore[no-untyped-def]
        return _BurstSession(self)


class _BurstSession(AgentSession):
    def __init__(self, agent: Burst) -> None:
        self.agent = agent

    async def prompt(self, text: str, reply: Reply) -> None:
        agent = self.agent
        await reply.send("first")
        with trio.CancelScope(shield=True):
            await agent.go.wait()
        with trio.CancelScope() as own:
            if agent.own_cancel:
                own.cancel()
            for _ in range(1000):
                await reply.send("x")
                agent.sent += 1


class TestSendCancels:
    async def test_the_prompts_cancel_stops_the_next_send(self) -> None:
        """Once the unit has the prompt's cancel, the agent's next `send` raises
        Cancelled: no chunk after it is sent."""
        agent = Burst()
        async with latis_core.open_unit(agent) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt("go")
                assert (await stream.__anext__()).text == "first"
                stream.cancel_nowait()
                await trio.testing.wait_all_tasks_blocked()  # the unit has the cancel
                agent.go.set()
                rest = [c.text async for c in stream]
                assert stream.outcome == "cancelled"
                assert agent.sent == 0
                assert rest == ["x"]  # the one send that raised had sent its chunk
            nursery.cancel_scope.cancel()

    async def test_another_cancel_stops_a_send_loop_within_64_sends(self) -> None:
        """A cancel from elsewhere (here the agent's own scope) is seen at a
        checkpoint, which `send` is at least every 64 calls: a loop of sends ends."""
        agent = Burst(own_cancel=True)
        agent.go.set()
        async with latis_core.open_unit(agent) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                chunks = [c async for c in session.prompt("go")]
                assert 0 <= agent.sent < 64
                assert len(chunks) == 1 + agent.sent + 1
            nursery.cancel_scope.cancel()


class SlowSend(trio.abc.HalfCloseableStream):
    """A stream whose writes take a while and are lost if cancelled (like TLS's)."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.sleep(0.05)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class TestEdges:
    async def test_last_error_reaches_a_slow_stream(self) -> None:
        """Replies queued behind a slow write, and the fatal error last, all arrive before close."""
        left, right = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(latis_core.serve_unit, SlowSend(right), EchoAgent())
            hello = latis_core.encode(latis_core.Hello())
            ping = latis_core.encode(latis_core.Ping(1))
            await left.send_all(latis_core.encode_frame(hello) + latis_core.encode_frame(ping))
            await trio.sleep(0.01)  # the pong is being written when the bad frame comes
            await left.send_all((64 << 20).to_bytes(4, "big"))  # 64 MiB: over the limit
            decoder = latis_core.FrameDecoder()
            received = []
            with trio.fail_after(5):
                while data := await left.receive_some():
                    decoder.feed(data)
                    while (payload := decoder.next_frame()) is not None:
                        received.append(latis_core.decode(payload))
            assert [type(m).__name__ for m in received] == ["Hello", "Pong", "Error"]
            assert received[-1].code == "frame_too_large"
            nursery.cancel_scope.cancel()

    async def test_resume_of_a_session_being_destroyed(self) -> None:
        """A session that is being destroyed cannot be resumed."""
        agent = Gate()
        async with latis_core.open_unit(agent) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt(WORDS)
                agent.open.release()
                await stream.__anext__()
                unit.sessions[session.id].closing = True  # as destroy does, first
                with pytest.raises(RequestError) as info:
                    await client.resume_session(session.id)
                assert info.value.code == ErrorCode.UNKNOWN_SESSION
            nursery.cancel_scope.cancel()

    async def test_subscription_to_a_destroyed_session_ends(self) -> None:
        """Following one session ends (after its `closed` update) when it is destroyed."""
        async with latis_core.open_unit(EchoAgent()) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                updates = client.subscribe(session.id)
                assert (await updates.__anext__()).sessions == {session.id: "idle"}
                await session.destroy()
                assert [u.sessions async for u in updates] == [{session.id: "closed"}]
                assert updates.final == latis_core.ResponseCancelled(updates.id)
            nursery.cancel_scope.cancel()

    async def test_second_answer_is_ignored(self) -> None:
        """Two answers to one question: the first counts, the second is ignored."""
        async with latis_core.open_unit(EchoAgent(ask="?")) as unit, trio.open_nursery() as n:
            async with dial(unit, n) as client:
                session = await client.create_session()
                stream = session.prompt("end")
                question = await stream.__anext__()
                for answer in ("first", "second"):
                    reply = latis_core.InputReply(stream.id, question.input, answer)
                    client.peer.send_nowait(reply)
                assert await stream.text() == "first end"
            n.cancel_scope.cancel()

    @pytest.mark.parametrize("after", [-5, 10, 99])
    async def test_reattach_after_a_seq_that_does_not_exist(self, after: int) -> None:
        """Reattaching after a seq the prompt never sent is refused, naming it."""
        async with latis_core.open_unit(EchoAgent()) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt(WORDS)
                await stream.text()
                again = await session.reattach(stream.id, after=after)
                with pytest.raises(RequestError) as info:
                    await again.text()
                assert info.value.code == ErrorCode.BAD_MESSAGE
                assert f"seq {after} is not a chunk" in info.value.message
            nursery.cancel_scope.cancel()

    async def test_resume_does_not_attach_a_closed_connection(self) -> None:
        """A resume answered after its connection closed leaves the prompt detached."""
        agent = Gate()
        async with latis_core.open_unit(agent) as unit, trio.open_nursery() as nursery:
            async with dial(unit, nursery) as client:
                session = await client.create_session()
                stream = session.prompt(WORDS)
                await trio.testing.wait_all_tasks_blocked()
            run = unit.sessions[session.id].run
            assert run is not None and run.sink is None
            served = type("Closed", (), {"closed": True})()
            assert run.attach(served, None) is None  # type: ignore[arg-type]
            assert run.sink is None
            assert stream.id == run.id
            nursery.cancel_scope.cancel()


def test_session_ids_never_look_like_an_option() -> None:
    """`latis prompt --session ID` must not read an id as an option: none starts with '-'
    (one in 64 would, by chance)."""
    from latis_core._unit.unit import new_session_id

    ids = {new_session_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(len(sid) == 12 and sid[0] != "-" for sid in ids)
