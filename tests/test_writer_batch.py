"""The chunk writer's hop is one transaction: every write of a batch is committed
together, and a write that fails undoes only its own changes (its caller hears it)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from latis_core._cmdr.state import StateDB, StateError
from latis_core._cmdr.writer import ChunkWriter


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
