"""The SQL operations, each run by the writer thread on its connection.

An operation is a function ``op(conn, *args)``; its name names it in errors
(``SQLite save_workflow failed: ...``). Operations the store marks as writes
run inside the writer's shared transaction (``BEGIN IMMEDIATE``, so their
reads see what no other connection can change until the commit). Each issues
one modifying statement, or several inside a savepoint, and raises only after
a statement that changed nothing (or after its savepoint was rolled back), so
a failed operation never leaves a partial change in the transaction its batch
shares.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from ..._errors import ConcurrencyConflict, NotFound, StoreError, WorkflowNotFound
from .._base import UNFINISHED, Claim
from .._waits import WAITING
from ._rows import LETTER_COLUMNS, WORKFLOW_COLUMNS, timestamp
from ._schema import rollback

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    from ._rows import HistoryRow, LetterRow, WaitRow, WorkflowRow

__all__ = [
    "UNHELD",
    "SavedRow",
    "add_dead_letter",
    "claim_matching",
    "claim_workflow",
    "claim_workflows",
    "count_workflows",
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
    "release_workflows",
    "renew_leases",
    "request_cancel",
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


def inbox_complete(conn: sqlite3.Connection, consumer: str, message_id: str) -> bool:
    """Mark a pair done (claimed or not); a pair already done keeps its time.
    The outbox's ``record_handled`` runs it in the user's transaction.

    Returns:
        Whether the pair was not done before.
    """
    cursor = conn.execute(
        "INSERT INTO flowkit_inbox (consumer, message_id, added_at, claimed_until) "
        "VALUES (?, ?, ?, NULL) "
        "ON CONFLICT (consumer, message_id) DO UPDATE "
        "SET added_at = excluded.added_at, claimed_until = NULL "
        "WHERE flowkit_inbox.claimed_until IS NOT NULL",
        (consumer, message_id, timestamp(datetime.now(UTC))),
    )
    return cursor.rowcount == 1


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
#
# A workflow's ``owner`` holds its lease until ``lease_until`` (both NULL when
# nobody holds it); its history is the rows of ``flowkit_history``, numbered
# by ``seq`` from 0. A WAITING workflow keeps when it is due (``wake_at``) and
# the mailbox channel and key it waits on (``wait_for``, ``wait_key``); the
# three are NULL in every other status. Lease and wake times are taken on the
# writer thread, when the operation runs.


def _statuses(statuses: Collection[str]) -> str:
    return "(" + ", ".join(f"'{status}'" for status in statuses) + ")"


#: The unfinished statuses, as SQL: the ones recovery claims.
_UNFINISHED = _statuses(UNFINISHED)
#: The statuses a claim of one workflow or a renewal takes: the unfinished ones and WAITING.
_CLAIMABLE = _statuses((*UNFINISHED, WAITING))
#: The statuses that keep a cancel request.
_CANCELLABLE = _statuses(("RUNNING", WAITING))

#: A workflow ``:owner`` may claim at ``:now``, unless it runs it (its id is in
#: the JSON array ``:exclude``): nobody holds it, its lease ran out, or
#: ``:owner`` holds it. An owner without a lease time holds nothing.
UNHELD = (
    "id NOT IN (SELECT value FROM json_each(:exclude)) "
    "AND (owner IS NULL OR lease_until IS NULL OR lease_until <= :now OR owner = :owner)"
)


#: The stored answer of a save: name, created_at, updated_at, lease_until,
#: cancel_requested, wake_at, wait_for, wait_key.
SavedRow = tuple[str, str, str, "str | None", int, "str | None", "str | None", "str | None"]


@contextmanager
def _atomic(conn: sqlite3.Connection) -> Iterator[None]:
    """Make an operation's statements one change: all kept, or none if it raises."""
    conn.execute("SAVEPOINT flowkit_operation")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO flowkit_operation")
                conn.execute("RELEASE flowkit_operation")
        raise
    conn.execute("RELEASE flowkit_operation")


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Make an operation's reads see one state of the database."""
    if conn.in_transaction:  # a batch with writes: its transaction is a snapshot
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        rollback(conn)  # nothing was written: ending the read is all it does


def _lease_until(now: datetime, lease: float | None) -> str | None:
    return None if lease is None else timestamp(now + timedelta(seconds=lease))


def _json_ids(ids: Collection[str]) -> str:
    return json.dumps(list(ids))


def _wait_params(status: str, wait: WaitRow) -> dict[str, object]:
    """The parameters of :func:`_wake_at` and of the wait columns."""
    wake_at, wait_for, wait_key = wait
    return {"status": status, "wake_at": wake_at, "wait_for": wait_for, "wait_key": wait_key}


