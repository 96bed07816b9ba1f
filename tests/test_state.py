"""The controller's state in SQLite: every method, migrations, WAL readers, crashes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from latis_core._cmdr.schema import MIGRATIONS as REAL_MIGRATIONS
from latis_core._cmdr.state import (
    ChunkRow,
    ConnectionState,
    InputRow,
    PromptState,
    StateDB,
    StateError,
    UnitResources,
)
from latis_core._plugins.provision import Resources
from latis_core._wire.messages import ResponseChunk
from latis_core._wire.messages import State as SessionState


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "latis.db"


@pytest.fixture
def state(db_path: Path, clock: Clock) -> Iterator[StateDB]:
    with StateDB(db_path, clock=clock) as opened:
        yield opened


def with_session(state: StateDB, unit: str = "u1", session: str = "s1") -> None:
    state.upsert_unit(unit, "process", {})
    state.add_session(session, unit)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# -- opening ------------------------------------------------------------------


class TestOpen:
    def test_creates_folders_and_file_with_the_pragmas(self, db_path: Path) -> None:
        with StateDB(db_path) as state:
            assert db_path.is_file()
            db = state._db()
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
            assert state.schema_version == len(REAL_MIGRATIONS) == 5
            assert state.check() == "ok"

    def test_private_file(self, db_path: Path) -> None:
        with StateDB(db_path):
            for name in ("latis.db", "latis.db-wal", "latis.db-shm"):
                assert db_path.with_name(name).stat().st_mode & 0o777 == 0o600, name
        assert db_path.parent.stat().st_mode & 0o777 == 0o700

    def test_reopen_keeps_data(self, db_path: Path) -> None:
        with StateDB(db_path) as state:
            state.upsert_unit("u1", None, {"dial": "unix:/x"})
        with StateDB(db_path) as state:
            unit = state.get_unit("u1")
            assert unit is not None and unit.config == {"dial": "unix:/x"}

    def test_close_twice_and_use_after_close(self, db_path: Path) -> None:
        state = StateDB(db_path)
        state.close()
        state.close()
        with pytest.raises(StateError, match="closed"):
            state.list_units()
        assert "closed" in repr(state)

    def test_calls_from_several_threads(self, state: StateDB) -> None:
        with_session(state)
        prompts = [state.add_prompt("s1", f"p{n}", n) for n in range(4)]
        errors: list[BaseException] = []

        def write(prompt: int) -> None:
            try:
                for batch in range(20):
                    rows = [(batch * 10 + i, "x", None, None) for i in range(10)]
                    state.add_chunks(prompt, rows)
                    state.last_seq(prompt)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(p,)) for p in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [state.last_seq(p) for p in prompts] == [199] * 4
        assert state.check() == "ok"


# -- units and resources ------------------------------------------------------------


class TestUnits:
    def test_upsert_get_list(self, state: StateDB, clock: Clock) -> None:
        row = state.upsert_unit("b", "process", {"agent": "echo"})
        assert (row.name, row.provisioner, row.config) == ("b", "process", {"agent": "echo"})
        assert row.created_at == row.updated_at == 1000.0 and row.destroyed_at is None
        clock.tick()
        state.upsert_unit("a", None, {})
        clock.tick()
        updated = state.upsert_unit("b", "container", {"image": "x"})
        assert updated.id == row.id
        assert (updated.provisioner, updated.config) == ("container", {"image": "x"})
        assert (updated.created_at, updated.updated_at) == (1000.0, 1002.0)
        assert state.get_unit("b") == updated
        assert state.get_unit("nope") is None
        assert [u.name for u in state.list_units()] == ["a", "b"]

    def test_upsert_many_at_once(self, state: StateDB, clock: Clock) -> None:
        """A config's units in one call (cmdr's start): new ones added, changed ones
        updated, unchanged ones left as they were (their `updated_at` too)."""
        same = state.upsert_unit("same", None, {"agent": "echo"})
        changed = state.upsert_unit("changed", "process", {"agent": "echo"})
        clock.tick()
        state.upsert_units([("same", None, {"agent": "echo"}),
                            ("changed", "container", {"image": "x"}),
                            ("new", None, {})])
        assert state.get_unit("same") == same
        now = state.get_unit("changed")
        assert now is not None and now.id == changed.id
        assert (now.provisioner, now.config, now.updated_at) == ("container", {"image": "x"},
                                                                 1001.0)
        added = state.get_unit("new")
        assert added is not None and added.created_at == 1001.0
        assert [u.name for u in state.list_units()] == ["changed", "new", "same"]

    def test_destroyed_unit_and_readd_starts_clean(self, state: StateDB, clock: Clock) -> None:
        old = state.upsert_unit("u1", "process", {"v": 1})
        old_resources = state.resources("u1")
        old_resources.set("pid", "4242")
        state.set_connection("u1", "connected", "local")
        state.add_session("s1", "u1")
        prompt = state.add_prompt("s1", "hi", 1)
        state.add_chunks(prompt, [(0, "a", None, None), (1, "b", None, None)])
        clock.tick()

        assert state.mark_unit_destroyed("u1") is True
        assert state.mark_unit_destroyed("u1") is False
        assert state.get_unit("u1") is None
        assert state.list_units() == []
        assert state.list_resources("u1") == {}
        assert state.get_connection("u1") is None
        assert old_resources.get("pid") is None
        with pytest.raises(StateError, match="destroyed"):
            old_resources.set("pid", "1")
        # The old session is closed but kept, with its transcript.
        session = state.get_session("s1")
        assert session is not None
        assert (session.state, session.closed_at, session.unit_id) == ("closed", 1001.0, old.id)
        ended = state.get_prompt(prompt)
        assert ended is not None and (ended.state, ended.chunks) == ("cancelled", 2)
        assert state.running_prompts() == []
        assert [e.answer for e in state.transcript("s1")] == ["ab"]

        new = state.upsert_unit("u1", "container", {"v": 2})
        assert new.id != old.id and new.config == {"v": 2}
        assert state.list_resources("u1") == {}
        assert state.resources("u1").get("pid") is None
        assert state.get_connection("u1") is None
        assert state.list_sessions("u1", include_closed=True) == []
        assert state.list_sessions() == []
        assert [s.id for s in state.list_sessions(include_closed=True)] == ["s1"]
        # The old Resources object stays bound to the old unit.
        assert old_resources.get("pid") is None
        with pytest.raises(StateError):
            old_resources.set("pid", "1")
        history = state.list_units(include_destroyed=True)
        assert [(u.name, u.destroyed_at) for u in history] == [("u1", 1001.0), ("u1", None)]


class TestEnrollments:
    def test_enroll_find_and_revoke(self, state: StateDB) -> None:
        state.upsert_unit("edge", None, {})
        first = state.enroll("edge")
        assert state.find_enrollment(first.id) == ("edge", first)
        assert state.enrollment_of("edge") == first.id
        second = state.enroll("edge")  # a new one revokes the old
        assert state.find_enrollment(first.id) is None
        assert state.find_enrollment(second.id) == ("edge", second)
        with pytest.raises(StateError, match="unit 'nope' is not in the state"):
            state.enroll("nope")

    def test_a_destroyed_unit_loses_its_enrollment_and_its_name_starts_clean(
        self, state: StateDB
    ) -> None:
        state.upsert_unit("edge", None, {})
        old = state.enroll("edge")
        state.add_session("s1", "edge", "idle")
        state.mark_unit_destroyed("edge")
        assert state.find_enrollment(old.id) is None
        state.upsert_unit("edge", None, {})
        assert state.enrollment_of("edge") is None
        assert state.list_sessions("edge") == []
        new = state.enroll("edge")
        assert new.id != old.id and new.secret != old.secret

    def test_a_version_1_file_upgrades_and_keeps_its_data(self, db_path: Path) -> None:
        """A state file from before enrollments: migrated, backed up, nothing lost."""
        db_path.parent.mkdir(parents=True)
        old = raw(db_path)
        for statement in REAL_MIGRATIONS[0].split(";\n"):
            if statement.strip():
                old.execute(statement)
        old.execute("INSERT INTO units (name, config, created_at, updated_at)"
                    " VALUES ('box', '{}', 1, 1)")
        old.execute("INSERT INTO sessions (id, unit, state, created_at) VALUES ('s', 1, 'idle', 1)")
        old.execute("PRAGMA user_version = 1")
        old.close()
        with StateDB(db_path) as state:
            assert state.schema_version == len(REAL_MIGRATIONS)
            assert [s.id for s in state.list_sessions("box")] == ["s"]
            enrollment = state.enroll("box")
            assert state.find_enrollment(enrollment.id) == ("box", enrollment)
        assert db_path.with_name("latis.db.bak-v1").exists()


class TestResources:
    def test_protocol(self, state: StateDB, db_path: Path) -> None:
        state.upsert_unit("u1", "process", {})
        state.upsert_unit("u2", "process", {})
        resources: Resources = state.resources("u1")
        assert isinstance(resources, UnitResources)
        assert resources.get("pid") is None
        resources.set("pid", "100")
        resources.set("pid", "101")
        resources.set("socket", "/run/u1.sock")
        state.resources("u2").set("pid", "200")
        assert resources.get("pid") == "101"
        assert state.list_resources("u1") == {"pid": "101", "socket": "/run/u1.sock"}
        with StateDB.open_readonly(db_path) as reader:
            assert reader.list_resources("u1") == {"pid": "101", "socket": "/run/u1.sock"}
            assert reader.resources("u1").get("pid") == "101"
            with pytest.raises(StateError, match="read-only"):
                reader.resources("u1").set("pid", "1")
        resources.clear()
        assert state.list_resources("u1") == {}
        assert state.list_resources("u2") == {"pid": "200"}

    def test_unknown_unit(self, state: StateDB) -> None:
        with pytest.raises(StateError, match="'ghost' is not in the state"):
            state.resources("ghost")
        assert state.list_resources("ghost") == {}


# -- connections --------------------------------------------------------------


class TestConnections:
    def test_since_moves_on_change_last_seen_always(self, state: StateDB, clock: Clock) -> None:
        state.upsert_unit("u1", None, {})
        assert state.get_connection("u1") is None
        state.set_connection("u1", ConnectionState.CONNECTING, "dial unix:/x")
        clock.tick()
        state.set_connection("u1", "connected")
        clock.tick()
        state.set_connection("u1", "connected")
        row = state.get_connection("u1")
        assert row is not None
        assert (row.unit, row.state, row.transport) == ("u1", "connected", "dial unix:/x")
        assert (row.since, row.last_seen, row.error) == (1001.0, 1002.0, None)
        clock.tick()
        state.set_connection("u1", "unreachable", error="timeout: 3 missed heartbeats")
        row = state.get_connection("u1")
        assert row is not None
        assert (row.state, row.since, row.last_seen) == ("unreachable", 1003.0, 1003.0)
        assert row.error == "timeout: 3 missed heartbeats"
        clock.tick()
        state.set_connection("u1", "connected", "accept tcp:1.2.3.4:9")
        row = state.get_connection("u1")
        assert row is not None
        assert (row.transport, row.error, row.since) == ("accept tcp:1.2.3.4:9", None, 1004.0)

    def test_overview_of_every_live_unit_for_status(self, state: StateDB, clock: Clock) -> None:
        """`latis status` reads every live unit with its connection in one query, and
        the open sessions in another: a unit never connected has no connection
        fields, a destroyed one is not listed, a closed session is not either."""
        b = state.upsert_unit("b", "process", {})
        a = state.upsert_unit("a", None, {})
        state.upsert_unit("gone", None, {})
        state.set_connection("b", "unreachable", "dial unix:/b", error="3 missed heartbeats")
        state.set_connection("gone", "connected", "dial unix:/g")
        state.mark_unit_destroyed("gone")
        state.add_session("s1", "b")
        state.add_session("s2", "a", "busy")
        clock.tick()
        state.add_session("s3", "b")
        state.close_session("s1")
        assert state.unit_overview() == [
            (a.id, "a", None, None, None, None, None),
            (b.id, "b", "process", "unreachable", "dial unix:/b", "3 missed heartbeats", 1000.0),
        ]
        assert state.session_states() == [(a.id, "s2", "busy"), (b.id, "s3", "idle")]

    def test_refusals(self, state: StateDB) -> None:
        with pytest.raises(StateError, match="ghost"):
            state.set_connection("ghost", "connected")
        state.upsert_unit("u1", None, {})
        with pytest.raises(ValueError):
            state.set_connection("u1", "sleepy")
        assert state.get_connection("u1") is None


# -- sessions -----------------------------------------------------------------


class TestSessions:
    def test_add_get_list_state_close(self, state: StateDB, clock: Clock) -> None:
        state.upsert_unit("u1", None, {})
        state.upsert_unit("u2", None, {})
        s1 = state.add_session("s1", "u1")
        clock.tick()
        state.add_session("s2", "u2", state=SessionState.BUSY)
        clock.tick()
        state.add_session("s3", "u1")
        assert s1 == state.get_session("s1")
        assert (s1.unit, s1.state, s1.created_at, s1.closed_at) == ("u1", "idle", 1000.0, None)
        assert state.get_session("nope") is None
        assert [s.id for s in state.list_sessions()] == ["s1", "s2", "s3"]
        assert [s.id for s in state.list_sessions("u1")] == ["s1", "s3"]
        state.set_session_state("s1", "waiting")
        session = state.get_session("s1")
        assert session is not None and session.state is SessionState.WAITING
        clock.tick()
        state.close_session("s1")
        state.close_session("s1")  # again: nothing
        state.set_session_state("s1", "busy")  # a closed session stays closed
        session = state.get_session("s1")
        assert session is not None and (session.state, session.closed_at) == ("closed", 1003.0)
        state.set_session_state("s3", "closed")
        assert [s.id for s in state.list_sessions("u1")] == []
        assert [s.id for s in state.list_sessions("u1", include_closed=True)] == ["s1", "s3"]

    def test_refusals(self, state: StateDB) -> None:
        with pytest.raises(StateError, match="ghost"):
            state.add_session("s1", "ghost")
        with_session(state)
        with pytest.raises(StateError, match="already recorded"):
            state.add_session("s1", "u1")
        with pytest.raises(StateError, match="no session"):
            state.set_session_state("nope", "busy")
        with pytest.raises(StateError, match="no session"):
            state.close_session("nope")
        with pytest.raises(ValueError):
            state.set_session_state("s1", "asleep")


# -- prompts, chunks, inputs --------------------------------------------------------


class TestCoordinations:
    def test_events_in_batches_and_sessions_tagged(
        self, state: StateDB, clock: Clock, db_path: Path
    ) -> None:
        """Events stored in several writes come back numbered in order (a batch
        written again keeps its first copy); the sessions a coordination opened
        are tagged with it in one write."""
        state.upsert_unit("u1", None, {})
        for sid in ("s1", "s2", "s3"):
            state.add_session(sid, "u1")
        state.add_coordination("co-1", "the task", "parallel", {"require": "all"}, ["u1", "u1"])
        first = [{"type": "started", "agent": "u1", "text": "é \" ,\n"},
                 {"type": "prompt", "agent": "u1#2", "elapsed": 0.5}]
        state.add_coordination_events("co-1", 0, first)
        state.add_coordination_events("co-1", 2, [{"type": "reply", "text": "done"}])
        state.add_coordination_events("co-1", 1, [{"type": "replayed"}])  # seq 1 kept
        state.add_coordination_events("co-1", 3, [])
        state.tag_sessions(["s1", "s2"], "co-1")
        state.tag_sessions([], "co-1")
        row = state.get_coordination("co-1")
        assert row is not None
        assert row.events == [*first, {"type": "reply", "text": "done"}]
        assert (row.task, row.units, row.state) == ("the task", ["u1", "u1"], "running")
        # (The tags have no reader of their own but usage's rollup: read the file.)
        with sqlite3.connect(db_path) as db:
            tagged = dict(db.execute("SELECT session, coordination FROM session_coordinations"))
        assert tagged == {"s1": "co-1", "s2": "co-1"}


class TestPrompts:
    def test_lifecycle(self, state: StateDB, clock: Clock) -> None:
        with_session(state)
        first = state.add_prompt("s1", "hello", 7)
        clock.tick()
        second = state.add_prompt("s1", "again", "req-8")
        assert second > first
        row = state.get_prompt(first)
        assert row is not None
        assert (row.session, row.request_id, row.text, row.state) == ("s1", 7, "hello", "running")
        assert (row.started_at, row.ended_at, row.chunks, row.error) == (1000.0, None, None, None)
        last = state.last_prompt("s1")
        assert last is not None and last.request_id == "req-8"
        assert [p.id for p in state.running_prompts()] == [first, second]
        clock.tick()
        assert state.end_prompt(first, PromptState.COMPLETE, 3) is True
        assert state.end_prompt(first, "error", 3, "internal: late") is False  # first end counts
        assert state.end_prompt(second, "error", 0, "agent_failed: boom") is True
        rows = state.prompts("s1")
        assert [(p.state, p.chunks, p.error) for p in rows] == [
            ("complete", 3, None),
            ("error", 0, "agent_failed: boom"),
        ]
        assert rows[0].ended_at == 1002.0
        assert state.running_prompts() == []
        assert state.get_prompt(999) is None
        assert state.last_prompt("nope") is None
        assert state.prompts("nope") == []

    def test_refusals(self, state: StateDB) -> None:
        with pytest.raises(StateError, match="no session"):
            state.add_prompt("nope", "x", 1)
        with_session(state)
        prompt = state.add_prompt("s1", "x", 1)
        with pytest.raises(ValueError, match="running"):
            state.end_prompt(prompt, "running", 0)
        with pytest.raises(ValueError):
            state.end_prompt(prompt, "finished", 0)
        with pytest.raises(StateError, match="no prompt"):
            state.end_prompt(999, "complete", 0)
        state.close_session("s1")
        closed = state.get_prompt(prompt)
        assert closed is not None and closed.state is PromptState.CANCELLED
        with pytest.raises(StateError, match="closed"):
            state.add_prompt("s1", "x", 2)


class TestChunks:
    def test_add_read_after_last_seq(self, state: StateDB) -> None:
        with_session(state)
        prompt = state.add_prompt("s1", "x", 1)
        other = state.add_prompt("s1", "y", 2)
        assert state.last_seq(prompt) == -1
        assert state.chunks(prompt) == []
        state.add_chunks(prompt, [])
        state.add_chunks(prompt, [(0, "hel", None, None), (1, "lo", None, None)])
        state.add_chunks(prompt, [(2, "", "tool_call", {"name": "ls", "args": [1, "a"]})])
        state.add_chunks(other, [(0, "other", None, None)])
        assert state.last_seq(prompt) == 2
        assert state.chunks(prompt) == [
            ChunkRow(prompt, 0, "hel", None, None),
            ChunkRow(prompt, 1, "lo", None, None),
            ChunkRow(prompt, 2, "", "tool_call", {"name": "ls", "args": [1, "a"]}),
        ]
        assert [c.seq for c in state.chunks(prompt, after=0)] == [1, 2]
        assert state.chunks(prompt, after=2) == []
        # A replayed seq keeps its first chunk.
        state.add_chunks(prompt, [(1, "DIFFERENT", None, None), (3, "!", None, None)])
        assert [c.text for c in state.chunks(prompt)] == ["hel", "lo", "", "!"]

    def test_a_failing_batch_writes_nothing(self, state: StateDB) -> None:
        with_session(state)
        prompt = state.add_prompt("s1", "x", 1)
        bad: list[tuple[int, object, None, None]] = [(0, "a", None, None), (1, None, None, None)]
        with pytest.raises(sqlite3.IntegrityError):
            state.add_chunks(prompt, bad)  # type: ignore[arg-type]
        assert state.chunks(prompt) == []
        with pytest.raises(StateError, match="no prompt"):
            state.add_chunks(999, [(0, "a", None, None)])
        assert state.check() == "ok"

    def test_batches_of_several_prompts_store_chunks_as_they_came(self, state: StateDB) -> None:
        """The chunk writer's call: the wire's chunks themselves, of several
        prompts; data comes back as it went in; a prompt gone is skipped."""
        with_session(state)
        one = state.add_prompt("s1", "x", 1)
        two = state.add_prompt("s1", "y", 2)
        data = {"name": "grep", "args": ["héllo ✓", 1.5, -3, None, True], "nested": {"k": []}}
        state.add_chunk_batches([
            (one, [ResponseChunk(1, 0, "hé "), ResponseChunk(1, 1, "", "tool_call", data)]),
            (999, [ResponseChunk(9, 0, "gone")]),
            (two, [ResponseChunk(2, 0, "plain")]),
            (one, []),
        ])
        assert state.chunks(one) == [
            ChunkRow(one, 0, "hé ", None, None),
            ChunkRow(one, 1, "", "tool_call", data),
        ]
        assert state.chunks(two) == [ChunkRow(two, 0, "plain", None, None)]
        # A replayed chunk keeps its first copy; nothing to store is no write.
        state.add_chunk_batches([(one, [ResponseChunk(1, 1, "again")])])
        state.add_chunk_batches([(one, [])])
        assert [c.text for c in state.chunks(one)] == ["hé ", ""]

    def test_many_batches_sanity(self, state: StateDB) -> None:
        """The daemon's pattern: batches of 1000. A bound on rows, never on time."""
        with_session(state)
        prompt = state.add_prompt("s1", "x", 1)
        for batch in range(20):
            state.add_chunks(
                prompt, [(batch * 1000 + i, f"chunk {i} ", None, None) for i in range(1000)]
            )
        assert state.last_seq(prompt) == 19_999
        chunks = state.chunks(prompt, after=18_999)
        assert [c.seq for c in chunks] == list(range(19_000, 20_000))
        count = state._db().execute("SELECT count(*) FROM chunks").fetchone()[0]
        assert count == 20_000


