"""The SQL operations, each run on one pooled connection.

An operation is a coroutine function ``op(conn, tables, *args)``; its name
names it in errors (``PostgreSQL save_workflow failed: ...``). Each runs in
autocommit mode: its one modifying statement is atomic on its own (a save
appends its history in that statement, through a ``WITH`` clause), and the
reads that may follow it only explain its outcome. The short transactions are
creating a workflow with its first history entries, and writing a workflow
that waits on a mailbox channel (see :func:`wait_lock`). Times are the
server's (``now()``), so the clocks of the processes sharing a database never
disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._errors import ConcurrencyConflict, NotFound, WorkflowNotFound
from .._base import UNFINISHED, Claim
from .._waits import WAITING
from ._rows import LETTER_COLUMNS, WORKFLOW_COLUMNS

if TYPE_CHECKING:
    from datetime import datetime

    from ._pool import Connection
    from ._schema import Tables

__all__ = [
    "add_dead_letter",
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
    "prune_dead_letters",
    "prune_workflows",
    "release_workflows",
    "renew_leases",
    "request_cancel",
    "save_workflow",
    "wait_lock",
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


async def inbox_complete(conn: Connection, tables: Tables, consumer: str, message_id: str) -> bool:
    """Mark a pair done (claimed or not); a pair already done keeps its time.
    The outbox's ``record_handled`` runs it in the user's transaction.

    Returns:
        Whether the pair was not done before.
    """
    done = await conn.fetchval(
        f"INSERT INTO {tables.inbox} AS entry (consumer, message_id, added_at, claimed_until) "
        "VALUES ($1, $2, now(), NULL) "
        "ON CONFLICT (consumer, message_id) DO UPDATE "
        "SET added_at = excluded.added_at, claimed_until = NULL "
        "WHERE entry.claimed_until IS NOT NULL "
        "RETURNING true",
        consumer,
        message_id,
    )
    return done is not None


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

# A workflow's lease runs out at ``lease_until``, by the server's clock. now()
# is the start of the transaction; every write below is one statement in
# autocommit mode, or reads now() in the first statement of its transaction,
# so now() is the time of the write. ``now() + make_interval(secs => NULL)``
# is NULL: a record written without an owner gets no lease time.
#
# History entries are the rows of the history table, numbered 0, 1, ... per
# workflow. Only a write that holds the workflow's version (its create, or a
# save whose version matched) appends to it, so the next number is one past
# the highest, read from the primary key's index: a save's cost does not grow
# with the history.


def _array(statuses: tuple[str, ...]) -> str:
    """Statuses as a SQL array literal (they are constants, never input)."""
    return "ARRAY[" + ", ".join(f"'{status}'" for status in statuses) + "]::text[]"


#: The statuses whose workflows have an owner, as a SQL array literal.
_UNFINISHED = _array(UNFINISHED)
#: The statuses a claim of one workflow and a renewal take: those and WAITING.
_CLAIMABLE = _array((*UNFINISHED, WAITING))
#: The statuses a cancel request flags (and keeps through a save).
_CANCELLABLE = _array(("RUNNING", WAITING))

# A WAITING record is due at once (``wake_at`` now) when a message no consumer
# took is kept on its channel and key. Under READ COMMITTED, a delivery and a
# WAITING save of one (name, channel, key) running at once could each miss the
# other: the save's EXISTS does not see the message not yet committed, the
# delivery's UPDATE does not see the row not yet WAITING. Both take one
# transaction-scoped advisory lock on the (name, channel, key) first, in a
# statement of its own, so that the second one's statements start after the
# first committed and see what it wrote. The transactions are READ COMMITTED
# whatever the server's default (a snapshot taken before the lock would miss
# it again). A checkpoint that does not wait on a channel takes no lock: it is
# the one statement it always was.


def wait_lock(name: str, channel: str, key: str) -> str:
    """The SQL call taking the advisory lock of the waits on ``(name, channel,
    key)`` (each an SQL expression) until the transaction ends."""
    return (
        f"pg_advisory_xact_lock(hashtextextended("
        f"{name} || chr(31) || {channel} || chr(31) || {key}, 0))"
    )


def _wake(tables: Tables, at: str, *, cancel: bool, pending: tuple[str, str, str] | None) -> str:
    """The SQL of a WAITING record's ``wake_at``: now when its cancel is
    requested (``cancel``) or a message no consumer took is kept on ``pending``
    (its name, channel and key as SQL expressions), else ``at``."""
    due: list[str] = ["cancel_requested"] if cancel else []
    if pending is not None:
        name, channel, key = pending
        due.append(
            f"EXISTS (SELECT 1 FROM {tables.mailbox} AS m WHERE m.name = {name} "
            f"AND m.channel = {channel} AND m.key = {key} AND m.consumer IS NULL)"
        )
    if not due:
        return f"{at}::timestamptz"
    return f"CASE WHEN {' OR '.join(due)} THEN now() ELSE {at}::timestamptz END"


async def create_workflow(
    conn: Connection,
    tables: Tables,
    workflow_id: str,
    name: str,
    status: str,
    state: str,
    owner: str | None,
    lease: float | None,
    history: list[str],
    wake_at: datetime | None = None,
    wait_for: str | None = None,
    wait_key: str | None = None,
) -> tuple[Row, bool]:
    """Insert a record at version 1 with its first history entries (one
    transaction), or return the row that has its id.

    A WAITING record keeps ``wake_at``, ``wait_for`` and ``wait_key`` (the
    caller passes None for any other status), and is due now when a message no
    consumer took is kept on its channel and key.
    """
    waits = status == WAITING and wait_for is not None and wait_key is not None
    wake = _wake(tables, "$7", cancel=False, pending=("$2", "$8", "$9") if waits else None)
    async with conn.transaction(isolation="read_committed" if waits else None):
        if waits:
            await conn.execute(f"SELECT {wait_lock('$1', '$2', '$3')}", name, wait_for, wait_key)
        row = await conn.fetchrow(
            f"INSERT INTO {tables.workflows} (id, name, status, version, state, created_at, "
            "updated_at, owner, lease_until, cancel_requested, wake_at, wait_for, wait_key) "
            "VALUES ($1, $2, $3, 1, $4::jsonb, now(), now(), $5, "
            f"now() + make_interval(secs => $6), false, {wake}, $8, $9) "
            f"ON CONFLICT (id) DO NOTHING RETURNING {WORKFLOW_COLUMNS}",
            workflow_id,
            name,
            status,
            state,
            owner,
            lease,
            wake_at,
            wait_for,
            wait_key,
        )
        if row is not None:
            # Entries left by a record removed by hand are not this one's.
            await conn.execute(f"DELETE FROM {tables.history} WHERE workflow_id = $1", workflow_id)
            if history:
                await conn.execute(
                    f"INSERT INTO {tables.history} (workflow_id, seq, entry) "
                    "SELECT $1, h.n - 1, h.entry::jsonb "
                    "FROM unnest($2::text[]) WITH ORDINALITY AS h(entry, n)",
                    workflow_id,
                    history,
                )
            return row, True
    return await _workflow_row(conn, tables, workflow_id), False


#: A save's ``UPDATE`` of the record, ``$1`` to ``$6`` (``$7`` to ``$9`` the
#: wait of a WAITING one): ``{wait}`` sets the wait's columns, ``{more}`` adds
#: them to what it returns.
_SAVE_UPDATE = (
    "UPDATE {w} AS w SET status = $2, state = $3::jsonb, version = version + 1, "
    "updated_at = now(), owner = $5, lease_until = now() + make_interval(secs => $6), "
    f"cancel_requested = ($2 = ANY({_CANCELLABLE}) AND cancel_requested), {{wait}} "
    "WHERE id = $1 AND version = $4 "
    "RETURNING name, created_at, updated_at, owner, lease_until, cancel_requested{more}"
)
#: What a save of any status but WAITING writes of the wait: nothing.
_NO_WAIT = "wake_at = NULL, wait_for = NULL, wait_key = NULL"


async def save_workflow(
    conn: Connection,
    tables: Tables,
    workflow_id: str,
    status: str,
    state: str,
    version: int,
    owner: str | None,
    lease: float | None,
    history: list[str],
    wake_at: datetime | None = None,
    wait_for: str | None = None,
    wait_key: str | None = None,
) -> Row:
    """Write a record read at ``version`` and append ``history`` to its own, in
    one statement; return its name, times, owner and cancel request (and, for a
    WAITING record, its ``wake_at``, ``wait_for`` and ``wait_key``).

    A WAITING record keeps its wait (the caller passes None for any other
    status), due now when its cancel is requested or a message no consumer
    took is kept on its channel and key; a record waiting on a channel is
    written in a transaction holding that channel's :func:`wait_lock`.

    Raises:
        ConcurrencyConflict: if the stored version is another.
        WorkflowNotFound: if no record has this id.
    """
    args: list[object] = [workflow_id, status, state, version, owner, lease]
    waits = False
    if status == WAITING:
        waits = wait_for is not None and wait_key is not None
        args += [wake_at, wait_for, wait_key]
        wake = _wake(tables, "$7", cancel=True, pending=("w.name", "$8", "$9") if waits else None)
        update = _SAVE_UPDATE.format(
            w=tables.workflows,
            wait=f"wake_at = {wake}, wait_for = $8, wait_key = $9",
            more=", wake_at, wait_for, wait_key",
        )
    else:
        update = _SAVE_UPDATE.format(w=tables.workflows, wait=_NO_WAIT, more="")
    if history:
        # The entries are inserted only when the update matched (joined with
        # its one returned row), numbered on from the highest stored.
        args.append(history)
        sql = (
            f"WITH saved AS ({update}), appended AS ("
            f"INSERT INTO {tables.history} (workflow_id, seq, entry) "
            "SELECT $1, last.seq + h.n, h.entry::jsonb FROM saved, "
            f"(SELECT COALESCE(max(seq), -1) AS seq FROM {tables.history} "
            "WHERE workflow_id = $1) AS last, "
            f"unnest(${len(args)}::text[]) WITH ORDINALITY AS h(entry, n)) "
            "SELECT * FROM saved"
        )
    else:
        sql = update
    if waits:
        async with conn.transaction(isolation="read_committed"):
            # The stored name (a save keeps it) names the lock; no row, no lock.
            await conn.execute(
                f"SELECT {wait_lock('name', '$2', '$3')} FROM {tables.workflows} WHERE id = $1",
                workflow_id,
                wait_for,
                wait_key,
            )
            row = await conn.fetchrow(sql, *args)
    else:
        row = await conn.fetchrow(sql, *args)
    if row is not None:
        return row
    stored = await conn.fetchval(
        f"SELECT version FROM {tables.workflows} WHERE id = $1", workflow_id
    )
    if stored is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    raise ConcurrencyConflict(
        f"workflow {workflow_id!r} is at version {stored}, not {version}: "
        "it was saved or claimed by someone else"
    )


async def load_workflow(conn: Connection, tables: Tables, workflow_id: str) -> Row:
    """One record's row and its history, as the JSON text of an array of the
    entries in order (column ``history``), read in one statement.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    row = await conn.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS}, COALESCE((SELECT json_agg(h.entry ORDER BY h.seq) "
        f"FROM {tables.history} AS h WHERE h.workflow_id = w.id), '[]')::text AS history "
        f"FROM {tables.workflows} AS w WHERE id = $1",
        workflow_id,
    )
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    return row


async def _workflow_row(conn: Connection, tables: Tables, workflow_id: str) -> Row:
    """One record's row, without history.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    row = await conn.fetchrow(
        f"SELECT {WORKFLOW_COLUMNS} FROM {tables.workflows} WHERE id = $1", workflow_id
    )
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    return row


#: The most statuses a page is read for one status at a time (see list_workflows).
_MERGED_STATUSES = 8


async def list_workflows(
    conn: Connection,
    tables: Tables,
    statuses: list[str] | None,
    name: str | None,
    limit: int | None,
    after: tuple[datetime, str] | None,
) -> list[Row]:
    """The rows of the matching records, oldest first by ``(created_at, id)``,
    after that pair when ``after`` is one (all when ``limit`` is None).

    A page of one status (and name) is read in order from the index on
    ``(status, created_at, id)`` (or ``(name, status, created_at, id)``). A
    page of several statuses reads each one's first rows that way, merged by
    a ``Merge Append``, instead of sorting every record of those statuses.
    """
    if statuses is not None and not statuses:
        return []
    clauses: list[str] = []
    params: list[object] = []
    if name is not None:
        params.append(name)
        clauses.append(f"name = ${len(params)}")
    if after is not None:
        params.extend(after)
        clauses.append(f"(created_at, id) > (${len(params) - 1}::timestamptz, ${len(params)})")
    order = "ORDER BY created_at, id"
    one_at_a_time = statuses is not None and (
        len(statuses) == 1 or (limit is not None and len(statuses) <= _MERGED_STATUSES)
    )
    if statuses is not None and one_at_a_time:
        branches = []
        for status in statuses:
            params.append(status)
            where = " AND ".join([f"status = ${len(params)}", *clauses])
            branches.append(f"SELECT {WORKFLOW_COLUMNS} FROM {tables.workflows} WHERE {where}")
        if len(branches) == 1:
            sql = f"{branches[0]} {order}"
        else:
            params.append(limit)
            sql = " UNION ALL ".join(
                f"({branch} {order} LIMIT ${len(params)})" for branch in branches
            )
            sql = f"SELECT * FROM ({sql}) AS page {order}"
    else:
        if statuses is not None:
            params.append(statuses)
            clauses.append(f"status = ANY(${len(params)}::text[])")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {WORKFLOW_COLUMNS} FROM {tables.workflows}{where} {order}"
    if limit is not None:
        params.append(limit)
        sql += f" LIMIT ${len(params)}"
    return list(await conn.fetch(sql, *params))


async def count_workflows(conn: Connection, tables: Tables) -> list[Row]:
    """``(name, status, count)`` of every pair that has records, grouped along
    the claim index on ``(name, status, lease_until)``."""
    return list(
        await conn.fetch(
            f"SELECT name, status, count(*) AS count FROM {tables.workflows} GROUP BY name, status"
        )
    )


# -- ownership --------------------------------------------------------------------------


async def claim_workflows(
    conn: Connection,
    tables: Tables,
    name: str,
    owner: str,
    lease: float,
    limit: int,
    exclude: list[str],
) -> list[Row]:
    """Take the lease of at most ``limit`` free unfinished records of ``name``,
    oldest first, in one statement; return their rows in that order.

    The free rows are locked ``FOR UPDATE SKIP LOCKED``: concurrent claimers
    pass over each other's rows instead of waiting, and a row another claimer
    took meanwhile is checked again, found held, and left.
    """
    rows = await conn.fetch(
        f"WITH claimed AS (UPDATE {tables.workflows} AS w "
        "SET owner = $2, lease_until = now() + make_interval(secs => $3), "
        "version = w.version + 1 "
        f"FROM (SELECT id FROM {tables.workflows} "
        f"WHERE name = $1 AND status = ANY({_UNFINISHED}) "
        "AND NOT (id = ANY($5::text[])) "
        "AND (owner IS NULL OR lease_until <= now() OR owner = $2) "
        "ORDER BY created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) AS free "
        f"WHERE w.id = free.id RETURNING {_qualified('w')}) "
        "SELECT * FROM claimed ORDER BY created_at, id",
        name,
        owner,
        lease,
        limit,
        exclude,
    )
    return list(rows)


async def claim_workflow(
    conn: Connection, tables: Tables, workflow_id: str, owner: str, lease: float
) -> Row | None:
    """Take the lease of one unfinished record (WAITING included) that is free
    (or ``owner``'s own).

    Returns:
        Its row, or None if it is finished or held by another live owner.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    row = await conn.fetchrow(
        f"UPDATE {tables.workflows} SET owner = $2, "
        "lease_until = now() + make_interval(secs => $3), version = version + 1 "
        f"WHERE id = $1 AND status = ANY({_CLAIMABLE}) "
        "AND (owner IS NULL OR lease_until <= now() OR owner = $2) "
        f"RETURNING {WORKFLOW_COLUMNS}",
        workflow_id,
        owner,
        lease,
    )
    if row is not None:
        return row
    await _workflow_row(conn, tables, workflow_id)  # WorkflowNotFound if missing
    return None


async def renew_leases(
    conn: Connection, tables: Tables, owner: str, workflow_ids: list[str], lease: float
) -> dict[str, bool]:
    """Extend ``owner``'s leases on these unfinished records (WAITING
    included); map each one renewed to its cancel request."""
    rows = await conn.fetch(
        f"UPDATE {tables.workflows} SET lease_until = now() + make_interval(secs => $3) "
        f"WHERE owner = $1 AND id = ANY($2::text[]) AND status = ANY({_CLAIMABLE}) "
        "RETURNING id, cancel_requested",
        owner,
        workflow_ids,
        lease,
    )
    return {row["id"]: row["cancel_requested"] for row in rows}


async def release_workflows(
    conn: Connection, tables: Tables, owner: str, workflow_ids: list[str]
) -> None:
    """Drop ``owner``'s leases on these records; the versions stay."""
    await conn.execute(
        f"UPDATE {tables.workflows} SET owner = NULL, lease_until = NULL "
        "WHERE owner = $1 AND id = ANY($2::text[])",
        owner,
        workflow_ids,
    )


async def request_cancel(
    conn: Connection, tables: Tables, workflow_id: str, notify: str | None = None
) -> Row:
    """Flag a ``RUNNING`` or ``WAITING`` record for cancellation, a WAITING one
    due now (notifying the waits channel ``notify``, if given); return its row,
    flagged or not.

    Raises:
        WorkflowNotFound: if no record has this id.
    """
    row = await conn.fetchrow(
        f"UPDATE {tables.workflows} SET cancel_requested = true, "
        f"wake_at = CASE WHEN status = '{WAITING}' THEN now() ELSE wake_at END "
        f"WHERE id = $1 AND status = ANY({_CANCELLABLE}) RETURNING {WORKFLOW_COLUMNS}",
        workflow_id,
    )
    if row is not None:
        if row["status"] == WAITING and notify is not None:  # its waker looks at once
            await conn.execute("SELECT pg_notify($1, $2)", notify, row["name"])
        return row
    return await _workflow_row(conn, tables, workflow_id)


async def prune_workflows(
    conn: Connection,
    tables: Tables,
    cutoff: datetime,
    statuses: list[str],
    name: str | None,
    limit: int,
) -> int:
    """Delete at most ``limit`` records in ``statuses`` (of ``name``) updated
    before ``cutoff``, the least recently updated first, with their history,
    in one statement."""
    if not statuses:
        return 0
    params: list[object] = [statuses, cutoff]
    clauses = ["status = ANY($1::text[])", "updated_at < $2"]
    if name is not None:
        params.append(name)
        clauses.append(f"name = ${len(params)}")
    params.append(limit)
    removed = await conn.fetchval(
        f"WITH gone AS (DELETE FROM {tables.workflows} WHERE id IN ("
        f"SELECT id FROM {tables.workflows} WHERE {' AND '.join(clauses)} "
        f"ORDER BY updated_at, seq LIMIT ${len(params)}) RETURNING id), "
        f"erased AS (DELETE FROM {tables.history} "
        "WHERE workflow_id IN (SELECT id FROM gone)) "
        "SELECT count(*) FROM gone",
        *params,
    )
    return int(removed)


def _qualified(alias: str) -> str:
    """:data:`WORKFLOW_COLUMNS` of the table named ``alias`` in the query."""
    return ", ".join(f"{alias}.{column.strip()}" for column in WORKFLOW_COLUMNS.split(","))