def _wake_at(name: str, cancel: str) -> str:
    """The SQL of the wake time a written record gets, from :func:`_wait_params`
    and ``:now``: a WAITING record is due now when a cancel is pending or a
    message no consumer took is kept on its channel and key; otherwise it keeps
    its own (NULL unless WAITING). ``name`` and ``cancel`` are the SQL of the
    record's name and cancel flag."""
    return (
        f"CASE WHEN :status = '{WAITING}' AND ({cancel} = 1 OR EXISTS ("
        f"SELECT 1 FROM flowkit_mailbox AS m WHERE m.name = {name} "
        "AND m.channel = :wait_for AND m.key = :wait_key AND m.consumer IS NULL)) "
        "THEN :now ELSE :wake_at END"
    )


def _append_history(
    conn: sqlite3.Connection, workflow_id: str, entries: list[str], first: int
) -> None:
    conn.executemany(
        "INSERT INTO flowkit_history (workflow_id, seq, entry) VALUES (?, ?, ?)",
        [(workflow_id, first + index, entry) for index, entry in enumerate(entries)],
    )


def create_workflow(
    conn: sqlite3.Connection,
    workflow_id: str,
    name: str,
    status: str,
    state: str,
    history: list[str],
    owner: str | None,
    lease: float | None,
    wait: WaitRow,
) -> tuple[WorkflowRow, bool]:
    """Insert a record at version 1 with its first history entries, or return
    the row that has its id (without history)."""
    moment = datetime.now(UTC)
    now = timestamp(moment)
    lease_until = _lease_until(moment, lease)
    with _atomic(conn):
        cursor = conn.execute(
            f"INSERT INTO flowkit_workflows ({WORKFLOW_COLUMNS}) "
            "VALUES (:id, :name, :status, 1, :state, :now, :now, :owner, :until, 0, "
            f"{_wake_at(':name', '0')}, :wait_for, :wait_key) "
            "ON CONFLICT (id) DO NOTHING",
            {
                "id": workflow_id,
                "name": name,
                "state": state,
                "now": now,
                "owner": owner,
                "until": lease_until,
                **_wait_params(status, wait),
            },
        )
        if cursor.rowcount != 1:
            return _workflow_row(conn, workflow_id), False
        # Entries left by a record removed by hand are not this workflow's.
        conn.execute("DELETE FROM flowkit_history WHERE workflow_id = ?", (workflow_id,))
        _append_history(conn, workflow_id, history, 0)
    return _workflow_row(conn, workflow_id), True


def save_workflow(
    conn: sqlite3.Connection,
    workflow_id: str,
    status: str,
    state: str,
    version: int,
    history: list[str],
    owner: str | None,
    lease: float | None,
    wait: WaitRow,
) -> SavedRow:
    """Write a record read at ``version`` and append ``history`` to its own,
    never reading or rewriting the entries it has. A save as RUNNING or
    WAITING keeps a cancel request; any other status drops it.

    Raises:
        ConcurrencyConflict: if the stored version is another.
        WorkflowNotFound: if no record has this id.
    """
    moment = datetime.now(UTC)
    now = timestamp(moment)
    lease_until = _lease_until(moment, lease)
    with _atomic(conn):
        # The SET expressions read the row as it was: the new status is the
        # parameter, and a WAITING save keeps the cancel flag the wake time reads.
        cursor = conn.execute(
            "UPDATE flowkit_workflows SET status = :status, state = :state, "
            "version = version + 1, updated_at = :now, owner = :owner, lease_until = :until, "
            f"cancel_requested = CASE WHEN :status IN {_CANCELLABLE} "
            "THEN cancel_requested ELSE 0 END, "
            f"wake_at = {_wake_at('flowkit_workflows.name', 'cancel_requested')}, "
            "wait_for = :wait_for, wait_key = :wait_key "
            "WHERE id = :id AND version = :version",
            {
                "state": state,
                "now": now,
                "owner": owner,
                "until": lease_until,
                "id": workflow_id,
                "version": version,
                **_wait_params(status, wait),
            },
        )
        if cursor.rowcount == 1:
            if history:
                # The last entry's number, found through the primary key.
                (last,) = conn.execute(
                    "SELECT MAX(seq) FROM flowkit_history WHERE workflow_id = ?", (workflow_id,)
                ).fetchone()
                _append_history(conn, workflow_id, history, 0 if last is None else last + 1)
            row = conn.execute(
                "SELECT name, created_at, updated_at, lease_until, cancel_requested, "
                "wake_at, wait_for, wait_key FROM flowkit_workflows WHERE id = ?",
                (workflow_id,),
            ).fetchone()
            return cast("SavedRow", row)
    row = conn.execute(
        "SELECT version FROM flowkit_workflows WHERE id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    raise ConcurrencyConflict(
        f"workflow {workflow_id!r} is at version {row[0]}, not {version}: "
        "it was saved or claimed by someone else"
    )