class TestInputs:
    def test_ask_answer_pending(self, state: StateDB, clock: Clock) -> None:
        with_session(state)
        prompt = state.add_prompt("s1", "x", 1)
        state.add_input(prompt, 0, "Create notes.txt?", ["yes", "no"], "permission")
        state.add_input(prompt, 1, "Name?")
        pending = state.pending_inputs(prompt)
        assert pending == [
            InputRow(
                prompt, 0, "Create notes.txt?", ("yes", "no"), "permission", None, 1000.0, None
            ),
            InputRow(prompt, 1, "Name?", (), None, None, 1000.0, None),
        ]
        clock.tick()
        assert state.answer_input(prompt, 0, "yes") is True
        assert state.answer_input(prompt, 0, "no") is False  # the first answer counts
        # Asked again after a reattach: the first record and its answer stay.
        state.add_input(prompt, 0, "Create notes.txt?", ["yes", "no"], "permission")
        assert [i.number for i in state.pending_inputs(prompt)] == [1]
        with pytest.raises(StateError, match="no question 5"):
            state.answer_input(prompt, 5, "x")
        with pytest.raises(StateError, match="no prompt"):
            state.add_input(999, 0, "?")
        state.end_prompt(prompt, "cancelled", 0)
        assert state.pending_inputs(prompt) == []  # nothing waits once the prompt ended
        answered = state.transcript("s1")[0].inputs[0]
        assert (answered.answer, answered.answered_at) == ("yes", 1001.0)


