"""What an SQLite database holds for flowkit, and opening one ready for use.

The schema has a version, kept in the ``flowkit_schema`` table (one row per
applied migration). Opening a database for writing applies the migrations it
lacks, in one transaction; opening it read-only changes nothing and only
checks that it holds flowkit data this code can read.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ..._errors import StoreError
from ..._redact import redact_url
from ._rows import timestamp

__all__ = [
    "MEMORY",
    "SCHEMA_VERSION",
    "SYNCHRONOUS_LEVELS",
    "Database",
    "SynchronousLevel",
    "connect",
    "rollback",
    "schema_version",
]

SynchronousLevel = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
SYNCHRONOUS_LEVELS: tuple[SynchronousLevel, ...] = ("OFF", "NORMAL", "FULL", "EXTRA")

#: The path of a private in-memory database.
MEMORY = ":memory:"

#: The statements that bring the schema from version ``n`` to ``n + 1`` are
#: ``_MIGRATIONS[n]``. Released migrations are never edited, only appended to.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE flowkit_inbox (
            consumer TEXT NOT NULL,
            message_id TEXT NOT NULL,
            added_at TEXT NOT NULL,
            PRIMARY KEY (consumer, message_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE flowkit_dead_letters (
            id TEXT NOT NULL PRIMARY KEY,
            consumer TEXT NOT NULL,
            topic TEXT NOT NULL,
            body BLOB NOT NULL,
            headers TEXT NOT NULL,
            error_type TEXT NOT NULL,
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            failed_at TEXT NOT NULL,
            message_id TEXT
        )""",
        "CREATE INDEX flowkit_dead_letters_failed_at ON flowkit_dead_letters (failed_at)",
        "CREATE INDEX flowkit_dead_letters_consumer ON flowkit_dead_letters (consumer, failed_at)",
        "CREATE INDEX flowkit_dead_letters_topic ON flowkit_dead_letters (topic, failed_at)",
        """CREATE TABLE flowkit_workflows (
            id TEXT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX flowkit_workflows_status ON flowkit_workflows (status, created_at)",
        "CREATE INDEX flowkit_workflows_name ON flowkit_workflows (name, created_at)",
        "CREATE INDEX flowkit_workflows_created_at ON flowkit_workflows (created_at)",
        "CREATE INDEX flowkit_inbox_added_at ON flowkit_inbox (added_at)",
    ),
    (
        # Inbox entries become claims: ``claimed_until`` is when the claim's
        # lease runs out, NULL once the message is done. Every entry written
        # before is a handled message, so NULL is right for them all.
        # ``added_at`` is when the entry got its current state (claimed or done).
        "ALTER TABLE flowkit_inbox ADD COLUMN claimed_until TEXT",
    ),
    (
        # prune_workflows takes the least recently updated records of some statuses.
        "CREATE INDEX flowkit_workflows_status_updated_at "
        "ON flowkit_workflows (status, updated_at)",
    ),
    (
        # Ownership: the process holding a workflow's lease, until when, and a
        # cancel request for it from another process.
        "ALTER TABLE flowkit_workflows ADD COLUMN owner TEXT",
        "ALTER TABLE flowkit_workflows ADD COLUMN lease_until TEXT",
        "ALTER TABLE flowkit_workflows ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX flowkit_workflows_claim ON flowkit_workflows (name, status, lease_until)",
        # Listing pages by (created_at, id).
        "CREATE INDEX flowkit_workflows_created_id ON flowkit_workflows (created_at, id)",
        # History is appended, not rewritten: one row per entry, moved out of the state.
        """CREATE TABLE flowkit_history (
            workflow_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            entry TEXT NOT NULL,
            PRIMARY KEY (workflow_id, seq)
        ) WITHOUT ROWID""",
        "INSERT INTO flowkit_history (workflow_id, seq, entry) "
        "SELECT w.id, h.key, h.value FROM flowkit_workflows AS w, "
        "json_each(w.state, '$.history') AS h "
        "WHERE json_valid(w.state) AND json_type(w.state, '$.history') = 'array'",
        "UPDATE flowkit_workflows SET state = json_remove(state, '$.history') "
        "WHERE json_valid(state) AND json_type(state, '$.history') IS NOT NULL",
        # The transactional outbox: envelopes written in the user's transaction,
        # published by a relay, deleted once published.
        """CREATE TABLE flowkit_outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            topic TEXT NOT NULL,
            key TEXT,
            body BLOB NOT NULL,
            headers TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        # Named leases (the outbox relay's): one holder at a time.
        """CREATE TABLE flowkit_leases (
            name TEXT NOT NULL PRIMARY KEY,
            owner TEXT NOT NULL,
            lease_until TEXT NOT NULL
        )""",
    ),
    (
        # The flow trace: one row per thing that happened to a flow (a publish, a
        # handling, a step), by correlation id; ``at`` in seconds since the epoch.
        """CREATE TABLE flowkit_trace (
            seq INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            correlation_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            outcome TEXT NOT NULL,
            message_id TEXT,
            causation_id TEXT,
            message_type TEXT,
            service TEXT,
            handler TEXT,
            workflow TEXT,
            workflow_id TEXT,
            step TEXT,
            attempt INTEGER,
            duration REAL,
            error_type TEXT,
            error TEXT,
            key TEXT,
            detail TEXT
        )""",
        "CREATE INDEX flowkit_trace_flow ON flowkit_trace (correlation_id)",
        "CREATE INDEX flowkit_trace_workflow ON flowkit_trace (workflow_id) "
        "WHERE workflow_id IS NOT NULL",
        "CREATE INDEX flowkit_trace_key ON flowkit_trace (key) WHERE key IS NOT NULL",
        "CREATE INDEX flowkit_trace_at ON flowkit_trace (at)",
        # Expectations look for the publishes of one type in a time window.
        "CREATE INDEX flowkit_trace_published ON flowkit_trace (message_type, at) "
        "WHERE kind = 'publish'",
        # A flow is reported stalled once per expectation, whoever reports it.
        "CREATE UNIQUE INDEX flowkit_trace_stalled ON flowkit_trace (correlation_id, detail) "
        "WHERE kind = 'stalled'",
    ),
    (
        # Pages of a listing filtered by status, by name, or by both, read in
        # the listing's own order (created_at, id) straight from an index, with
        # no sort; the last one also holds what count_workflows groups by.
        "DROP INDEX flowkit_workflows_status",
        "DROP INDEX flowkit_workflows_name",
        "CREATE INDEX flowkit_workflows_status_page ON flowkit_workflows (status, created_at, id)",
        "CREATE INDEX flowkit_workflows_name_page ON flowkit_workflows (name, created_at, id)",
        "CREATE INDEX flowkit_workflows_name_status_page "
        "ON flowkit_workflows (name, status, created_at, id)",
    ),
    (
        # Waiting workflows: when each is due (``wake_at``, a timestamp like
        # ``lease_until``), and the mailbox channel and key it waits on. Only
        # WAITING records are indexed: the due ones of a name in wake order,
        # and the ones a message to (name, channel, key) wakes.
        "ALTER TABLE flowkit_workflows ADD COLUMN wake_at TEXT",
        "ALTER TABLE flowkit_workflows ADD COLUMN wait_for TEXT",
        "ALTER TABLE flowkit_workflows ADD COLUMN wait_key TEXT",
        "CREATE INDEX flowkit_workflows_wake ON flowkit_workflows (name, wake_at) "
        "WHERE status = 'WAITING'",
        "CREATE INDEX flowkit_workflows_wait ON flowkit_workflows (name, wait_for, wait_key) "
        "WHERE status = 'WAITING'",
        # Recovery looks among the unfinished workflows that run, oldest first:
        # without this index it would step over every waiting (and finished) one.
        "CREATE INDEX flowkit_workflows_unfinished ON flowkit_workflows (name, created_at, id) "
        "WHERE status IN ('RUNNING', 'COMPENSATING')",
        # The mailbox: messages kept for the waits until consumed (taken by a
        # ``consumer``, then deleted) or pruned by age.
        """CREATE TABLE flowkit_mailbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            channel TEXT NOT NULL,
            key TEXT NOT NULL,
            message_id TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at TEXT NOT NULL,
            consumer TEXT,
            UNIQUE (name, channel, key, message_id)
        )""",
        "CREATE INDEX flowkit_mailbox_take ON flowkit_mailbox (name, channel, key, seq)",
        "CREATE INDEX flowkit_mailbox_created_at ON flowkit_mailbox (created_at)",
        "CREATE INDEX flowkit_mailbox_consumer ON flowkit_mailbox (name, consumer) "
        "WHERE consumer IS NOT NULL",
    ),
)