def _workflow_row(conn: sqlite3.Connection, workflow_id: str) -> WorkflowRow:
    row = conn.execute(
        f"SELECT {WORKFLOW_COLUMNS} FROM flowkit_workflows WHERE id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    return cast("WorkflowRow", row)


def load_workflow(
    conn: sqlite3.Connection, workflow_id: str
) -> tuple[WorkflowRow, list[HistoryRow]]:
    """One record's row and its history rows, oldest first, read together.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    with _snapshot(conn):
        row = _workflow_row(conn, workflow_id)
        history = conn.execute(
            "SELECT seq, entry FROM flowkit_history WHERE workflow_id = ? ORDER BY seq",
            (workflow_id,),
        ).fetchall()
    return row, cast("list[HistoryRow]", history)


#: The most statuses a page is read for one status at a time (see list_workflows).
_MERGED_STATUSES = 8


def list_workflows(
    conn: sqlite3.Connection,
    statuses: tuple[str, ...] | None,
    name: str | None,
    after: tuple[str, str] | None,
    limit: int | None,
    offset: int,
) -> list[WorkflowRow]:
    """The rows of the matching records by (created_at, id), from the
    ``offset``-th of those after ``after``.

    A page of one status (and name) is read in order from the index on
    ``(status, created_at, id)`` (or ``(name, status, created_at, id)``). A
    page of several statuses reads each one's first rows that way and merges
    them, instead of sorting every record of those statuses.
    """
    if statuses is not None and not statuses:
        return []
    clauses: list[str] = []
    params: list[object] = []
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    if after is not None:
        clauses.append("(created_at, id) > (?, ?)")
        params.extend(after)
    order = "ORDER BY created_at, id"
    if statuses is not None and (
        len(statuses) == 1 or (limit is not None and len(statuses) <= _MERGED_STATUSES)
    ):
        branch = f"SELECT {WORKFLOW_COLUMNS} FROM flowkit_workflows WHERE " + " AND ".join(
            ["status = ?", *clauses]
        )
        if len(statuses) == 1:
            sql = f"{branch} {order}"
            params = [statuses[0], *params]
        else:
            most = cast("int", limit) + offset
            sql = (
                " UNION ALL ".join(f"SELECT * FROM ({branch} {order} LIMIT ?)" for _ in statuses)
                + f" {order}"
            )
            params = [value for status in statuses for value in (status, *params, most)]
    else:
        if statuses is not None:
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {WORKFLOW_COLUMNS} FROM flowkit_workflows{where} {order}"
    if limit is not None or offset:
        sql += " LIMIT ? OFFSET ?"
        params.extend((-1 if limit is None else limit, offset))
    return cast("list[WorkflowRow]", conn.execute(sql, params).fetchall())


def count_workflows(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """``(name, status, count)`` of every pair that has records: one pass over
    the claim index, which holds both columns (no table row is read)."""
    return cast(
        "list[tuple[str, str, int]]",
        conn.execute(
            "SELECT name, status, COUNT(*) FROM flowkit_workflows GROUP BY name, status"
        ).fetchall(),
    )


def claim_matching(
    conn: sqlite3.Connection,
    where: str,
    order: str,
    *,
    name: str,
    owner: str,
    lease: float,
    limit: int,
    exclude: list[str],
) -> list[WorkflowRow]:
    """Give ``owner`` the lease of the first ``limit`` workflows that match
    ``where`` by ``order``; their versions go up by one. Their rows, in that
    order.

    ``where`` is SQL of the parameters ``:name``, ``:now`` and those of
    :data:`UNHELD` (``:owner``, ``:exclude``). The store's write transaction
    (``BEGIN IMMEDIATE``) holds the database's write lock from the choice to
    the update: no other connection claims in between.
    """
    moment = datetime.now(UTC)
    chosen = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM flowkit_workflows WHERE {where} ORDER BY {order} LIMIT :limit",
            {
                "name": name,
                "owner": owner,
                "now": timestamp(moment),
                "exclude": _json_ids(exclude),
                "limit": limit,
            },
        )
    ]
    if not chosen:
        return []
    ids = _json_ids(chosen)
    conn.execute(
        "UPDATE flowkit_workflows SET owner = ?, lease_until = ?, version = version + 1 "
        "WHERE id IN (SELECT value FROM json_each(?))",
        (owner, _lease_until(moment, lease), ids),
    )
    rows = conn.execute(
        f"SELECT {WORKFLOW_COLUMNS} FROM flowkit_workflows "
        f"WHERE id IN (SELECT value FROM json_each(?)) ORDER BY {order}",
        (ids,),
    ).fetchall()
    return cast("list[WorkflowRow]", rows)


def claim_workflows(
    conn: sqlite3.Connection,
    name: str,
    owner: str,
    lease: float,
    limit: int,
    exclude: list[str],
) -> list[WorkflowRow]:
    """Give ``owner`` the lease of at most ``limit`` free unfinished workflows
    of ``name``, oldest first (never a WAITING one: those wait to be due)."""
    return claim_matching(
        conn,
        f"name = :name AND status IN {_UNFINISHED} AND {UNHELD}",
        "created_at, id",
        name=name,
        owner=owner,
        lease=lease,
        limit=limit,
        exclude=exclude,
    )


def claim_workflow(
    conn: sqlite3.Connection, workflow_id: str, owner: str, lease: float
) -> WorkflowRow | None:
    """Give ``owner`` the lease of one unfinished or WAITING workflow if it is
    free (its own counts as free); its version goes up by one.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    moment = datetime.now(UTC)
    now = timestamp(moment)
    cursor = conn.execute(
        "UPDATE flowkit_workflows SET owner = :owner, lease_until = :until, "
        "version = version + 1 "
        f"WHERE id = :id AND status IN {_CLAIMABLE} AND {UNHELD}",
        {
            "owner": owner,
            "until": _lease_until(moment, lease),
            "now": now,
            "id": workflow_id,
            "exclude": "[]",
        },
    )
    row = _workflow_row(conn, workflow_id)
    return row if cursor.rowcount == 1 else None


def renew_leases(
    conn: sqlite3.Connection, owner: str, workflow_ids: list[str], lease: float
) -> list[tuple[str, int]]:
    """Extend ``owner``'s leases on those of ``workflow_ids`` it holds and that
    are unfinished or WAITING; their ids and cancel requests."""
    moment = datetime.now(UTC)
    held = (
        f"WHERE owner = :owner AND status IN {_CLAIMABLE} "
        "AND id IN (SELECT value FROM json_each(:ids))"
    )
    params = {"owner": owner, "ids": _json_ids(workflow_ids)}
    conn.execute(
        f"UPDATE flowkit_workflows SET lease_until = :until {held}",
        {**params, "until": _lease_until(moment, lease)},
    )
    rows = conn.execute(
        f"SELECT id, cancel_requested = 1 FROM flowkit_workflows {held}", params
    ).fetchall()
    return cast("list[tuple[str, int]]", rows)


def release_workflows(conn: sqlite3.Connection, owner: str, workflow_ids: list[str]) -> None:
    """Drop ``owner``'s leases on those of ``workflow_ids`` it holds."""
    conn.execute(
        "UPDATE flowkit_workflows SET owner = NULL, lease_until = NULL "
        "WHERE owner = ? AND id IN (SELECT value FROM json_each(?))",
        (owner, _json_ids(workflow_ids)),
    )


def request_cancel(conn: sqlite3.Connection, workflow_id: str) -> WorkflowRow:
    """Flag a ``RUNNING`` or ``WAITING`` record for cancellation, a WAITING one
    due now; its row after the request.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    conn.execute(
        "UPDATE flowkit_workflows SET cancel_requested = 1, "
        f"wake_at = CASE WHEN status = '{WAITING}' THEN ? ELSE wake_at END "
        f"WHERE id = ? AND status IN {_CANCELLABLE} AND cancel_requested = 0",
        (timestamp(datetime.now(UTC)), workflow_id),
    )
    return _workflow_row(conn, workflow_id)


def prune_workflows(
    conn: sqlite3.Connection,
    cutoff: datetime,
    statuses: tuple[str, ...],
    name: str | None,
    limit: int,
) -> int:
    """Delete at most ``limit`` records in ``statuses`` (of ``name``) updated
    before ``cutoff``, the least recently updated first, with their history."""
    if not statuses:
        return 0
    clauses = [f"status IN ({', '.join('?' * len(statuses))})", "updated_at < ?"]
    params: list[object] = [*statuses, timestamp(cutoff)]
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    params.append(limit)
    ids = [
        row[0]
        for row in conn.execute(
            f"SELECT id FROM flowkit_workflows WHERE {' AND '.join(clauses)} "
            "ORDER BY updated_at, rowid LIMIT ?",
            params,
        )
    ]
    if not ids:
        return 0
    chosen = _json_ids(ids)
    with _atomic(conn):
        conn.execute(
            "DELETE FROM flowkit_history WHERE workflow_id IN (SELECT value FROM json_each(?))",
            (chosen,),
        )
        return conn.execute(
            "DELETE FROM flowkit_workflows WHERE id IN (SELECT value FROM json_each(?))",
            (chosen,),
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
