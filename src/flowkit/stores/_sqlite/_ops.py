"""The SQL operations, each run by the writer thread on its connection.

An operation is a function ``op(conn, *args)``; its name names it in errors
(``SQLite save_workflow failed: ...``). Operations the store marks as writes
run inside the writer's shared transaction (``BEGIN IMMEDIATE``, so their
reads see what no other connection can change until the commit). Each issues
at most one modifying statement, and raises only after a statement that
changed nothing, so a failed operation never leaves a partial change in the
transaction its batch shares.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from ..._errors import ConcurrencyConflict, NotFound, StoreError, WorkflowNotFound
from .._base import Claim
from ._rows import LETTER_COLUMNS, WORKFLOW_COLUMNS, timestamp

if TYPE_CHECKING:
    import sqlite3

    from ._rows import LetterRow, WorkflowRow

__all__ = [
    "add_dead_letter",
    "create_workflow",
    "delete_dead_letter",
    "get_dead_letter",
    "inbox_claim",
    "inbox_complete",
    "inbox_prune",
    "inbox_release",
    "list_dead_letters",
    "list_workflows",
    "load_workflow",
    "pragma",
    "prune_dead_letters",
    "prune_workflows",
    "save_workflow",
]

# -- inbox ----------------------------------------------------------------------------
#
# An entry's ``claimed_until`` is when its claim's lease runs out, or NULL once
# the message is done; ``added_at`` is when the entry got its current state.


def inbox_claim(conn: sqlite3.Connection, consumer: str, message_id: str, lease: float) -> Claim:
    """Claim a pair: one statement inserts a new entry or takes over an expired claim."""
    now = datetime.now(UTC)
    cursor = conn.execute(
        "INSERT INTO flowkit_inbox (consumer, message_id, added_at, claimed_until) "
        "VALUES (?, ?, ?, ?) "
        "ON CONFLICT (consumer, message_id) DO UPDATE "
        "SET added_at = excluded.added_at, claimed_until = excluded.claimed_until "
        "WHERE flowkit_inbox.claimed_until IS NOT NULL "
        "AND flowkit_inbox.claimed_until <= excluded.added_at",
        (consumer, message_id, timestamp(now), timestamp(now + timedelta(seconds=lease))),
    )
    if cursor.rowcount == 1:
        return Claim.CLAIMED
    row = conn.execute(
        "SELECT claimed_until FROM flowkit_inbox WHERE consumer = ? AND message_id = ?",
        (consumer, message_id),
    ).fetchone()
    return Claim.DONE if row[0] is None else Claim.BUSY


def inbox_complete(conn: sqlite3.Connection, consumer: str, message_id: str) -> None:
    """Mark a pair done (claimed or not); a pair already done keeps its time."""
    conn.execute(
        "INSERT INTO flowkit_inbox (consumer, message_id, added_at, claimed_until) "
        "VALUES (?, ?, ?, NULL) "
        "ON CONFLICT (consumer, message_id) DO UPDATE "
        "SET added_at = excluded.added_at, claimed_until = NULL "
        "WHERE flowkit_inbox.claimed_until IS NOT NULL",
        (consumer, message_id, timestamp(datetime.now(UTC))),
    )


def inbox_release(conn: sqlite3.Connection, consumer: str, message_id: str) -> None:
    """Drop a pair's claim, unless the pair is done."""
    conn.execute(
        "DELETE FROM flowkit_inbox "
        "WHERE consumer = ? AND message_id = ? AND claimed_until IS NOT NULL",
        (consumer, message_id),
    )


def inbox_prune(conn: sqlite3.Connection, cutoff: datetime) -> int:
    """Delete the entries done before ``cutoff`` and the claims expired before it."""
    # A claim's added_at is before its claimed_until, so the added_at index
    # bounds both kinds of entry.
    expired_before = min(cutoff, datetime.now(UTC))
    return conn.execute(
        "DELETE FROM flowkit_inbox WHERE added_at < ? "
        "AND (claimed_until IS NULL OR claimed_until < ?)",
        (timestamp(cutoff), timestamp(expired_before)),
    ).rowcount


# -- dead letters -----------------------------------------------------------------------


def add_dead_letter(conn: sqlite3.Connection, row: LetterRow) -> None:
    """Insert a letter, unless its id is kept already."""
    conn.execute(
        f"INSERT INTO flowkit_dead_letters ({LETTER_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        row,
    )


def list_dead_letters(
    conn: sqlite3.Connection, consumer: str | None, topic: str | None, limit: int, offset: int
) -> list[LetterRow]:
    """The rows of the matching letters, oldest first, from the ``offset``-th."""
    clauses: list[str] = []
    params: list[object] = []
    if consumer is not None:
        clauses.append("consumer = ?")
        params.append(consumer)
    if topic is not None:
        clauses.append("topic = ?")
        params.append(topic)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.extend((limit, offset))
    sql = (
        f"SELECT {LETTER_COLUMNS} FROM flowkit_dead_letters{where} "
        "ORDER BY failed_at, rowid LIMIT ? OFFSET ?"
    )
    return cast("list[LetterRow]", conn.execute(sql, params).fetchall())