#: The schema version this code writes; a database with a newer one is refused.
SCHEMA_VERSION = len(_MIGRATIONS)

#: The oldest schema version the read operations can read as it is, for a
#: read-only store (which never migrates). A migration that changes what the
#: dead letter or workflow reads select raises this to its own version.
_OLDEST_READABLE = 7


@dataclass(frozen=True, slots=True)
class Database:
    """Which database to open, and how.

    Attributes:
        path: the file's absolute path, or :data:`MEMORY`.
        synchronous: SQLite's ``synchronous`` level.
        busy_timeout: seconds to wait for another connection's write lock.
        read_only: open the file read-only, never creating or migrating it.
    """

    path: str
    synchronous: SynchronousLevel
    busy_timeout: float
    read_only: bool = False

    @property
    def shown(self) -> str:
        """The path as errors and logs show it (quoted, any secret masked)."""
        return repr(redact_url(self.path))


def schema_version(conn: sqlite3.Connection) -> int:
    """The flowkit schema version of a database (0 when it has none)."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'flowkit_schema'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM flowkit_schema").fetchone()
    return int(row[0])


def connect(database: Database) -> sqlite3.Connection:
    """A connection to ``database``, ready for the operations.

    Written to: in WAL mode, at the ``synchronous`` level asked for, migrated
    to :data:`SCHEMA_VERSION` (the file is created if missing). Read-only: the
    file must exist and hold flowkit data of a version this code reads.

    Raises:
        StoreError: if the database cannot be put in WAL mode, has a newer
            schema than this code, or (read-only) does not exist or holds no
            flowkit data.
        sqlite3.Error: if SQLite fails.
    """
    if database.read_only:
        return _connect_read_only(database)
    conn = sqlite3.connect(database.path, timeout=database.busy_timeout, isolation_level=None)
    try:
        mode = _enter_wal(conn, database.busy_timeout)
        if mode.lower() != "wal" and database.path != MEMORY:
            raise StoreError(
                f"cannot put the database {database.shown} in WAL mode (it is in {mode!r})"
            )
        conn.execute(f"PRAGMA synchronous = {database.synchronous}")
        _migrate(conn, database)
    except BaseException:
        conn.close()
        raise
    return conn


def _enter_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Put the database in WAL mode; return the journal mode it is in.

    SQLite does not call its busy handler while another connection is switching
    a new file to WAL, so processes opening one database together would fail
    with "database is locked" at once: retry until ``busy_timeout`` runs out.
    """
    deadline = time.monotonic() + busy_timeout
    pause = 0.005
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, ignoring a failure to."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _connect_read_only(database: Database) -> sqlite3.Connection:
    path = database.path
    if not os.path.isfile(path):
        raise StoreError(f"no database at {redact_url(path)}")
    uri = f"{pathlib.Path(path).as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=database.busy_timeout, isolation_level=None)
    try:
        version = schema_version(conn)
        if version == 0:
            raise StoreError(f"{redact_url(path)} holds no flowkit data")
        _check_not_newer(version, database)
        if version < _OLDEST_READABLE:
            raise StoreError(
                f"the database {database.shown} has flowkit schema version {version}, too old "
                "to read without upgrading it; open it once without read_only"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def _check_not_newer(version: int, database: Database) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database {database.shown} has flowkit schema version {version}, newer than "
            f"version {SCHEMA_VERSION} that this flowkit supports; upgrade flowkit"
        )


def _migrate(conn: sqlite3.Connection, database: Database) -> None:
    version = schema_version(conn)
    _check_not_newer(version, database)
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS flowkit_schema ("
            "version INTEGER NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        version = schema_version(conn)  # again, now that we hold the write lock
        _check_not_newer(version, database)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO flowkit_schema (version, applied_at) VALUES (?, ?)",
                (target, timestamp(datetime.now(UTC))),
            )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
