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
