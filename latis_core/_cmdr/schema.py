"""The state file's schema, its migrations, and how a file is opened.

`latis_core._cmdr.state` (the store, `StateDB`) opens its SQLite file through
these helpers; nothing here knows units, sessions or prompts beyond the tables.

**Durability.** The file is in WAL mode (`journal_mode=WAL`): readers see the
last committed transaction and never wait for the writer, and the writer never
waits for readers. `synchronous=NORMAL`: a commit is written to the WAL before
it returns, but the WAL is synced to disk only at checkpoints. So a crash of a
process (the daemon killed with SIGKILL, say) loses nothing that was
committed; a power loss or an OS crash may lose the last few commits (the file
is still consistent, just older). A busy timeout (5 s) lets a reader and the
writer wait for each other's brief locks (a checkpoint, a migration) instead
of failing.

**Schema.** `PRAGMA user_version` holds the schema version; `MIGRATIONS[i]`
takes a file from version i to i + 1 (version 1 is the initial schema). At
open (`prepare`), the missing ones are applied in one transaction, after the
file is copied (SQLite's backup API) to `latis.db.bak-v{old}` if it had data.
A file from a newer latis is refused and left untouched.

A new file (and its backups) is created with mode 0600 (`create_private`):
transcripts may hold secrets.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from latis_core._errors import LatisError

__all__ = [
    "BUSY_TIMEOUT",
    "MIGRATIONS",
    "StateError",
    "backup",
    "create_private",
    "has_tables",
    "migrate",
    "open_connection",
    "prepare",
    "require_current",
    "statements",
    "user_version",
]

#: How long a connection waits for another's lock before failing, in seconds.
BUSY_TIMEOUT = 5.0

_SCHEMA_V1 = """
CREATE TABLE units (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    provisioner TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    destroyed_at REAL
);
CREATE UNIQUE INDEX units_live_name ON units (name) WHERE destroyed_at IS NULL;

CREATE TABLE resources (
    unit INTEGER NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (unit, kind)
) WITHOUT ROWID;

CREATE TABLE connections (
    unit INTEGER PRIMARY KEY REFERENCES units (id) ON DELETE CASCADE,
    state TEXT NOT NULL
        CHECK (state IN ('connected', 'disconnected', 'unreachable', 'connecting')),
    transport TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    last_seen REAL NOT NULL,
    error TEXT
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    unit INTEGER NOT NULL REFERENCES units (id),
    state TEXT NOT NULL CHECK (state IN ('idle', 'busy', 'waiting', 'closed')),
    created_at REAL NOT NULL,
    closed_at REAL
);
CREATE INDEX sessions_unit ON sessions (unit);

CREATE TABLE prompts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL REFERENCES sessions (id),
    request_id TEXT NOT NULL,
    text TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'complete', 'cancelled', 'error')),
    started_at REAL NOT NULL,
    ended_at REAL,
    chunks INTEGER,
    error TEXT
);
CREATE INDEX prompts_session ON prompts (session, id);
CREATE INDEX prompts_running ON prompts (id) WHERE state = 'running';

CREATE TABLE chunks (
    prompt INTEGER NOT NULL REFERENCES prompts (id),
    seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    kind TEXT,
    data TEXT,
    PRIMARY KEY (prompt, seq)
) WITHOUT ROWID;

CREATE TABLE inputs (
    prompt INTEGER NOT NULL REFERENCES prompts (id),
    number INTEGER NOT NULL,
    question TEXT NOT NULL,
    options TEXT NOT NULL DEFAULT '[]',
    kind TEXT,
    answer TEXT,
    asked_at REAL NOT NULL,
    answered_at REAL,
    PRIMARY KEY (prompt, number)
) WITHOUT ROWID;
"""

# Version 2: enrollments, the secrets of units that dial in (one live per
# unit; they end with the unit's life, so a name enrolled again starts clean).
_SCHEMA_V2 = """
CREATE TABLE enrollments (
    id TEXT PRIMARY KEY,
    unit INTEGER NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL
) WITHOUT ROWID;
CREATE INDEX enrollments_unit ON enrollments (unit);
"""

# Version 3: the enrollment lifecycle. An enrollment is `new` until its first
# use (which must come before `expires_at`, when set), then `active`, or
# `pending` when a person must accept it first (`approval`). Where and when a
# pending one was first seen is kept for the person to judge. A rotation adds
# a second enrollment to a unit; its first use retires the others. Revoked
# and rejected ids are kept in `retired_enrollments` for good: an id is never
# accepted again, whatever key presents it.
_SCHEMA_V3 = """
ALTER TABLE enrollments ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
    CHECK (state IN ('new', 'pending', 'active'));
