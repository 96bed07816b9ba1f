"""The controller's state: one SQLite file (`Paths.state_file`, `latis.db`), and
its store, `StateDB` (the rows it returns are in `latis_core._cmdr.rows`).

What is kept: the units and what their provisioners made (`resources`), how each
unit is connected, its sessions, and every prompt with its full streamed reply
(the transcript: chunks in `seq` order) and the questions the agent asked.
The tables, their migrations and how the file is opened (WAL, durability,
schema versions, backups) are in `latis_core._cmdr.schema`.

**Who opens it.** The daemon opens it with `StateDB(path)` and is the only writer.
CLI processes read the same file at the same time through
`StateDB.open_readonly(path)`, which never creates or changes anything.

**Transactions.** Every method that writes is one transaction: after a crash
it happened entirely or not at all.

**Threads.** The connection is opened with `check_same_thread=False`: the
daemon calls `StateDB` from worker threads (`trio.to_thread.run_sync`), one call
at a time. A lock makes each call whole even if two threads call at once.

**Identity.** A unit's name is not its identity: `mark_unit_destroyed` ends
one life of a unit, and a unit added later under the same name is a new row
(a new `id`) that starts clean, with no resources, connection or sessions of
the old one. The old unit's sessions and transcripts stay, closed, for history.
Methods take the unit's name and mean the live unit of that name.

New folders are created with mode 0700: transcripts may hold secrets.

Timestamps are unix seconds (`time.time()`, REAL).
"""

from __future__ import annotations

import itertools
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote

from latis_core._cmdr.rows import (
    COORDINATION_SELECT,
    INPUT_SELECT,
    PROMPT_SELECT,
    SESSION_SELECT,
    UNIT_SELECT,
    ChunkRow,
    ConnectionRow,
    ConnectionState,
    CoordinationRow,
    EnrollmentRow,
    InputRow,
    PromptRow,
    PromptState,
    SessionRow,
    TranscriptEntry,
    UnitRow,
    chunk_row,
    coordination_row,
    input_row,
    json_column,
    prompt_row,
    session_row,
    unit_row,
)
from latis_core._cmdr.schema import (
    StateError,
    create_private,
    open_connection,
    prepare,
    require_current,
    user_version,
)
from latis_core._wire.enums import RequestId
from latis_core._wire.enums import State as SessionState

if TYPE_CHECKING:
    from latis_core._wire.auth import Enrollment
    from latis_core._wire.messages import ResponseChunk

__all__ = [
    "Behind",
    "ChunkIn",
    "ChunkRow",
    "ConnectionRow",
    "ConnectionState",
    "EnrollmentRow",
    "CoordinationRow",
    "InputRow",
    "PromptRow",
    "PromptState",
    "SessionRow",
    "StateDB",
    "StateError",
    "dumps_id",
    "TranscriptEntry",
    "UnitResources",
    "UnitRow",
]

#: A chunk as `StateDB.add_chunks` takes it: (seq, text, kind, data).
ChunkIn: TypeAlias = tuple[int, str, str | None, Mapping[str, Any] | None]


def _retire(
    db: sqlite3.Connection, where: str, args: tuple[Any, ...], unit: str, why: str, now: float
) -> list[str]:
    """Delete the enrollments `where` selects, keeping their ids as retired for good."""
    ids = [str(r[0]) for r in db.execute(f"SELECT id FROM enrollments {where}", args)]
    for eid in ids:
        db.execute("INSERT OR IGNORE INTO retired_enrollments (id, unit_name, why, retired_at)"
                   " VALUES (?, ?, ?, ?)", (eid, unit, why, now))
        db.execute("DELETE FROM enrollments WHERE id = ?", (eid,))
    return ids


