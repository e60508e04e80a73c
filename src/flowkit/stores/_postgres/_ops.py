"""The SQL operations, each run on one pooled connection.

An operation is a coroutine function ``op(conn, tables, *args)``; its name
names it in errors (``PostgreSQL save_workflow failed: ...``). Each runs in
autocommit mode: its one modifying statement is atomic on its own, and the
reads that may follow it only explain its outcome. Times are the server's
(``now()``), so the clocks of the processes sharing a database never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._errors import ConcurrencyConflict, NotFound, WorkflowNotFound
from .._base import Claim
from ._rows import LETTER_COLUMNS, WORKFLOW_COLUMNS

if TYPE_CHECKING:
    from datetime import datetime

    from ._pool import Connection
    from ._schema import Tables

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
    "prune_dead_letters",
    "prune_workflows",
    "save_workflow",
]

Row = Any  # an asyncpg.Record: a mapping of column names to values

#: How many times a claim is tried when the entry it lost to vanishes at once.
_CLAIM_TRIES = 3


def _count(status: str) -> int:
    """The row count of a command status (``"DELETE 3"``)."""
    return int(status.rsplit(" ", 1)[-1])


# -- inbox ----------------------------------------------------------------------------


async def inbox_claim(
    conn: Connection, tables: Tables, consumer: str, message_id: str, lease: float
) -> Claim:
    """Claim a pair: one statement inserts a new entry or takes over an expired claim.

    Whether the caller won is decided by that statement alone (PostgreSQL
    serializes conflicting inserts on the primary key). When it lost, the
    entry's state tells DONE from BUSY; an entry released or pruned in between
    is claimed again.
    """
    for _ in range(_CLAIM_TRIES):
        won = await conn.fetchval(
            f"INSERT INTO {tables.inbox} AS entry (consumer, message_id, added_at, claimed_until) "
            "VALUES ($1, $2, now(), now() + make_interval(secs => $3)) "
            "ON CONFLICT (consumer, message_id) DO UPDATE "
            "SET added_at = excluded.added_at, claimed_until = excluded.claimed_until "
            "WHERE entry.claimed_until IS NOT NULL AND entry.claimed_until <= now() "
            "RETURNING true",
            consumer,
            message_id,
            lease,
        )
        if won:
            return Claim.CLAIMED
        row = await conn.fetchrow(
            f"SELECT claimed_until IS NULL AS done FROM {tables.inbox} "
            "WHERE consumer = $1 AND message_id = $2",
            consumer,
            message_id,
        )
        if row is not None:
            return Claim.DONE if row["done"] else Claim.BUSY
    return Claim.BUSY


async def inbox_complete(conn: Connection, tables: Tables, consumer: str, message_id: str) -> None:
    """Mark a pair done (claimed or not); a pair already done keeps its time."""
    await conn.execute(
        f"INSERT INTO {tables.inbox} AS entry (consumer, message_id, added_at, claimed_until) "
        "VALUES ($1, $2, now(), NULL) "
        "ON CONFLICT (consumer, message_id) DO UPDATE "
        "SET added_at = excluded.added_at, claimed_until = NULL "
        "WHERE entry.claimed_until IS NOT NULL",
        consumer,
        message_id,
    )


async def inbox_release(conn: Connection, tables: Tables, consumer: str, message_id: str) -> None:
    """Drop a pair's claim, unless the pair is done."""
    await conn.execute(
        f"DELETE FROM {tables.inbox} "
        "WHERE consumer = $1 AND message_id = $2 AND claimed_until IS NOT NULL",
        consumer,
        message_id,
    )


async def inbox_prune(conn: Connection, tables: Tables, cutoff: datetime) -> int:
    """Delete the entries done before ``cutoff`` and the claims expired before it."""
    # A claim's added_at is before its claimed_until, so the added_at index
    # bounds both kinds of entry.
    status = await conn.execute(
        f"DELETE FROM {tables.inbox} WHERE added_at < $1 "
        "AND (claimed_until IS NULL OR claimed_until < LEAST($1, now()))",
        cutoff,
    )
    return _count(status)


# -- dead letters -----------------------------------------------------------------------


async def add_dead_letter(conn: Connection, tables: Tables, args: tuple[Any, ...]) -> None:
    """Insert a letter, unless its id is kept already."""
    await conn.execute(
        f"INSERT INTO {tables.dead_letters} (id, consumer, topic, body, headers, error_type, "
        "error, attempts, failed_at, message_id) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        *args,
    )


async def list_dead_letters(
    conn: Connection, tables: Tables, consumer: str | None, topic: str | None, limit: int
) -> list[Row]:
    """The rows of the matching letters, oldest first."""
    clauses: list[str] = []
    params: list[object] = []
    if consumer is not None:
        params.append(consumer)
        clauses.append(f"consumer = ${len(params)}")
    if topic is not None:
        params.append(topic)
        clauses.append(f"topic = ${len(params)}")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    return list(
        await conn.fetch(
            f"SELECT {LETTER_COLUMNS} FROM {tables.dead_letters}{where} "
            f"ORDER BY failed_at, seq LIMIT ${len(params)}",
            *params,
        )
    )