class TestTranscript:
    def test_prompts_in_order_with_chunks_and_inputs(self, state: StateDB) -> None:
        with_session(state)
        with_session(state, "u2", "s2")
        p1 = state.add_prompt("s1", "first", 1)
        state.add_chunks(p1, [(1, "world", None, None), (0, "hello ", None, None)])
        state.add_chunks(p1, [(2, "", "plan", {"steps": 2})])
        state.add_input(p1, 0, "ok?", ["y", "n"], "permission")
        state.end_prompt(p1, "complete", 3)
        noise = state.add_prompt("s2", "elsewhere", 1)
        state.add_chunks(noise, [(0, "noise", None, None)])
        p2 = state.add_prompt("s1", "second", 2)
        state.add_chunks(p2, [(0, "still going", None, None)])

        transcript = state.transcript("s1")
        assert [e.prompt.id for e in transcript] == [p1, p2]
        assert [c.seq for c in transcript[0].chunks] == [0, 1, 2]
        assert transcript[0].answer == "hello world"
        assert transcript[0].chunks[2].data == {"steps": 2}
        assert [i.question for i in transcript[0].inputs] == ["ok?"]
        assert (transcript[1].prompt.state, transcript[1].answer) == ("running", "still going")
        assert transcript[1].inputs == []
        with_session(state, "u3", "empty")
        assert state.transcript("empty") == []
        with pytest.raises(StateError, match="no session"):
            state.transcript("nope")