class StateDB:
    """The controller's state in one SQLite file. See the module's docstring.

    Use `StateDB(path)` in the daemon (creates, migrates, writes) and
    `StateDB.open_readonly(path)` anywhere else. Both are context managers.

    Raises:
        StateError: the file is not a database, is not latis's, comes from a
            newer latis, or (read-only) is missing or not yet migrated.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.readonly = False
        self._clock = clock
        self._lock = threading.RLock()
        #: Inside `batch`: writes are savepoints of its transaction.
        self._batching = False
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_private(self.path)
        self._conn: sqlite3.Connection | None = open_connection(str(self.path), uri=False)
        try:
            prepare(self._db(), self.path)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open_readonly(cls, path: str | Path, *, clock: Callable[[], float] = time.time) -> StateDB:
        """Open an existing state file for reading only (a CLI beside the daemon).

        Raises:
            StateError: there is no file at `path` (nothing is created), or its
                schema is not the one this code knows.
        """
        path = Path(path)
        if not path.is_file():
            raise StateError(
                f"no latis state at {path} (the daemon creates it when it first starts)"
            )
        self = cls.__new__(cls)
        self.path = path
        self.readonly = True
        self._clock = clock
        self._lock = threading.RLock()
        self._batching = False
        uri = f"file:{quote(str(path.absolute()))}?mode=ro"
        self._conn = open_connection(uri, uri=True)
        try:
            require_current(self._db(), path)
        except BaseException:
            self.close()
            raise
        return self

    # -- opening, closing ---------------------------------------------------

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def now(self) -> float:
        """The state's clock (unix seconds): what its timestamps are."""
        return self._clock()

    def __repr__(self) -> str:
        how = "read-only" if self.readonly else "read-write"
        return f"<StateDB {str(self.path)!r} {how}{'' if self._conn else ' closed'}>"

    @property
    def schema_version(self) -> int:
        """The file's schema version."""
        with self._lock:
            return user_version(self._db(), self.path)

    def check(self) -> str:
        """SQLite's `integrity_check`, then a foreign key check: "ok" when both pass."""
        with self._lock:
            db = self._db()
            rows = [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
            result = "\n".join(rows)
            if result != "ok":
                return result
            bad = db.execute("PRAGMA foreign_key_check").fetchall()
            if bad:
                return "\n".join(
                    f"foreign key: row {rowid} of {table} names a missing {parent}"
                    for table, rowid, parent, _ in bad
                )
            return "ok"

    # -- transactions -------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"the state at {self.path} is closed")
        return self._conn

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make every write inside one transaction (the chunk writer's hop: group commit).

        Each write inside still stands alone: it runs in a savepoint, so one that
        fails undoes only its own changes. If the commit itself fails, nothing
        of the batch is stored and the error is raised.
        """
        with self._lock:
            if self.readonly:
                raise StateError(f"the state at {self.path} was opened read-only")
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            self._batching = True
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            finally:
                self._batching = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: take the write lock up front);
        inside `batch`, a savepoint of the batch's transaction."""
        with self._lock:
            if self.readonly:
                raise StateError(f"the state at {self.path} was opened read-only")
            db = self._db()
            if self._batching:
                db.execute("SAVEPOINT write")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK TO write")
                    raise
                finally:
                    db.execute("RELEASE write")
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Several reads from one snapshot."""
        with self._lock:
            db = self._db()
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    def _live_unit_id(self, db: sqlite3.Connection, name: str) -> int | None:
        row = db.execute(
            "SELECT id FROM units WHERE name = ? AND destroyed_at IS NULL", (name,)
        ).fetchone()
        return None if row is None else int(row[0])

    def _need_unit(self, db: sqlite3.Connection, name: str) -> int:
        unit_id = self._live_unit_id(db, name)
        if unit_id is None:
            raise StateError(f"unit {name!r} is not in the state (upsert_unit adds it)")
        return unit_id

    # -- units --------------------------------------------------------------

    def upsert_unit(self, name: str, provisioner: str | None, config: Mapping[str, Any]) -> UnitRow:
        """Add the unit, or update the live unit of that name; return its row."""
        with self._lock:  # (reentrant: the write and its read, with nothing between)
            self.upsert_units([(name, provisioner, config)])
            row = self.get_unit(name)
        assert row is not None
        return row

    def upsert_units(self, units: Sequence[tuple[str, str | None, Mapping[str, Any]]]) -> None:
        """Add each (name, provisioner, config), or update the live unit of that
        name, in one transaction; a live unit whose row says the same is not
        written."""
        if not units:
            return
        import orjson

        now = self._clock()
        names = orjson.dumps([name for name, _, _ in units]).decode()
        with self._write() as db:
            # The rows of these names only (the live-name index): one unit, as a
            # scaling group adds its members one by one, reads one row, not all.
            live = {name: (unit_id, provisioner, config) for unit_id, name, provisioner, config
                    in db.execute("SELECT id, name, provisioner, config FROM units"
                                  " WHERE destroyed_at IS NULL"
                                  " AND name IN (SELECT value FROM json_each(?))", (names,))}
            inserts = []
            updates = []
            for name, provisioner, config in units:
                encoded = _dumps(config)
                found = live.get(name)
                if found is None:
                    inserts.append((name, provisioner, encoded, now, now))
                elif found[1:] != (provisioner, encoded):
                    updates.append((provisioner, encoded, now, found[0]))
            db.executemany(
                "INSERT INTO units (name, provisioner, config, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)", inserts)
            db.executemany(
                "UPDATE units SET provisioner = ?, config = ?, updated_at = ? WHERE id = ?",
                updates)

    def get_unit(self, name: str) -> UnitRow | None:
        """The live unit of that name, or None."""
        with self._lock:
            row = (
                self._db()
                .execute(f"{UNIT_SELECT} WHERE name = ? AND destroyed_at IS NULL", (name,))
                .fetchone()
            )
        return None if row is None else unit_row(row)

    def list_units(self, include_destroyed: bool = False) -> list[UnitRow]:
        """The live units by name (and destroyed ones too, oldest first, if asked)."""
        where = "" if include_destroyed else " WHERE destroyed_at IS NULL"
        with self._lock:
            rows = self._db().execute(f"{UNIT_SELECT}{where} ORDER BY name, id").fetchall()
        return [unit_row(row) for row in rows]

    def unit_overview(self) -> list[tuple[int, str, str | None, str | None, str | None,
                                          str | None, float | None]]:
        """(id, name, provisioner, connection state, transport, error, last seen) of
        every live unit by name, the connection's fields None when it has none:
        `latis status`'s table in one query of plain tuples (10,000 units: a row
        object each, and its state's enum, took longer than the query)."""
        with self._lock:
            return self._db().execute(
                "SELECT u.id, u.name, u.provisioner, c.state, c.transport, c.error,"
                " c.last_seen FROM units u LEFT JOIN connections c ON c.unit = u.id"
                " WHERE u.destroyed_at IS NULL ORDER BY u.name, u.id"
            ).fetchall()

    def mark_unit_destroyed(self, name: str) -> bool:
        """End the live unit of that name; False if there is none.

        Its resources and connection are forgotten; its sessions are closed
        (their prompts still running end as cancelled) and kept for history.
        A unit added later under the same name starts clean.
        """
        now = self._clock()
        with self._write() as db:
            unit_id = self._live_unit_id(db, name)
            if unit_id is None:
                return False
            db.execute("DELETE FROM resources WHERE unit = ?", (unit_id,))
            db.execute("DELETE FROM connections WHERE unit = ?", (unit_id,))
            _retire(db, "WHERE unit = ?", (unit_id,), name, "destroyed", now)
            sessions = [
                str(row[0])
                for row in db.execute(
                    "SELECT id FROM sessions WHERE unit = ? AND state != 'closed'", (unit_id,)
                )
            ]
            for session in sessions:
                _close_session(db, session, now)
            db.execute(
                "UPDATE units SET destroyed_at = ?, updated_at = ? WHERE id = ?",
                (now, now, unit_id),
            )
        return True

    # -- enrollments --------------------------------------------------------

    def enroll(
        self, unit: str, *, ttl: float | None = None, approval: bool = False, rotate: bool = False
    ) -> Enrollment:
        """Issue a new enrollment to the live unit.

        Args:
            unit: the unit's name.
            ttl: seconds within which it must be used a first time (None: no limit).
            approval: its first use waits for a person's `accept_enrollment`.
            rotate: keep the unit's current enrollment working until the new
                one is first used (a new secret without downtime); otherwise
                the older ones are retired at once.

        Raises:
            StateError: there is no live unit of that name.
        """
        from latis_core._wire.auth import Enrollment

        enrollment = Enrollment.new()
        now = self._clock()
        with self._write() as db:
            unit_id = self._need_unit(db, unit)
            if not rotate:
                _retire(db, "WHERE unit = ?", (unit_id,), unit, "replaced", now)
            db.execute(
                "INSERT INTO enrollments (id, unit, secret, created_at, state, expires_at,"
                " approval) VALUES (?, ?, ?, ?, 'new', ?, ?)",
                (enrollment.id, unit_id, enrollment.secret.decode(), now,
                 None if ttl is None else now + ttl, int(approval and not rotate)),
            )
        return enrollment

    def find_enrollment(self, id: str) -> tuple[str, Enrollment] | None:
        """The live unit enrolled as `id` and its enrollment, or None."""
        found = self.enrollment(id)
        return None if found is None or found.retired else (found.unit, found.enrollment)

    def enrollment(self, id: str) -> EnrollmentRow | None:
        """Enrollment `id` (live, or retired for good), or None if it never was."""
        with self._lock:
            db = self._db()
            row = db.execute(
                "SELECT u.name, e.secret, e.state, e.expires_at, e.seen_from, e.seen_at"
                " FROM enrollments e JOIN units u ON u.id = e.unit"
                " WHERE e.id = ? AND u.destroyed_at IS NULL",
                (id,),
            ).fetchone()
            if row is None:
                gone = db.execute(
                    "SELECT unit_name, why FROM retired_enrollments WHERE id = ?", (id,)
                ).fetchone()
                if gone is None:
                    return None
                return EnrollmentRow(str(gone[0]), _enrollment(id, b""), "retired", None, None,
                                     None, retired=str(gone[1]))
        return EnrollmentRow(str(row[0]), _enrollment(id, str(row[1]).encode()), str(row[2]),
                             row[3], row[4], row[5])

    def use_enrollment(self, id: str, address: str) -> str:
        """Record a proven use of enrollment `id` from `address`; return its state after.

        A `new` one becomes `active` (retiring the unit's other enrollments: a
        rotation is complete), or `pending` when it waits for approval.
        """
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "SELECT e.state, e.approval, e.unit, u.name FROM enrollments e"
                " JOIN units u ON u.id = e.unit WHERE e.id = ?", (id,)
            ).fetchone()
            if row is None:
                return "retired"
            state, approval, unit_id, name = str(row[0]), bool(row[1]), int(row[2]), str(row[3])
            if state == "new":
                state = "pending" if approval else "active"
                db.execute("UPDATE enrollments SET state = ?, seen_from = ?, seen_at = ?"
                           " WHERE id = ?", (state, address, now, id))
                if state == "active":
                    _retire(db, "WHERE unit = ? AND id != ?", (unit_id, id), name, "rotated",
                            now)
            db.execute("UPDATE enrollments SET last_used = ? WHERE id = ?", (now, id))
        return state

    def pending_enrollments(self) -> list[EnrollmentRow]:
        """The enrollments whose unit waits for a person to accept it."""
        with self._lock:
            rows = self._db().execute(
                "SELECT u.name, e.id, e.state, e.expires_at, e.seen_from, e.seen_at"
                " FROM enrollments e JOIN units u ON u.id = e.unit"
                " WHERE e.state = 'pending' AND u.destroyed_at IS NULL ORDER BY e.seen_at"
            ).fetchall()
        return [EnrollmentRow(str(r[0]), _enrollment(str(r[1]), b""), str(r[2]), r[3], r[4],
                              r[5]) for r in rows]

    def accept_enrollment(self, unit: str) -> str | None:
        """Let the live unit's pending enrollment in; its id, or None if none was pending."""
        with self._write() as db:
            unit_id = self._need_unit(db, unit)
            row = db.execute("SELECT id FROM enrollments WHERE unit = ? AND state = 'pending'",
                             (unit_id,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE enrollments SET state = 'active' WHERE id = ?", (row[0],))
            _retire(db, "WHERE unit = ? AND id != ?", (unit_id, row[0]), unit, "rotated",
                    self._clock())
        return str(row[0])

    def revoke_enrollments(self, unit: str, why: str = "revoked") -> list[str]:
        """Retire every enrollment of the live unit for good (revoke, reject); their ids."""
        with self._write() as db:
            unit_id = self._need_unit(db, unit)
            return _retire(db, "WHERE unit = ?", (unit_id,), unit, why, self._clock())

    def enrollment_of(self, unit: str) -> str | None:
        """The id of the live unit's enrollment (its newest), or None."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT e.id FROM enrollments e JOIN units u ON u.id = e.unit"
                    " WHERE u.name = ? AND u.destroyed_at IS NULL ORDER BY e.created_at DESC",
                    (unit,),
                )
                .fetchone()
            )
        return None if row is None else str(row[0])

    # -- resources ----------------------------------------------------------

    def resources(self, unit: str) -> UnitResources:
        """Where the live unit's provisioner records what it makes (`Resources`).

        Raises:
            StateError: there is no live unit of that name.
        """
        with self._lock:
            unit_id = self._need_unit(self._db(), unit)
        return UnitResources(self, unit, unit_id)

    def list_resources(self, unit: str) -> dict[str, str]:
        """Everything recorded for the live unit (empty if there is no such unit)."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT r.kind, r.value FROM resources r JOIN units u ON u.id = r.unit"
                    " WHERE u.name = ? AND u.destroyed_at IS NULL ORDER BY r.kind",
                    (unit,),
                )
                .fetchall()
            )
        return {str(kind): str(value) for kind, value in rows}

    # -- connections --------------------------------------------------------

    def set_connection(
        self,
        unit: str,
        state: ConnectionState | str,
        transport: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record how the live unit is connected now.

        `since` moves only when the state changes; `last_seen` always.
        `transport` None keeps the one recorded; `error` is replaced (None clears it).

        Raises:
            StateError: there is no live unit of that name.
            ValueError: `state` is not a `ConnectionState`.
        """
        state = ConnectionState(state)
        now = self._clock()
        with self._write() as db:
            unit_id = self._need_unit(db, unit)
            db.execute(
                "INSERT INTO connections (unit, state, transport, since, last_seen, error)"
                " VALUES (?1, ?2, coalesce(?3, ''), ?4, ?4, ?5)"
                " ON CONFLICT (unit) DO UPDATE SET"
                "  since = CASE WHEN state = excluded.state THEN since ELSE excluded.since END,"
                "  state = excluded.state,"
                "  transport = coalesce(?3, transport),"
                "  last_seen = excluded.last_seen,"
                "  error = excluded.error",
                (unit_id, state.value, transport, now, error),
            )

    def get_connection(self, unit: str) -> ConnectionRow | None:
        """How the live unit is connected, or None if nothing was recorded."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT u.name, c.state, c.transport, c.since, c.last_seen, c.error"
                    " FROM connections c JOIN units u ON u.id = c.unit"
                    " WHERE u.name = ? AND u.destroyed_at IS NULL",
                    (unit,),
                )
                .fetchone()
            )
        if row is None:
            return None
        name, state, transport, since, last_seen, error = row
        return ConnectionRow(name, ConnectionState(state), transport, since, last_seen, error)

    # -- sessions -----------------------------------------------------------

    def add_session(
        self, id: str, unit: str, state: SessionState | str = SessionState.IDLE
    ) -> SessionRow:
        """Record a new session of the live unit.

        Raises:
            StateError: no live unit of that name, or the session id is taken.
        """
        state = SessionState(state)
        now = self._clock()
        with self._write() as db:
            unit_id = self._need_unit(db, unit)
            taken = db.execute("SELECT unit FROM sessions WHERE id = ?", (id,)).fetchone()
            if taken is not None:
                raise StateError(f"session {id!r} is already recorded")
            closed_at = now if state is SessionState.CLOSED else None
            db.execute(
                "INSERT INTO sessions (id, unit, state, created_at, closed_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (id, unit_id, state.value, now, closed_at),
            )
        return SessionRow(id, unit, state, now, closed_at, unit_id)

    def set_session_state(self, id: str, state: SessionState | str) -> None:
        """Record the session's state. `closed` is `close_session`; a closed
        session stays closed (later states are ignored).

        Raises:
            StateError: no such session.
        """
        state = SessionState(state)
        if state is SessionState.CLOSED:
            self.close_session(id)
            return
        with self._write() as db:
            _need_session(db, id)
            db.execute(
                "UPDATE sessions SET state = ? WHERE id = ? AND state != 'closed'",
                (state.value, id),
            )

    def close_session(self, id: str) -> None:
        """Close the session (again: nothing); its running prompts end as cancelled.

        Raises:
            StateError: no such session.
        """
        now = self._clock()
        with self._write() as db:
            _need_session(db, id)
            _close_session(db, id, now)

    def get_session(self, id: str) -> SessionRow | None:
        """The session, or None."""
        with self._lock:
            row = self._db().execute(f"{SESSION_SELECT} WHERE s.id = ?", (id,)).fetchone()
        return None if row is None else session_row(row)

    def list_sessions(
        self, unit: str | None = None, include_closed: bool = False
    ) -> list[SessionRow]:
        """Sessions, oldest first: of the live unit `unit`, or of every unit."""
        where: list[str] = []
        args: list[Any] = []
        if unit is not None:
            where.append("u.name = ? AND u.destroyed_at IS NULL")
            args.append(unit)
        if not include_closed:
            where.append("s.state != 'closed'")
        sql = SESSION_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db().execute(sql + " ORDER BY s.created_at, s.rowid", args).fetchall()
        return [session_row(row) for row in rows]

    def session_states(self) -> list[tuple[int, str, str]]:
        """(unit id, session id, state) of every open session, oldest first, as plain
        tuples (`latis status`)."""
        with self._lock:
            return self._db().execute(
                "SELECT unit, id, state FROM sessions WHERE state != 'closed'"
                " ORDER BY created_at, rowid"
            ).fetchall()

    # -- writes behind (the controller's hot path) -----------------------------

    def write_behind(self, writes: Sequence[Behind]) -> list[str]:
        """Apply writes the controller made without waiting, in order, inside
        the writer's batch (`batch`). Each is one statement with no checks of
        its own (the controller checked in memory before it wrote); a run of
        writes of one kind is one statement. A write the schema refuses (a row
        already there, a parent missing) is skipped and described in the list
        returned; any other error (the disk) is raised, and the batch is tried
        again whole.
        """
        db = self._db()
        problems: list[str] = []

        def apply(kind: str, run: list[tuple[Any, ...]]) -> int:
            if kind == "close":
                _close_sessions(db, run)
                return len(run)
            return db.execute(_BEHIND[kind], (_dumps(run),)).rowcount

        for kind, group in itertools.groupby(writes, key=operator.itemgetter(0)):
            run = [values for _, values in group]
            try:
                done = apply(kind, run)
            except sqlite3.IntegrityError:
                # One of them is refused: each on its own, to say which (the
                # ones already applied apply again as nothing: they are
                # idempotent, or ignored as there already).
                for values in run:
                    try:
                        apply(kind, [values])
                    except sqlite3.IntegrityError as exc:
                        problems.append(f"{kind} {values[0]!r}: {exc}")
                continue
            if kind == "session" and done < len(run):
                ids = [values[0] for values in run]
                marks = ",".join("?" * len(ids))
                there = {row[0] for row in db.execute(
                    f"SELECT id FROM sessions WHERE id IN ({marks})", ids)}  # noqa: S608
                problems += [f"session {values[0]!r}: unit {values[3]!r} is not in the state"
                             for values in run if values[0] not in there]
        return problems

    def reserve_prompt_ids(self, n: int) -> range:
        """Take the next `n` prompt ids for this writer (a controller numbers its
        prompts in memory). Ids another writer takes afterwards, or a prompt
        added by `add_prompt`, come after them."""
        with self._write() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'prompts'").fetchone()
            if row is None:
                last = db.execute("SELECT coalesce(max(id), 0) FROM prompts").fetchone()[0]
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('prompts', ?)",
                           (last + n,))
            else:
                last = row[0]
                db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'prompts'",
                           (last + n,))
        return range(last + 1, last + n + 1)

    def release_prompt_ids(self, unused: range) -> None:
        """Give back ids of `reserve_prompt_ids` not used, if nobody took more since
        (so that a controller's next life numbers on without a gap)."""
        if not unused:
            return
        with self._write() as db:
            db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'prompts' AND seq = ?",
                       (unused.start - 1, unused.stop - 1))

    # -- prompts ------------------------------------------------------------

    def add_prompt(self, session: str, text: str, request_id: RequestId) -> int:
        """Record a prompt sent to the session (running); return its id.

        Raises:
            StateError: no such session, or it is closed.
        """
        now = self._clock()
        with self._write() as db:
            if _need_session(db, session) == SessionState.CLOSED:
                raise StateError(f"session {session!r} is closed")
            cursor = db.execute(
                "INSERT INTO prompts (session, request_id, text, started_at) VALUES (?, ?, ?, ?)",
                (session, _dumps(request_id), text, now),
            )
            return int(cursor.lastrowid or 0)

    def end_prompt(
        self,
        prompt_id: int,
        state: PromptState | str,
        chunks: int | None,
        error: str | None = None,
    ) -> bool:
        """Record how a running prompt ended. The first end counts: False if it
        had already ended.

        Raises:
            StateError: no such prompt.
            ValueError: `state` is not an end (`running`, or not a `PromptState`).
        """
        state = PromptState(state)
        if state is PromptState.RUNNING:
            raise ValueError("end_prompt needs the state a prompt ended in, not 'running'")
        now = self._clock()
        with self._write() as db:
            _need_prompt(db, prompt_id)
            cursor = db.execute(
                "UPDATE prompts SET state = ?, ended_at = ?, chunks = ?, error = ?"
                " WHERE id = ? AND state = 'running'",
                (state.value, now, chunks, error, prompt_id),
            )
            return cursor.rowcount == 1

    def get_prompt(self, id: int) -> PromptRow | None:
        """The prompt, or None."""
        with self._lock:
            row = self._db().execute(f"{PROMPT_SELECT} WHERE id = ?", (id,)).fetchone()
        return None if row is None else prompt_row(row)

    def prompts(self, session: str) -> list[PromptRow]:
        """The session's prompts, in the order they were sent."""
        with self._lock:
            rows = (
                self._db()
                .execute(f"{PROMPT_SELECT} WHERE session = ? ORDER BY id", (session,))
                .fetchall()
            )
        return [prompt_row(row) for row in rows]

    def running_prompts(self) -> list[PromptRow]:
        """Every prompt still running, oldest first (to resume after a restart)."""
        with self._lock:
            rows = (
                self._db()
                .execute(f"{PROMPT_SELECT} WHERE state = 'running' ORDER BY id")
                .fetchall()
            )
        return [prompt_row(row) for row in rows]

    def last_prompts(self) -> dict[str, PromptRow]:
        """Each open session's latest prompt, by session (one query, for `status`)."""
        with self._lock:
            rows = self._db().execute(
                f"{PROMPT_SELECT} WHERE id IN (SELECT (SELECT max(p.id) FROM prompts p"
                " WHERE p.session = s.id) FROM sessions s WHERE s.state != 'closed')"
            ).fetchall()
        return {row.session: row for row in map(prompt_row, rows)}

    def last_prompt(self, session: str) -> PromptRow | None:
        """The session's latest prompt, or None."""
        with self._lock:
            row = (
                self._db()
                .execute(f"{PROMPT_SELECT} WHERE session = ? ORDER BY id DESC LIMIT 1", (session,))
                .fetchone()
            )
        return None if row is None else prompt_row(row)

    # -- chunks -------------------------------------------------------------

    def add_chunks(self, prompt_id: int, rows: Sequence[ChunkIn]) -> None:
        """Record chunks of a prompt's reply, all in one transaction.

        `rows` are (seq, text, kind, data). A `seq` already recorded keeps its
        first chunk (a replayed chunk is not an error).

        Raises:
            StateError: no such prompt.
        """
        if not rows:
            return
        import orjson

        dumps = orjson.dumps
        values = [
            (prompt_id, seq, text, kind, None if data is None else dumps(data).decode())
            for seq, text, kind, data in rows
        ]
        with self._write() as db:
            _need_prompt(db, prompt_id)
            db.executemany(
                "INSERT INTO chunks (prompt, seq, text, kind, data) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (prompt, seq) DO NOTHING",
                values,
            )

    def add_chunk_batches(self, batches: Sequence[tuple[int, Sequence[ResponseChunk]]]) -> None:
        """Record chunks of several prompts' replies, all in one transaction.

        `batches` are (prompt id, chunks): the chunks as they came (the chunk
        writer holds them so).
        Chunks of a prompt that no longer exists are dropped (its session was
        forgotten meanwhile); a `seq` already recorded keeps its first copy.

        The rows go to SQLite as one JSON array, in one statement: SQLite then
        inserts them all in one call, without handing Python's GIL back and
        forth once per row (a busy event loop made a worker thread wait for
        it at every row).
        """
        import orjson

        dumps = orjson.dumps
        values = [
            (prompt_id, c.seq, c.text, c.kind, None if c.data is None else dumps(c.data).decode())
            for prompt_id, chunks in batches
            for c in chunks
        ]
        if not values:
            return
        with self._write() as db:
            db.execute(_INSERT_CHUNKS, (dumps(values),))

    def chunks(self, prompt_id: int, after: int = -1) -> list[ChunkRow]:
        """The prompt's chunks with `seq` > `after`, in order."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT prompt, seq, text, kind, data FROM chunks"
                    " WHERE prompt = ? AND seq > ? ORDER BY seq",
                    (prompt_id, after),
                )
                .fetchall()
            )
        return [chunk_row(row) for row in rows]

    def last_seq(self, prompt_id: int) -> int:
        """The highest `seq` recorded for the prompt, or -1 if none."""
        with self._lock:
            row = (
                self._db()
                .execute("SELECT max(seq) FROM chunks WHERE prompt = ?", (prompt_id,))
                .fetchone()
            )
        return -1 if row[0] is None else int(row[0])

    # -- inputs -------------------------------------------------------------

    def add_input(
        self,
        prompt_id: int,
        number: int,
        question: str,
        options: Sequence[str] = (),
        kind: str | None = None,
    ) -> None:
        """Record a question the agent asked. Asked again (after a reattach),
        the first record stays, with its answer if it has one.

        Raises:
            StateError: no such prompt.
        """
        now = self._clock()
        with self._write() as db:
            _need_prompt(db, prompt_id)
            db.execute(
                "INSERT INTO inputs (prompt, number, question, options, kind, asked_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (prompt, number) DO NOTHING",
                (prompt_id, number, question, _dumps(list(options)), kind, now),
            )

    def answer_input(self, prompt_id: int, number: int, text: str) -> bool:
        """Record the answer to a question. The first answer counts: False if
        it was already answered.

        Raises:
            StateError: no such question.
        """
        now = self._clock()
        with self._write() as db:
            cursor = db.execute(
                "UPDATE inputs SET answer = ?, answered_at = ?"
                " WHERE prompt = ? AND number = ? AND answer IS NULL",
                (text, now, prompt_id, number),
            )
            if cursor.rowcount == 1:
                return True
            asked = db.execute(
                "SELECT 1 FROM inputs WHERE prompt = ? AND number = ?", (prompt_id, number)
            ).fetchone()
            if asked is None:
                raise StateError(f"prompt {prompt_id} has no question {number}")
            return False

    def pending_inputs(self, prompt_id: int) -> list[InputRow]:
        """The prompt's unanswered questions, in order (none once it ended)."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"{INPUT_SELECT} WHERE i.prompt = ? AND i.answer IS NULL"
                    " AND (SELECT state FROM prompts WHERE id = i.prompt) = 'running'"
                    " ORDER BY i.number",
                    (prompt_id,),
                )
                .fetchall()
            )
        return [input_row(row) for row in rows]

    # -- transcript ---------------------------------------------------------

    def transcript(self, session_id: str) -> list[TranscriptEntry]:
        """The session's prompts in order, each with its chunks and questions
        (read from one snapshot).

        Raises:
            StateError: no such session.
        """
        with self._read() as db:
            _need_session(db, session_id)
            prompts = [
                prompt_row(row)
                for row in db.execute(
                    f"{PROMPT_SELECT} WHERE session = ? ORDER BY id", (session_id,)
                )
            ]
            chunks: dict[int, list[ChunkRow]] = {prompt.id: [] for prompt in prompts}
            for row in db.execute(
                "SELECT c.prompt, c.seq, c.text, c.kind, c.data FROM prompts p"
                " JOIN chunks c ON c.prompt = p.id WHERE p.session = ?"
                " ORDER BY c.prompt, c.seq",
                (session_id,),
            ):
                chunks[row[0]].append(chunk_row(row))
            inputs: dict[int, list[InputRow]] = {prompt.id: [] for prompt in prompts}
            for row in db.execute(
                f"{INPUT_SELECT} JOIN prompts p ON p.id = i.prompt WHERE p.session = ?"
                " ORDER BY i.prompt, i.number",
                (session_id,),
            ):
                inputs[row[0]].append(input_row(row))
        return [TranscriptEntry(p, chunks[p.id], inputs[p.id]) for p in prompts]


    # -- coordinations -----------------------------------------------------

    def add_coordination(
        self, id: str, task: str, strategy: str, settings: Mapping[str, Any], units: Sequence[str]
    ) -> None:
        """Record a coordination that starts now (running)."""
        with self._write() as db:
            db.execute(
                "INSERT INTO coordinations (id, task, strategy, settings, units, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (id, task, strategy, _dumps(dict(settings)), _dumps(list(units)), self._clock()),
            )

    def add_coordination_events(
        self, id: str, first: int, events: Sequence[Mapping[str, Any]]
    ) -> None:
        """Record events of a coordination, numbered from `first`, in one statement
        (one JSON array, as chunks are: not a row at a time, each handing the GIL
        back to a busy event loop)."""
        rows = [_dumps(dict(e)) for e in events]
        if not rows:
            return
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO coordination_events (coordination, seq, event)"
                " SELECT ?, ? + key, value FROM json_each(?)",
                (id, first, _dumps(rows)),
            )

    def tag_sessions(self, sessions: Sequence[str], coordination: str) -> None:
        """Record that `sessions` were opened by coordination `coordination` (for
        usage by coordination), in one statement."""
        if not sessions:
            return
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO session_coordinations (session, coordination)"
                " SELECT value, ? FROM json_each(?)",
                (coordination, _dumps(list(sessions))),
            )

    def end_coordination(
        self, id: str, outcome: str, final: str | None, error: str | None
    ) -> None:
        """Record how a coordination ended (`complete`, `error` or `cancelled`)."""
        with self._write() as db:
            db.execute(
                "UPDATE coordinations SET state = ?, final = ?, error = ?, ended_at = ?"
                " WHERE id = ? AND state = 'running'",
                (outcome, final, error, self._clock(), id),
            )

    def get_coordination(self, id: str) -> CoordinationRow | None:
        """One coordination with its events, or None."""
        with self._read() as db:
            row = db.execute(f"{COORDINATION_SELECT} WHERE id = ?", (id,)).fetchone()
            if row is None:
                return None
            events = [
                json_column(event)
                for (event,) in db.execute(
                    "SELECT event FROM coordination_events WHERE coordination = ? ORDER BY seq",
                    (id,),
                )
            ]
        return coordination_row(row, events)

    def list_coordinations(self, limit: int = 50) -> list[CoordinationRow]:
        """The latest coordinations, newest first (without their events)."""
        with self._lock:
            rows = self._db().execute(
                f"{COORDINATION_SELECT} ORDER BY started_at DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [coordination_row(row, []) for row in rows]


class UnitResources:
    """`Resources` (latis_core._plugins.provision) for one unit, kept in the state file.

    Bound to one life of the unit: once it is destroyed, `get` finds nothing
    and `set` raises `StateError`, even if a unit of the same name was added since.
    """

    def __init__(self, state: StateDB, unit: str, unit_id: int) -> None:
        self.state = state
        self.unit = unit
        self.unit_id = unit_id

    def get(self, kind: str) -> str | None:
        with self.state._lock:
            row = (
                self.state._db()
                .execute(
                    "SELECT value FROM resources WHERE unit = ? AND kind = ?",
                    (self.unit_id, kind),
                )
                .fetchone()
            )
        return None if row is None else str(row[0])

    def set(self, kind: str, value: str) -> None:
        with self.state._write() as db:
            row = db.execute(
                "SELECT destroyed_at FROM units WHERE id = ?", (self.unit_id,)
            ).fetchone()
            if row is None or row[0] is not None:
                raise StateError(
                    f"unit {self.unit!r} was destroyed; cannot record its {kind} {value!r}"
                )
            db.execute(
                "INSERT INTO resources (unit, kind, value) VALUES (?, ?, ?)"
                " ON CONFLICT (unit, kind) DO UPDATE SET value = excluded.value",
                (self.unit_id, kind, value),
            )

    def clear(self) -> None:
        with self.state._write() as db:
            db.execute("DELETE FROM resources WHERE unit = ?", (self.unit_id,))

    def __repr__(self) -> str:
        return f"<UnitResources {self.unit!r} (unit id {self.unit_id})>"


# -- helpers -----------------------------------------------------------------

#: A write behind: ("session", (id, state, created_at, unit name)),
#: ("prompt", (id, session, request id as JSON, text, started_at)),
#: ("state", (state, session)), ("end", (state, ended_at, chunks, error, prompt id))
#: or ("close", (closed_at, session)).
Behind: TypeAlias = tuple[str, tuple[Any, ...]]

#: Each kind of write behind, for a run of them given as one JSON array
#: (`write_behind`: one statement, one release of the GIL, whatever the run's
#: length). A run holds at most one state per session and one end per prompt
#: (`_coalesced`).
_BEHIND = {
    "session": "INSERT OR IGNORE INTO sessions (id, unit, state, created_at)"
               " SELECT j.value ->> 0, u.id, j.value ->> 1, j.value ->> 2 FROM json_each(?) j"
               " JOIN units u ON u.name = j.value ->> 3 AND u.destroyed_at IS NULL",
    "prompt": "INSERT OR IGNORE INTO prompts (id, session, request_id, text, started_at)"
              " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4"
              " FROM json_each(?) WHERE true",
    "state": "UPDATE sessions SET state = j.value ->> 0 FROM json_each(?) j"
             " WHERE sessions.id = j.value ->> 1 AND sessions.state != 'closed'",
    "end": "UPDATE prompts SET state = j.value ->> 0, ended_at = j.value ->> 1,"
           " chunks = j.value ->> 2, error = j.value ->> 3 FROM json_each(?) j"
           " WHERE prompts.id = j.value ->> 4 AND prompts.state = 'running'",
}


#: Every chunk of a JSON array of [prompt, seq, text, kind, data] (`add_chunk_batches`);
#: `WHERE` keeps only known prompts (and parses: INSERT ... SELECT ... ON CONFLICT).
#: (Flat, not nested by prompt: a json_each per prompt costs more than the rows'
#: tuples save when a batch holds a chunk or two of each of many prompts.)
_INSERT_CHUNKS = (
    "INSERT INTO chunks (prompt, seq, text, kind, data)"
    " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4"
    " FROM json_each(?) WHERE EXISTS (SELECT 1 FROM prompts WHERE id = value ->> 0)"
    " ON CONFLICT (prompt, seq) DO NOTHING"
)


def dumps_id(value: Any) -> str:
    """A request id as the state stores it (JSON)."""
    return _dumps(value)


def _dumps(value: Any) -> str:
    import orjson  # (on first use: see rows.json_column)

    return orjson.dumps(value).decode()


def _enrollment(id: str, secret: bytes) -> Enrollment:
    # Imported when enrollments are used: auth brings hashlib and secrets, which
    # `latis status` (a reader of this store) does without.
    from latis_core._wire.auth import Enrollment

    return Enrollment(id, secret)


def _need_session(db: sqlite3.Connection, id: str) -> SessionState:
    row = db.execute("SELECT state FROM sessions WHERE id = ?", (id,)).fetchone()
    if row is None:
        raise StateError(f"no session {id!r} in the state")
    return SessionState(row[0])


def _need_prompt(db: sqlite3.Connection, id: int) -> None:
    if db.execute("SELECT 1 FROM prompts WHERE id = ?", (id,)).fetchone() is None:
        raise StateError(f"no prompt {id} in the state")


def _close_sessions(db: sqlite3.Connection, closes: Sequence[tuple[Any, ...]]) -> None:
    """Close each (closed_at, session) given (again: nothing); its running prompts
    end as cancelled, with the chunks stored."""
    run = _dumps(closes)
    db.execute(
        "UPDATE prompts SET state = 'cancelled', ended_at = j.value ->> 0,"
        " chunks = (SELECT count(*) FROM chunks WHERE prompt = prompts.id)"
        " FROM json_each(?) j WHERE prompts.session = j.value ->> 1"
        " AND prompts.state = 'running'",
        (run,),
    )
    db.execute(
        "UPDATE sessions SET state = 'closed', closed_at = j.value ->> 0 FROM json_each(?) j"
        " WHERE sessions.id = j.value ->> 1 AND sessions.state != 'closed'",
        (run,),
    )


def _close_session(db: sqlite3.Connection, id: str, now: float) -> None:
    _close_sessions(db, [(now, id)])


#: The name `latis_core` exports `StateDB` under (`latis_core.State` is the session-state enum).
StateStore = StateDB
