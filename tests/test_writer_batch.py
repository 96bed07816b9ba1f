"""The chunk writer's hop is one transaction: every write of a batch is committed
together, and a write that fails undoes only its own changes (its caller hears it)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from latis_core._cmdr.state import StateDB, StateError
from latis_core._cmdr.writer import ChunkWriter
from latis_core._wire.messages import ResponseChunk


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDB]:
    with StateDB(tmp_path / "latis.db") as db:
        db.upsert_unit("u", None, {})
        db.add_session("s1", "u", "idle")
        yield db


def test_a_failed_write_in_a_batch_undoes_only_itself(state: StateDB) -> None:
    with state.batch():
        first = state.add_prompt("s1", "one", 1)
        with pytest.raises(StateError, match="no session 'nope'"):
            state.add_session("s2", "u", "idle")  # goes in...
            state.add_prompt("nope", "lost", 2)  # ...and this fails alone
        second = state.add_prompt("s1", "two", 3)
    assert [p.id for p in state.prompts("s1")] == [first, second]
    assert state.get_session("s2") is not None


def test_nothing_of_a_batch_is_kept_when_it_raises(state: StateDB) -> None:
    with pytest.raises(RuntimeError), state.batch():
        state.add_prompt("s1", "one", 1)
        raise RuntimeError("the hop failed")
    assert state.prompts("s1") == []


async def test_the_writers_calls_share_one_transaction(state: StateDB) -> None:
    """Calls pending together run in one hop; the one that fails raises to its caller,
    the others' writes are stored."""
    writer = ChunkWriter(state, lambda work: trio.to_thread.run_sync(work))
    results: dict[str, object] = {}

    async def call(name: str, session: str) -> None:
        try:
            results[name] = await writer.call(
                functools.partial(state.add_prompt, session, name, name)
            )
        except StateError as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()  # the writer waits for work
        async with trio.open_nursery() as calls:
            for name, session in (("a", "s1"), ("b", "nope"), ("c", "s1")):
                calls.start_soon(call, name, session)
        nursery.cancel_scope.cancel()
    assert writer.transactions == 1
    assert isinstance(results["b"], StateError)
    assert sorted(p.text for p in state.prompts("s1")) == ["a", "c"]


# ---- writes behind (the prompt engine's hot path) ---------------------------------------


class _Record:
    """What the writer needs of a prompt record: its id, and to hear what is stored."""

    def __init__(self, id: int) -> None:
        self.id = id
        self.stored_upto = -1

    def stored(self, seq: int) -> None:
        self.stored_upto = seq


async def test_writes_behind_land_in_order_with_the_chunks_that_need_them(
    state: StateDB,
) -> None:
    """A session, its prompt, the prompt's chunks, its end and the session's states,
    queued without waiting in one batch: the prompt's row goes in before its chunks
    (or they would be dropped), the end after; `flush` returns once all are stored,
    and a callback queued with them runs then, not before."""
    writer = ChunkWriter(state, lambda work: trio.to_thread.run_sync(work))
    [pid] = state.reserve_prompt_ids(1)
    record = _Record(pid)
    after: list[bool] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.behind(("session", ("s2", "idle", 1.0, "u")))
        writer.behind(("prompt", (pid, "s2", "7", "hello", 2.0)))
        writer.behind(("state", ("busy", "s2")))
        writer.put(record, [ResponseChunk(1, 0, "hel"), ResponseChunk(1, 1, "lo")])  # type: ignore[arg-type]
        writer.behind(("end", ("complete", 3.0, 2, None, pid)))
        writer.behind(("state", ("idle", "s2")))
        writer.when_stored(lambda: after.append(state.get_prompt(pid) is not None))
        assert state.get_session("s2") is None  # nothing waited for the disk
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert after == [True]
    [entry] = state.transcript("s2")
    assert (entry.prompt.id, entry.prompt.state, entry.prompt.chunks) == (pid, "complete", 2)
    assert [c.text for c in entry.chunks] == ["hel", "lo"]
    assert state.get_session("s2").state == "idle"  # type: ignore[union-attr]
    assert record.stored_upto == 1