# -- read-only, WAL ---------------------------------------------------------------

READER = """
import json, sys
from latis_core._cmdr.state import StateDB
with StateDB.open_readonly(sys.argv[1]) as state:
    prompt = state.running_prompts()[0].id
    print(json.dumps({
        "units": [u.name for u in state.list_units()],
        "seq": state.last_seq(prompt),
        "check": state.check(),
    }))
"""


def read_in_subprocess(path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", READER, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


class TestReadOnly:
    def test_missing_file_is_not_created(self, tmp_path: Path) -> None:
        path = tmp_path / "none" / "latis.db"
        with pytest.raises(StateError, match="no latis state at"):
            StateDB.open_readonly(path)
        assert not path.parent.exists()

    def test_writes_refused(self, state: StateDB, db_path: Path) -> None:
        state.upsert_unit("u1", None, {})
        with StateDB.open_readonly(db_path) as reader:
            assert reader.readonly and "read-only" in repr(reader)
            assert reader.get_unit("u1") is not None
            with pytest.raises(StateError, match="read-only"):
                reader.upsert_unit("u2", None, {})
            with pytest.raises(StateError, match="read-only"):
                reader.add_session("s1", "u1")
            assert reader.check() == "ok"

    def test_reader_sees_commits_while_the_writer_holds_the_file(
        self, state: StateDB, db_path: Path
    ) -> None:
        with_session(state)
        prompt = state.add_prompt("s1", "x", 1)
        state.add_chunks(prompt, [(i, "x", None, None) for i in range(10)])
        # The writer is in the middle of a write transaction (uncommitted rows).
        writer = state._db()
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO chunks (prompt, seq, text) VALUES (?, 10, 'new')", (prompt,))
        try:
            with StateDB.open_readonly(db_path) as reader:  # another connection, this process
                assert reader.last_seq(prompt) == 9
            result = read_in_subprocess(db_path)  # another process
            assert result == {"units": ["u1"], "seq": 9, "check": "ok"}
        finally:
            writer.execute("COMMIT")
        assert read_in_subprocess(db_path)["seq"] == 10
        state.add_chunks(prompt, [(11, "y", None, None)])
        assert read_in_subprocess(db_path)["seq"] == 11

    def test_older_schema_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "latis.db"
        path.touch()
        with pytest.raises(StateError, match="older latis.*start the daemon"):
            StateDB.open_readonly(path)


# -- migrations ---------------------------------------------------------------


class TestMigrations:
    def test_empty_v0_file_is_migrated_without_backup(self, tmp_path: Path) -> None:
        path = tmp_path / "latis.db"
        path.touch()
        with StateDB(path) as state:
            assert state.schema_version == len(REAL_MIGRATIONS)
            state.upsert_unit("u1", None, {})
        assert list(tmp_path.glob("*.bak-*")) == []

    def test_newer_version_refused_and_untouched(self, tmp_path: Path) -> None:
        path = tmp_path / "latis.db"
        db = raw(path)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE future (x)")
        db.execute("INSERT INTO future VALUES ('from the future')")
        db.execute("PRAGMA user_version = 99")
        db.close()
        before = path.read_bytes()
        with pytest.raises(StateError, match="schema version 99, from a newer latis"):
            StateDB(path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["latis.db"]
        with pytest.raises(StateError, match="schema version 99, from a newer latis"):
            StateDB.open_readonly(path)
        # (A read-only reader of a WAL file may leave an empty -wal and the -shm index.)
        assert path.read_bytes() == before
        assert path.with_name("latis.db-wal").stat().st_size == 0

    def test_backup_before_migrating(self, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with StateDB(db_path) as state:
            state.upsert_unit("u1", "process", {"keep": True})
        now = len(REAL_MIGRATIONS)
        nxt = "ALTER TABLE units ADD COLUMN note TEXT;\nCREATE INDEX units_note ON units (note);\n"
        monkeypatch.setattr("latis_core._cmdr.schema.MIGRATIONS", [*REAL_MIGRATIONS, nxt])
        with StateDB(db_path) as state:
            assert state.schema_version == now + 1
            assert state.get_unit("u1") is not None
            columns = [r[1] for r in state._db().execute("PRAGMA table_info(units)")]
            assert "note" in columns
        backup = db_path.with_name(f"latis.db.bak-v{now}")
        assert backup.stat().st_mode & 0o777 == 0o600
        assert sorted(p.name for p in db_path.parent.iterdir()) == ["latis.db", backup.name]
        old = raw(backup)
        assert old.execute("PRAGMA user_version").fetchone()[0] == now
        assert old.execute("SELECT name, config FROM units").fetchall() == [("u1", '{"keep":true}')]
        assert old.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        old.close()
        # The real code now sees a newer file: refused.
        monkeypatch.setattr("latis_core._cmdr.schema.MIGRATIONS", REAL_MIGRATIONS)
        with pytest.raises(StateError, match="newer"):
            StateDB(db_path)

    def test_failed_migration_changes_nothing(
        self, db_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with StateDB(db_path) as state:
            state.upsert_unit("u1", None, {})
        broken = "ALTER TABLE units ADD COLUMN note TEXT;\nCREATE TABLE units (x);\n"
        monkeypatch.setattr("latis_core._cmdr.schema.MIGRATIONS", [*REAL_MIGRATIONS, broken])
        with pytest.raises(
            StateError, match=f"migrating the schema to version {len(REAL_MIGRATIONS) + 1} failed"
        ):
            StateDB(db_path)
        monkeypatch.setattr("latis_core._cmdr.schema.MIGRATIONS", REAL_MIGRATIONS)
        with StateDB(db_path) as state:
            assert state.schema_version == len(REAL_MIGRATIONS)
            columns = [r[1] for r in state._db().execute("PRAGMA table_info(units)")]
            assert "note" not in columns
            assert state.get_unit("u1") is not None

    def test_foreign_database_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "other.db"
        db = raw(path)
        db.execute("CREATE TABLE mine (x)")
        db.close()
        before = path.read_bytes()
        with pytest.raises(StateError, match="not latis state"):
            StateDB(path)
        assert path.read_bytes() == before

    def test_a_folder_in_the_way(self, tmp_path: Path) -> None:
        (tmp_path / "latis.db").mkdir()
        with pytest.raises(StateError, match="cannot open the latis state"):
            StateDB(tmp_path / "latis.db")

    def test_not_a_database(self, tmp_path: Path) -> None:
        path = tmp_path / "latis.db"
        path.write_bytes(b"this is not sqlite at all, not even close" * 100)
        with pytest.raises(StateError, match="not a latis state database"):
            StateDB(path)


# -- crashes ------------------------------------------------------------------

#: A scripted session. It prints one line after each commit (the "ack" a client
#: would see) and kills itself with SIGKILL right after commit number argv[2].
WRITER = """
import os, signal, sys
from latis_core._cmdr.state import StateDB

path, kill_after, batches, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), 200
commits = 0

def committed(what):
    global commits
    commits += 1
    print(what, flush=True)
    if commits == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

state = StateDB(path)
state.upsert_unit("u1", "process", {"agent": "echo"}); committed("unit")
state.add_session("s1", "u1"); committed("session")
state.set_connection("u1", "connected", "local"); committed("connected")
prompt = state.add_prompt("s1", "tell me everything", 1); committed(f"prompt {prompt}")
state.set_session_state("s1", "busy"); committed("busy")
for batch in range(batches):
    rows = [(batch * size + i, f"b{batch}.{i} ", None, None) for i in range(size)]
    state.add_chunks(prompt, rows); committed(f"batch {batch}")
    if batch == 3:
        state.add_input(prompt, 0, "go on?", ["yes", "no"], "permission"); committed("asked")
        state.answer_input(prompt, 0, "yes"); committed("answered")
state.end_prompt(prompt, "complete", batches * size); committed("end")
state.set_session_state("s1", "idle"); committed("idle")
state.close()
print("done", flush=True)
"""

BATCHES = 14
SIZE = 200
#: unit, session, connected, prompt, busy, the batches, asked, answered, end, idle.
COMMITS = 5 + BATCHES + 4


def run_writer(path: Path, kill_after: int, batches: int = BATCHES) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(kill_after), str(batches)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_after_crash(path: Path, acks: list[str], *, exact: bool) -> None:
    """Reopen: integrity ok, every acknowledged commit there, no batch torn.

    `exact`: the writer died right after its last ack, so nothing beyond it may be
    there either. Otherwise one more commit may have landed (done, not yet acked).
    """
    acked_batches = sum(1 for a in acks if a.startswith("batch "))
    with StateDB(path) as state:  # the daemon restarting: opens, recovers the WAL
        assert state.check() == "ok"
        if "unit" in acks:
            assert state.get_unit("u1") is not None
        session = state.get_session("s1")
        if "session" in acks:
            assert session is not None
        prompts = state.prompts("s1") if session else []
        if any(a.startswith("prompt ") for a in acks):
            assert len(prompts) == 1
        if not prompts:
            assert acked_batches == 0 or not exact
            return
        prompt = prompts[0]
        chunks = state.chunks(prompt.id)
        seqs = [c.seq for c in chunks]
        assert seqs == list(range(len(seqs))), "chunks have a gap"
        assert len(seqs) % SIZE == 0, f"a torn batch: {len(seqs)} chunks"
        present = len(seqs) // SIZE
        assert present >= acked_batches
        assert present <= acked_batches + (0 if exact else 1)
        for chunk in chunks:
            batch, i = divmod(chunk.seq, SIZE)
            assert chunk.text == f"b{batch}.{i} "
        inputs = state.transcript("s1")[0].inputs
        if "answered" in acks:
            assert [i.answer for i in inputs] == ["yes"]
        elif "asked" in acks:
            assert len(inputs) == 1
        if "end" in acks:
            assert prompt.state is PromptState.COMPLETE and prompt.chunks == BATCHES * SIZE
        elif exact:
            assert prompt.state is PromptState.RUNNING
        if "idle" in acks:
            assert session is not None and session.state is SessionState.IDLE
        # The restarted daemon resumes where the state says and finishes the prompt.
        if prompt.state is PromptState.RUNNING:
            next_seq = state.last_seq(prompt.id) + 1
            state.add_chunks(prompt.id, [(next_seq, "resumed", None, None)])
            state.end_prompt(prompt.id, "complete", next_seq + 1)
            assert state.transcript("s1")[0].chunks[-1].text == "resumed"
        assert state.check() == "ok"


class TestCrash:
    def test_full_run(self, db_path: Path) -> None:
        writer = run_writer(db_path, kill_after=0)
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        acks = out.splitlines()
        assert acks[-1] == "done" and len(acks) == COMMITS + 1
        check_after_crash(db_path, acks, exact=True)

    def test_sigkill_after_each_commit(self, tmp_path: Path) -> None:
        """THREATS.md 4.1, bounded: SIGKILL right after commit k, for every k."""
        for k in range(1, COMMITS + 1):
            path = tmp_path / f"k{k}" / "latis.db"
            writer = run_writer(path, kill_after=k)
            out, err = writer.communicate(timeout=60)
            assert writer.returncode == -signal.SIGKILL, f"k={k}: {err}"
            acks = out.splitlines()
            assert len(acks) == k, (k, acks)
            check_after_crash(path, acks, exact=True)

    def test_power_loss_drops_only_whole_commits_from_the_end(self, tmp_path: Path) -> None:
        """THREATS.md 4.3: power lost before the WAL reached the disk. With
        `synchronous=NORMAL` a commit is not synced, so any tail of the WAL may be
        gone: cut it anywhere (as a disk that dropped unsynced writes would) and
        the state is whole, and holds a prefix of the commits, never a torn one."""
        src = tmp_path / "src" / "latis.db"
        writer = run_writer(src, kill_after=COMMITS)
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == -signal.SIGKILL, err
        wal = src.with_name("latis.db-wal").read_bytes()
        assert len(wal) > 32  # the commits are in the WAL, not yet in the file
        rng = random.Random(3)
        cuts = sorted({0, 32, len(wal)} | {rng.randrange(32, len(wal)) for _ in range(10)})
        stored: list[int] = []
        for cut in cuts:
            path = tmp_path / f"cut{cut}" / "latis.db"
            path.parent.mkdir(mode=0o700)
            shutil.copy(src, path)
            path.with_name("latis.db-wal").write_bytes(wal[:cut])
            with StateDB(path) as state:  # the daemon after the power came back
                assert state.check() == "ok", cut
                session = state.get_session("s1")
                prompts = state.prompts("s1") if session else []
                seqs = [c.seq for c in state.chunks(prompts[0].id)] if prompts else []
                assert seqs == list(range(len(seqs))), f"cut at {cut}: a gap"
                assert len(seqs) % SIZE == 0, f"cut at {cut}: a torn batch"
                stored.append(len(seqs))
        # A longer surviving WAL never holds less; the whole WAL holds everything.
        assert stored == sorted(stored)
        assert stored[0] == 0 and stored[-1] == BATCHES * SIZE

    def test_sigkill_at_random_moments(self, tmp_path: Path) -> None:
        """THREATS.md 4.2, bounded: killed from outside, wherever it happens to be
        (inside a transaction, between commit and ack). What is checked never depends
        on when the kill landed."""
        rng = random.Random(4)
        for run in range(6):
            path = tmp_path / f"r{run}" / "latis.db"
            writer = run_writer(path, kill_after=0, batches=400)
            assert writer.stdout is not None
            # Wait until it streams, then kill it after a few more acks.
            acks: list[str] = []
            target = 5 + rng.randrange(60)
            while len(acks) < target:
                line = writer.stdout.readline()
                assert line, "the writer ended early"
                acks.append(line.strip())
            os.kill(writer.pid, signal.SIGKILL)
            # The rest from the same buffered file (communicate() would skip what
            # readline() has already buffered).
            acks += writer.stdout.read().splitlines()
            assert writer.wait(timeout=60) == -signal.SIGKILL
            assert writer.stderr is not None
            writer.stderr.close()
            writer.stdout.close()
            check_after_crash(path, acks, exact=False)