async def get_dead_letter(conn: Connection, tables: Tables, letter_id: str) -> Row:
    """One letter's row.

    Raises:
        NotFound: if there is none with that id.
    """
    row = await conn.fetchrow(
        f"SELECT {LETTER_COLUMNS} FROM {tables.dead_letters} WHERE id = $1", letter_id
    )
    if row is None:
        raise NotFound(f"no dead letter with id {letter_id!r}")
    return row


async def delete_dead_letter(conn: Connection, tables: Tables, letter_id: str) -> None:
    """Delete one letter.

    Raises:
        NotFound: if there is none with that id.
    """
    status = await conn.execute(f"DELETE FROM {tables.dead_letters} WHERE id = $1", letter_id)
    if _count(status) == 0:
        raise NotFound(f"no dead letter with id {letter_id!r}")


async def prune_dead_letters(
    conn: Connection,
    tables: Tables,
    cutoff: datetime,
    consumer: str | None,
    topic: str | None,
    limit: int,
) -> int:
    """Delete at most ``limit`` letters that failed before ``cutoff``, oldest first."""
    params: list[object] = [cutoff]
    clauses = ["failed_at < $1"]
    if consumer is not None:
        params.append(consumer)
        clauses.append(f"consumer = ${len(params)}")
    if topic is not None:
        params.append(topic)
        clauses.append(f"topic = ${len(params)}")
    params.append(limit)
    status = await conn.execute(
        f"DELETE FROM {tables.dead_letters} WHERE id IN ("
        f"SELECT id FROM {tables.dead_letters} WHERE {' AND '.join(clauses)} "
        f"ORDER BY failed_at, seq LIMIT ${len(params)})",
        *params,
    )
    return _count(status)


# -- workflows --------------------------------------------------------------------------


async def create_workflow(
    conn: Connection, tables: Tables, workflow_id: str, name: str, status: str, state: str
) -> tuple[Row, bool]:
    """Insert a record at version 1, or return the row that has its id."""
    row = await conn.fetchrow(
        f"INSERT INTO {tables.workflows} "
        "(id, name, status, version, state, created_at, updated_at) "
        "VALUES ($1, $2, $3, 1, $4::jsonb, now(), now()) "
        f"ON CONFLICT (id) DO NOTHING RETURNING {WORKFLOW_COLUMNS}",
        workflow_id,
        name,
        status,
        state,
    )
    if row is not None:
        return row, True
    return await load_workflow(conn, tables, workflow_id), False


async def save_workflow(
    conn: Connection, tables: Tables, workflow_id: str, status: str, state: str, version: int
) -> Row:
    """Write a record read at ``version``; return its name and times.

    Raises:
        ConcurrencyConflict: if the stored version is another.
        WorkflowNotFound: if no record has this id.
    """
    row = await conn.fetchrow(
        f"UPDATE {tables.workflows} SET status = $2, state = $3::jsonb, "
        "version = version + 1, updated_at = now() WHERE id = $1 AND version = $4 "
        "RETURNING name, created_at, updated_at",
        workflow_id,
        status,
        state,
        version,
    )
    if row is not None:
        return row
    stored = await conn.fetchval(
        f"SELECT version FROM {tables.workflows} WHERE id = $1", workflow_id
    )
    if stored is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    raise ConcurrencyConflict(
        f"workflow {workflow_id!r} is at version {stored}, not {version}: "
        "it was saved by someone else"
    )


async def load_workflow(conn: Connection, tables: Tables, workflow_id: str) -> Row:
    """One record's row.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    row = await conn.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS} FROM {tables.workflows} WHERE id = $1", workflow_id
    )
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    return row


async def list_workflows(
    conn: Connection,
    tables: Tables,
    statuses: list[str] | None,
    name: str | None,
    limit: int | None,
) -> list[Row]:
    """The rows of the matching records, oldest first (all when ``limit`` is None)."""
    clauses: list[str] = []
    params: list[object] = []
    if statuses is not None:
        if not statuses:
            return []
        params.append(statuses)
        clauses.append(f"status = ANY(${len(params)}::text[])")
    if name is not None:
        params.append(name)
        clauses.append(f"name = ${len(params)}")
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {WORKFLOW_COLUMNS} FROM {tables.workflows}{where} ORDER BY created_at, seq"
    if limit is not None:
        params.append(limit)
        sql += f" LIMIT ${len(params)}"
    return list(await conn.fetch(sql, *params))


async def prune_workflows(
    conn: Connection,
    tables: Tables,
    cutoff: datetime,
    statuses: list[str],
    name: str | None,
    limit: int,
) -> int:
    """Delete at most ``limit`` records in ``statuses`` (of ``name``) updated
    before ``cutoff``, the least recently updated first."""
    if not statuses:
        return 0
    params: list[object] = [statuses, cutoff]
    clauses = ["status = ANY($1::text[])", "updated_at < $2"]
    if name is not None:
        params.append(name)
        clauses.append(f"name = ${len(params)}")
    params.append(limit)
    status = await conn.execute(
        f"DELETE FROM {tables.workflows} WHERE id IN ("
        f"SELECT id FROM {tables.workflows} WHERE {' AND '.join(clauses)} "
        f"ORDER BY updated_at, seq LIMIT ${len(params)})",
        *params,
    )
    return _count(status)
