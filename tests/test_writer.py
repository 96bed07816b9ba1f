"""The chunk writer: chunks flow first, disk follows, and a crash loses nothing.

The durability contract (docs/design.md, "Durability contract") tested from
outside: a follower sees a chunk before it is stored; one transaction stores
what every prompt has pending; a daemon killed with chunks shown but not
stored comes back, asks each unit to replay after the last stored seq, and the
transcript is whole, each chunk once; a unit that no longer keeps what was
lost says so, and the prompt ends with `limit_reached`.

The disk is stalled the way another process would stall it: this test holds
SQLite's write lock on the state file (a backup, a slow disk), for less than
the daemon's busy timeout.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from cli_home import Home, cli_home

import latis_core
from latis_core import ErrorCode, RequestError, ResponseChunk
from latis_core._cmdr.config import parse_config
from latis_core._cmdr.prompts import PromptRecord
from latis_core._cmdr.state import StateDB
from latis_core._cmdr.writer import ChunkWriter
from latis_core._os.paths import paths

WORDS = " ".join(f"w{i}" for i in range(40))
CONFIG = """
[units.slow]
agent_options = { delay = "0.01" }
[units.slow.provisioner]
type = "process"
"""


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    with cli_home("lw") as here:
        monkeypatch.setenv("LATIS_HOME", str(here.path))
        yield here


@asynccontextmanager
async def controller() -> AsyncIterator[latis_core.Controller]:
    with StateDB(paths().state_file) as state:
        async with latis_core.open_controller(parse_config(CONFIG), state) as ctl:
            yield ctl


@contextmanager
def disk_stalled(path: Path) -> Iterator[None]:
    """Hold the state file's write lock (as another writer would) until the block ends."""
    db = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def stored_seqs(path: Path, prompt_id: int) -> list[int]:
    """The seqs of a prompt's chunks in the state file, read by another connection."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT seq FROM chunks WHERE prompt = ? ORDER BY seq", (prompt_id,))
        return [row[0] for row in rows]
    finally:
        db.close()


# ---- in-process: the writer and the controller ---------------------------------------------


async def test_one_batch_stores_what_several_prompts_have_pending(home: Home) -> None:
    """Chunks of three prompts handed over together are stored in one transaction,
    and a write queued after them runs after them, in the same hop."""
    with StateDB(home.state_file) as state:
        state.upsert_unit("u", None, {})
        records = []
        for n in range(3):
            state.add_session(f"s{n}", "u", "busy")
            prompt_id = state.add_prompt(f"s{n}", "hi", n + 1)
            records.append(PromptRecord(prompt_id, f"s{n}", "u", "hi", n + 1))
        hops = 0

        async def hop(work: Any) -> Any:
            nonlocal hops
            hops += 1
            return await trio.to_thread.run_sync(work)

        writer = ChunkWriter(state, hop)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            while not writer.running:  # (trio runs new tasks in a random order)
                await trio.lowlevel.checkpoint()
            for record in records:
                writer.put(record, [ResponseChunk(1, seq, f"c{seq} ") for seq in range(5)])
            assert writer.pending == 15
            # What the end of a prompt stores, queued behind the chunks.
            seen = await writer.call(lambda: [state.last_seq(r.id) for r in records])
            nursery.cancel_scope.cancel()
        assert seen == [4, 4, 4]
        assert (hops, writer.transactions, writer.rows, writer.pending) == (1, 1, 15, 0)
        assert [r.next_seq for r in records] == [5, 5, 5]
        for record in records:
            assert [c.text for c in state.chunks(record.id)] == [f"c{i} " for i in range(5)]


async def test_chunks_reach_followers_before_disk(home: Home) -> None:
    """With the disk stalled, a follower still gets the chunks as they come; once
    the disk is back, every chunk is stored, each once."""
    async with controller() as ctl:
        sid = (await ctl.create_session("slow"))["session"]
        record = await ctl.start_prompt(sid, WORDS)
        seen: list[int] = []
        with disk_stalled(home.state_file):
            on_disk = stored_seqs(home.state_file, record.id)
            async for kind, payload in ctl.follow(record.id):
                assert kind == "chunk"
                seen.append(payload.seq)
                if payload.seq >= (on_disk[-1] if on_disk else -1) + 10:
                    break
            assert stored_seqs(home.state_file, record.id) == on_disk
        events = [e async for e in ctl.follow(record.id, after=seen[-1])]
        assert events[-1] == ("end", {"outcome": "complete", "chunks": 40})
    assert seen == list(range(len(seen)))
    assert stored_seqs(home.state_file, record.id) == list(range(40))


async def test_a_stalled_disk_holds_the_prompts_back_at_the_limit(home: Home) -> None:
    """While the disk is stalled, a follower is never more than the writer's limit
    (and what one read brings) ahead of what is stored: a crash loses no more."""
    async with controller() as ctl:
        ctl.writer.limit = 5
        sid = (await ctl.create_session("slow"))["session"]
        record = await ctl.start_prompt(sid, WORDS)
        with disk_stalled(home.state_file):
            on_disk = len(stored_seqs(home.state_file, record.id))
            await trio.sleep(0.3)  # 30 chunks' time: far more than the limit
            assert record.received + 1 - on_disk <= ctl.writer.limit + 2
        events = [e async for e in ctl.follow(record.id)]
        assert events[-1] == ("end", {"outcome": "complete", "chunks": 40})
    assert stored_seqs(home.state_file, record.id) == list(range(40))


async def test_short_answers_stop_at_the_limit_too(home: Home) -> None:
    """A short answer's chunks go to its followers with its end; while the disk is
    stalled, a session's short prompts still stop at the writer's limit, not one
    after another ahead of the disk, and once it is back every chunk is stored."""
    async with controller() as ctl:
        ctl.writer.limit = 3
        sid = (await ctl.create_session("slow"))["session"]
        first = await ctl.start_prompt(sid, "hi")  # (prompt ids taken, the unit up)
        ids = [first.id]
        assert [kind async for kind, _ in ctl.follow(first.id)] == ["chunk", "end"]
        answered = 0
        with disk_stalled(home.state_file):
            for _ in range(12):
                record = await ctl.start_prompt(sid, "hi")
                ids.append(record.id)
                with trio.move_on_after(1) as waited:
                    events = [e async for e in ctl.follow(record.id)]
                if waited.cancelled_caught:
                    break
                assert [kind for kind, _ in events] == ["chunk", "end"]
                answered += 1
            assert answered <= ctl.writer.limit + 2
        events = [e async for e in ctl.follow(ids[-1])]
        assert events[-1] == ("end", {"outcome": "complete", "chunks": 1})
    for prompt_id in ids:
        assert stored_seqs(home.state_file, prompt_id) == [0]


# ---- a real daemon, killed ----------------------------------------------------------------


def start_prompts(home: Home, unit: str, count: int, words: int) -> list[str]:
    """`count` detached prompts of `words` words, each in a new session on `unit`."""
    text = " ".join(f"w{i}" for i in range(words))
    sessions = []
    for _ in range(count):
        [first, _] = home.ndjson("prompt", "--detach", "--new", "--unit", unit, text)
        sessions.append(first["session"])
    return sessions


def kill_daemon_mid_stream(home: Home, session: str) -> tuple[int, int]:
    """Stall the disk, follow `session`'s prompt until it is 20 chunks past what is
    stored, SIGKILL the daemon there. Returns (last seq stored, last seq seen)."""
    follower = home.popen("attach", session, "--json")
    assert follower.stdout is not None
    try:
        assert json.loads(follower.stdout.readline())["type"] == "chunk"
        with disk_stalled(home.state_file):
            db = sqlite3.connect(f"file:{home.state_file}?mode=ro", uri=True)
            [(stored,)] = db.execute(
                "SELECT max(seq) FROM chunks JOIN prompts ON chunks.prompt = prompts.id"
                " WHERE prompts.session = ?",
                (session,),
            ).fetchall()
            db.close()
            while True:
                line = follower.stdout.readline()
                assert line, follower.stderr.read() if follower.stderr else ""
                event = json.loads(line)
                assert event["type"] == "chunk", f"the prompt ended first: {event}"
                seen = event["seq"]
                if seen >= stored + 20:
                    break
            os.kill(home.daemon_pid(), signal.SIGKILL)
    finally:
        follower.kill()
        follower.wait()
    return stored, seen


@pytest.mark.slow
def test_a_daemon_killed_under_load_loses_no_chunk(home: Home) -> None:
    """SIGKILL of the daemon while four prompts stream and the last 20+ chunks a
    follower saw are not on disk: the next daemon asks the unit to replay after
    the last stored seq, and each transcript is whole, every chunk once."""
    home.ok("unit", "add", "slow", "--provisioner", "process", "-o", "delay=0.01")
    sessions = start_prompts(home, "slow", 4, 300)
    # The last one started: on a loaded machine the first may be near its end by
    # the time the four are running (each `latis prompt` a process of its own).
    stored, seen = kill_daemon_mid_stream(home, sessions[-1])
    assert seen > stored  # shown to a follower, never stored, then the crash
    text = " ".join(f"w{i}" for i in range(300))
    for session in sessions:  # `attach` starts the next daemon; it resumes each prompt
        events = home.ndjson("attach", session)
        chunks = [e for e in events if e["type"] == "chunk"]
        assert [c["seq"] for c in chunks] == list(range(300))
        assert "".join(c["text"] for c in chunks) == text
        assert events[-1] == {"type": "outcome", "outcome": "complete"}
    db = sqlite3.connect(home.state_file)
    rows = db.execute(
        "SELECT prompt, count(*), count(DISTINCT seq), max(seq) FROM chunks GROUP BY prompt"
    ).fetchall()
    assert [row[1:] for row in rows] == [(300, 300, 299)] * 4
    db.close()


@pytest.mark.slow
def test_a_replay_past_the_units_limit_ends_the_prompt_limit_reached(home: Home) -> None:
    """A unit that keeps only 300 bytes of a prompt for replay no longer has what the
    killed daemon never stored: the prompt ends with a `limit_reached` error that
    says which chunks are lost, to the CLI and to the library."""
    home.config_file.write_text(
        "[units.tiny]\n"
        'agent_options = { delay = "0.01" }\n'
        "[units.tiny.provisioner]\n"
        'type = "process"\n'
        f'command = ["{sys.executable}", "-m", "latis_core._unit.cli", "--replay-limit", "300"]\n'
    )
    [session] = start_prompts(home, "tiny", 1, 300)
    stored, _ = kill_daemon_mid_stream(home, session)
    result = home.run("attach", session)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.split() == [f"w{i}" for i in range(stored + 1)]
    assert f"no longer keeps what prompt 1 sent after chunk {stored}" in result.stderr
    assert "the replay limit is 300 bytes" in result.stderr

    async def follow() -> RequestError:
        async with latis_core.open_daemon() as cmdr:
            last = (await cmdr.session_get(session))["last_prompt"]
            stream = await cmdr.session(session).reattach(last["id"])
            with pytest.raises(RequestError) as info:
                async for _ in stream:
                    pass
            return info.value

    os.environ["LATIS_HOME"] = str(home.path)  # (the fixture restores it)
    error = trio.run(follow)
    assert error.code == ErrorCode.LIMIT_REACHED


async def test_a_batch_that_fails_to_store_is_stored_later(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (a full disk, a lock held past the busy timeout) loses no
    chunk: the batch stays pending and is stored once the disk takes it again."""
    async with controller() as ctl:
        sid = (await ctl.create_session("slow"))["session"]
        store = ctl.state.add_chunk_batches
        failures = 0

        def flaky(batches: Any) -> None:
            nonlocal failures
            if failures < 3:
                failures += 1
                raise sqlite3.OperationalError("disk I/O error")
            store(batches)

        record = await ctl.start_prompt(sid, WORDS)
        monkeypatch.setattr(ctl.state, "add_chunk_batches", flaky)
        events = [e async for e in ctl.follow(record.id)]
        assert events[-1] == ("end", {"outcome": "complete", "chunks": 40})
        assert failures == 3
    assert stored_seqs(home.state_file, record.id) == list(range(40))