def get_dead_letter(conn: sqlite3.Connection, letter_id: str) -> LetterRow:
    """One letter's row.

    Raises:
        NotFound: if there is none with that id.
    """
    row = conn.execute(
        f"SELECT {LETTER_COLUMNS} FROM flowkit_dead_letters WHERE id = ?", (letter_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no dead letter with id {letter_id!r}")
    return cast("LetterRow", row)


def delete_dead_letter(conn: sqlite3.Connection, letter_id: str) -> None:
    """Delete one letter (readable or not).

    Raises:
        NotFound: if there is none with that id.
    """
    cursor = conn.execute("DELETE FROM flowkit_dead_letters WHERE id = ?", (letter_id,))
    if cursor.rowcount == 0:
        raise NotFound(f"no dead letter with id {letter_id!r}")


def prune_dead_letters(
    conn: sqlite3.Connection,
    cutoff: datetime,
    consumer: str | None,
    topic: str | None,
    limit: int,
) -> int:
    """Delete at most ``limit`` letters that failed before ``cutoff``, oldest first."""
    clauses = ["failed_at < ?"]
    params: list[object] = [timestamp(cutoff)]
    if consumer is not None:
        clauses.append("consumer = ?")
        params.append(consumer)
    if topic is not None:
        clauses.append("topic = ?")
        params.append(topic)
    params.append(limit)
    return conn.execute(
        "DELETE FROM flowkit_dead_letters WHERE rowid IN ("
        f"SELECT rowid FROM flowkit_dead_letters WHERE {' AND '.join(clauses)} "
        "ORDER BY failed_at, rowid LIMIT ?)",
        params,
    ).rowcount


# -- workflows --------------------------------------------------------------------------


def create_workflow(
    conn: sqlite3.Connection, workflow_id: str, name: str, status: str, state: str, now: str
) -> tuple[WorkflowRow, bool]:
    """Insert a record at version 1, or return the row that has its id."""
    cursor = conn.execute(
        f"INSERT INTO flowkit_workflows ({WORKFLOW_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (workflow_id, name, status, state, now, now),
    )
    if cursor.rowcount == 1:
        return (workflow_id, name, status, 1, state, now, now), True
    return load_workflow(conn, workflow_id), False


def save_workflow(
    conn: sqlite3.Connection, workflow_id: str, status: str, state: str, version: int, now: str
) -> tuple[str, str]:
    """Write a record read at ``version``; return its name and creation time.

    Raises:
        ConcurrencyConflict: if the stored version is another.
        WorkflowNotFound: if no record has this id.
    """
    cursor = conn.execute(
        "UPDATE flowkit_workflows SET status = ?, state = ?, version = version + 1, "
        "updated_at = ? WHERE id = ? AND version = ?",
        (status, state, now, workflow_id, version),
    )
    if cursor.rowcount == 1:
        row = conn.execute(
            "SELECT name, created_at FROM flowkit_workflows WHERE id = ?", (workflow_id,)
        ).fetchone()
        return cast("tuple[str, str]", row)
    row = conn.execute(
        "SELECT version FROM flowkit_workflows WHERE id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    raise ConcurrencyConflict(
        f"workflow {workflow_id!r} is at version {row[0]}, not {version}: "
        "it was saved by someone else"
    )


def load_workflow(conn: sqlite3.Connection, workflow_id: str) -> WorkflowRow:
    """One record's row.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    row = conn.execute(
        f"SELECT {WORKFLOW_COLUMNS} FROM flowkit_workflows WHERE id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    return cast("WorkflowRow", row)


def list_workflows(
    conn: sqlite3.Connection,
    statuses: tuple[str, ...] | None,
    name: str | None,
    limit: int | None,
    offset: int,
) -> list[WorkflowRow]:
    """The rows of the matching records, oldest first, from the ``offset``-th."""
    clauses: list[str] = []
    params: list[object] = []
    if statuses is not None:
        if not statuses:
            return []
        clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
        params.extend(statuses)
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {WORKFLOW_COLUMNS} FROM flowkit_workflows{where} ORDER BY created_at, rowid"
    if limit is not None or offset:
        sql += " LIMIT ? OFFSET ?"
        params.extend((-1 if limit is None else limit, offset))
    return cast("list[WorkflowRow]", conn.execute(sql, params).fetchall())


def prune_workflows(
    conn: sqlite3.Connection,
    cutoff: datetime,
    statuses: tuple[str, ...],
    name: str | None,
    limit: int,
) -> int:
    """Delete at most ``limit`` records in ``statuses`` (of ``name``) updated
    before ``cutoff``, the least recently updated first."""
    if not statuses:
        return 0
    clauses = [f"status IN ({', '.join('?' * len(statuses))})", "updated_at < ?"]
    params: list[object] = [*statuses, timestamp(cutoff)]
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    params.append(limit)
    return conn.execute(
        "DELETE FROM flowkit_workflows WHERE rowid IN ("
        f"SELECT rowid FROM flowkit_workflows WHERE {' AND '.join(clauses)} "
        "ORDER BY updated_at, rowid LIMIT ?)",
        params,
    ).rowcount


# -- diagnostics ----------------------------------------------------------------------


def pragma(conn: sqlite3.Connection, name: str) -> object:
    """The value of a pragma on the connection.

    Raises:
        StoreError: if ``name`` is not an identifier.
    """
    if not name.isidentifier():
        raise StoreError(f"not a pragma name: {name!r}")
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return None if row is None else row[0]