ALTER TABLE enrollments ADD COLUMN expires_at REAL;
ALTER TABLE enrollments ADD COLUMN approval INTEGER NOT NULL DEFAULT 0;
ALTER TABLE enrollments ADD COLUMN seen_from TEXT;
ALTER TABLE enrollments ADD COLUMN seen_at REAL;
CREATE TABLE retired_enrollments (
    id TEXT PRIMARY KEY,
    unit_name TEXT NOT NULL,
    why TEXT NOT NULL,
    retired_at REAL NOT NULL
) WITHOUT ROWID;
"""

# Version 4: coordinations (latis_core._cmdr.coordinate): the task, strategy and
# settings, and every event but the chunks (those are in each prompt's
# transcript; `prompt` events name the prompt), in order.
_SCHEMA_V4 = """
CREATE TABLE coordinations (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    strategy TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    units TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL DEFAULT 'running'
        CHECK (state IN ('running', 'complete', 'error', 'cancelled')),
    final TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    ended_at REAL
) WITHOUT ROWID;
CREATE TABLE coordination_events (
    coordination TEXT NOT NULL REFERENCES coordinations (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (coordination, seq)
) WITHOUT ROWID;
"""

# Version 5: the inbox (who answered each question, and the rule when a policy
# did; the question's structured details: tool, path, command, schema) and
# usage (the coordination each session belongs to; usage chunks found fast).
_SCHEMA_V5 = """
ALTER TABLE inputs ADD COLUMN data TEXT;
ALTER TABLE inputs ADD COLUMN answered_by TEXT;
ALTER TABLE inputs ADD COLUMN rule TEXT;
CREATE INDEX inputs_open ON inputs (asked_at) WHERE answer IS NULL;
CREATE TABLE session_coordinations (
    session TEXT PRIMARY KEY REFERENCES sessions (id),
    coordination TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX chunks_usage ON chunks (prompt) WHERE kind = 'usage';
"""

#: `MIGRATIONS[i]` takes the schema from version i to i + 1. Append only: never
#: edit one that has shipped. Each statement ends with `;` at the end of a line.
MIGRATIONS: list[str] = [_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3, _SCHEMA_V4, _SCHEMA_V5]


class StateError(LatisError):
    """The state file cannot be used as asked (the message says which file and why)."""


# -- opening a connection ----------------------------------------------------


def open_connection(target: str, *, uri: bool) -> sqlite3.Connection:
    """A connection to `target` (a file name, or with `uri` a `file:` URI) that
    waits `BUSY_TIMEOUT` for locks and leaves transactions to us."""
    try:
        db = sqlite3.connect(
            target,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,  # we BEGIN and COMMIT ourselves
            check_same_thread=False,  # worker threads, one call at a time (and a lock)
            uri=uri,
        )
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
    except sqlite3.Error as exc:
        raise StateError(f"cannot open the latis state {target}: {exc}") from exc
    return db


def create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (transcripts are
    private; SQLite gives the -wal and -shm files the same mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StateError(f"cannot create the latis state {path}: {exc}") from exc
    os.close(fd)


def statements(script: str) -> Iterator[str]:
    """The statements of a migration script, one at a time."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise ValueError(f"a migration ends with an incomplete statement: {buffer.strip()!r}")


# -- the schema version ------------------------------------------------------


def user_version(db: sqlite3.Connection, path: Path) -> int:
    """The file's schema version (`PRAGMA user_version`); `path` is for messages."""
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is not a latis state database: {exc}") from exc


def has_tables(db: sqlite3.Connection) -> bool:
    """Whether the file has any table (of ours or anyone's)."""
    row = db.execute("SELECT count(*) FROM sqlite_schema").fetchone()
    return bool(row[0])


def prepare(db: sqlite3.Connection, path: Path) -> None:
    """Make the file at `path`, open as `db`, ready to write: refuse what is not
    ours or is newer, set WAL mode, and migrate it (after a backup) if it is older.
    """
    version = user_version(db, path)
    known = len(MIGRATIONS)
    if version > known:
        raise StateError(
            f"{path} has schema version {version}, from a newer latis; this "
            f"latis knows up to version {known} and will not touch it"
        )
    if version == 0 and has_tables(db):
        raise StateError(
            f"{path} is an SQLite database, but not latis state "
            "(it has tables and no schema version); not touching it"
        )
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StateError(f"{path}: cannot use WAL mode here (got {mode!r})")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA foreign_keys = ON")
    if version < known:
        if version > 0:
            backup(db, path.with_name(f"{path.name}.bak-v{version}"))
        migrate(db, path, known)


def require_current(db: sqlite3.Connection, path: Path) -> None:
    """Refuse a file, opened read-only, whose schema is not the one this code knows."""
    version = user_version(db, path)
    known = len(MIGRATIONS)
    if version != known:
        newer = "a newer latis" if version > known else "an older latis"
        raise StateError(
            f"{path} has schema version {version}, from {newer}; this latis "
            f"reads version {known}"
            + ("" if version > known else " (start the daemon to migrate it)")
        )


def backup(db: sqlite3.Connection, target: Path) -> None:
    """Copy the database to `target` (mode 0600), whole or not at all."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    create_private(partial)
    copy = sqlite3.connect(partial)
    try:
        db.backup(copy)
    finally:
        copy.close()
    os.replace(partial, target)


def migrate(db: sqlite3.Connection, path: Path, target: int) -> None:
    """Apply the migrations up to version `target`, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        # Again under the write lock: another process may have migrated it.
        version = user_version(db, path)
        if version > target:
            raise StateError(
                f"{path} was migrated to schema version {version} by a newer "
                f"latis while we opened it; this latis knows up to version {target}"
            )
        for script in MIGRATIONS[version:target]:
            for statement in statements(script):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {int(target)}")
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StateError(
                f"{path}: migrating the schema to version {target} failed, "
                f"nothing was changed: {exc}"
            ) from exc
        raise