async def test_reads_go_on_while_the_disk_refuses_the_writes(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller's reads wait for its writes behind, but not for a disk that
    refuses them: `status` answers (from memory and what is stored) instead of
    hanging, and once the disk takes writes again everything is stored."""
    async with controller() as ctl:
        store = ctl.state.add_chunk_batches
        refusing = True

        def refuse(batches: Any) -> None:
            if refusing:
                raise sqlite3.OperationalError("database or disk is full")
            store(batches)

        monkeypatch.setattr(ctl.state, "add_chunk_batches", refuse)
        sid = (await ctl.create_session("slow"))["session"]
        record = await ctl.start_prompt(sid, WORDS)
        while not ctl.writer.failures:  # a batch with chunks was refused
            await trio.sleep(0.01)
        other = (await ctl.create_session("slow"))["session"]  # queued behind it
        with trio.fail_after(20):  # a bound against hanging, not a timing target
            [unit] = [u for u in await ctl.status() if u["unit"] == "slow"]
        assert [s["id"] for s in unit["sessions"]] == [sid, other]
        refusing = False
        events = [e async for e in ctl.follow(record.id)]
        assert events[-1] == ("end", {"outcome": "complete", "chunks": 40})
        await ctl.flush()
    assert stored_seqs(home.state_file, record.id) == list(range(40))