async def test_a_write_behind_the_state_refuses_is_logged_and_the_others_stored(
    state: StateDB, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody waits for a write behind, so a refused one (a prompt of a session the
    state does not have, a session of a unit it does not have) is logged with what it
    was; the writes of the same batch around it are stored."""
    writer = ChunkWriter(state, lambda work: trio.to_thread.run_sync(work))
    first, second, lost = state.reserve_prompt_ids(3)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.behind(("prompt", (first, "s1", "1", "one", 1.0)))
        writer.behind(("prompt", (lost, "nope", "2", "lost", 1.0)))
        writer.behind(("prompt", (second, "s1", "3", "two", 1.0)))
        writer.behind(("session", ("s3", "idle", 1.0, "no-such-unit")))
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert [p.id for p in state.prompts("s1")] == [first, second]
    assert state.get_prompt(lost) is None
    logged = caplog.text
    assert f"could not store prompt {lost}" in logged and "FOREIGN KEY" in logged
    assert "session 's3': unit 'no-such-unit' is not in the state" in logged


def test_prompt_ids_taken_in_blocks_never_collide_and_unused_ones_come_back(
    state: StateDB,
) -> None:
    """Two controllers on one file take disjoint blocks; `add_prompt` numbers after
    both; a block given back whole when nobody took more since lets the next one
    go on without a gap."""
    a = state.reserve_prompt_ids(4)
    b = state.reserve_prompt_ids(4)
    assert set(a).isdisjoint(b) and a.stop == b.start
    assert state.add_prompt("s1", "by hand", 1) == b.stop
    c = state.reserve_prompt_ids(4)
    state.release_prompt_ids(c[1:])  # one used: the rest comes back
    assert state.reserve_prompt_ids(1) == range(c.start + 1, c.start + 2)
    state.release_prompt_ids(a)  # not the last block: nothing changes
    assert state.reserve_prompt_ids(1).start == c.start + 2


async def test_the_last_state_of_a_session_in_a_batch_counts_and_a_close_wins(
    state: StateDB,
) -> None:
    """busy then idle for one session in one batch ends idle (the last one counts);
    a close in the same batch wins over both."""
    writer = ChunkWriter(state, lambda work: trio.to_thread.run_sync(work))
    state.add_session("s2", "u", "idle")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for sid, last in (("s1", "waiting"), ("s2", "busy")):
            writer.behind(("state", ("busy", sid)))
            writer.behind(("state", ("idle", sid)))
            writer.behind(("state", (last, sid)))
        writer.behind(("close", (5.0, "s2")))
        await writer.flush()
        nursery.cancel_scope.cancel()
    assert state.get_session("s1").state == "waiting"  # type: ignore[union-attr]
    assert state.get_session("s2").state == "closed"  # type: ignore[union-attr]


async def test_many_agents_interleaved_writes_land_whole_one_statement_per_kind(
    state: StateDB,
) -> None:
    """Thirty agents each open a session, start a prompt, go busy, end and close,
    interleaved as a coordination queues them, in one batch: every row lands as
    it would one agent at a time (the prompt complete, not cancelled by its
    session's close), and the batch is one statement per kind, not one per write."""
    writer = ChunkWriter(state, lambda work: trio.to_thread.run_sync(work))
    ids = list(state.reserve_prompt_ids(30))
    statements: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        state._db().set_trace_callback(statements.append)  # noqa: SLF001 (counting)
        for n in range(len(ids)):
            writer.behind(("session", (f"a{n}", "idle", 1.0, "u")))
        for n, pid in enumerate(ids):
            writer.behind(("prompt", (pid, f"a{n}", str(n), "task", 2.0)))
            writer.behind(("state", ("busy", f"a{n}")))
            writer.put(_Record(pid), [ResponseChunk(1, 0, f"answer {n}")])  # type: ignore[arg-type]
        for n, pid in enumerate(ids):
            writer.behind(("end", ("complete", 3.0, 1, None, pid)))
            writer.behind(("close", (4.0, f"a{n}")))
        await writer.flush()
        state._db().set_trace_callback(None)  # noqa: SLF001
        nursery.cancel_scope.cancel()
    for n in range(len(ids)):
        [entry] = state.transcript(f"a{n}")
        assert (entry.prompt.state, entry.prompt.chunks) == ("complete", 1)
        assert [c.text for c in entry.chunks] == [f"answer {n}"]
        assert state.get_session(f"a{n}").state == "closed"  # type: ignore[union-attr]
    writes = [s for s in statements if s.lstrip().split()[0] in ("INSERT", "UPDATE")]
    assert len(writes) <= 7, writes  # session, prompt, state, chunks, end, close (2)


async def test_under_load_batches_come_at_most_one_an_interval(
    state: StateDB, autojump_clock: Any
) -> None:
    """A stream of chunks 1 ms apart is stored in batches `INTERVAL` apart (a commit
    writes every page it touches: fewer, larger batches cost the disk and the CPU
    less), and no chunk waits longer than that; a chunk after a quiet spell waits
    only `DELAY`."""
    stored_at: dict[int, float] = {}

    class Timed(_Record):
        def stored(self, seq: int) -> None:
            for done in range(self.stored_upto + 1, seq + 1):
                stored_at[done] = trio.current_time()
            super().stored(seq)

    async def write_here(work: Callable[[], Any]) -> Any:
        await trio.lowlevel.checkpoint()
        return work()

    writer = ChunkWriter(state, write_here)
    pid = state.add_prompt("s1", "stream", 1)
    record = Timed(pid)
    put_at: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        start = trio.current_time()
        for seq in range(400):  # 0.4 s of chunks, 1 ms apart
            put_at[seq] = trio.current_time()
            writer.put(record, [ResponseChunk(1, seq, "x")])  # type: ignore[arg-type]
            await trio.sleep(0.001)
        busy = trio.current_time() - start
        await trio.sleep(1)  # quiet
        put_at[400] = trio.current_time()
        writer.put(record, [ResponseChunk(1, 400, "y")])  # type: ignore[arg-type]
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert writer.transactions <= busy / writer.interval + 2
    assert writer.transactions < busy / writer.delay / 4  # not one each DELAY (80)
    waits = [stored_at[seq] - put_at[seq] for seq in range(400)]
    assert max(waits) <= writer.interval + 0.001
    assert stored_at[400] - put_at[400] == pytest.approx(writer.delay)
    assert [c.seq for c in state.chunks(pid)] == list(range(401))
