"""The waits of a PostgreSQL schema: the due WAITING rows of its
``flowkit_workflows`` table, and its ``flowkit_mailbox`` table (see
:mod:`flowkit.stores._waits`).

Due workflows are claimed the way free ones are, by one ``UPDATE`` of the rows
a subquery picks ``FOR UPDATE SKIP LOCKED``, soonest ``wake_at`` first, along
the partial index of the WAITING rows on ``(name, wake_at)``. A message is
taken the same way, so two takers never get one message. Times are the
server's (``now()``).

A delivery and a WAITING save of the same ``(name, channel, key)`` take one
advisory lock (:func:`~flowkit.stores._postgres._ops.wait_lock`) before they
look at each other's rows, so neither misses the other: a message delivered
as a workflow starts waiting for it either finds the workflow WAITING and
makes it due, or is found by the save, which stores the workflow due.

A delivery that makes a workflow due also runs ``pg_notify`` on the schema's
channel (``Tables.waits_channel``), with the orchestrator's name, in its
transaction: PostgreSQL delivers the notification when (and only if) it
commits. :meth:`PostgresWaits.sleep` listens on a pooled connection it holds
for the purpose, so a waker in any process looks in the store at once; without
that connection (a pool of fewer than three, a failure) it sleeps, and the
waker sees the delivery at its next look.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from .._codec import claim_limit, claimant_lease, encode_state, prune_limit, utc
from .._waits import WAITING, Delivery, check_channel
from ._ops import wait_lock
from ._pool import describe
from ._rows import MAIL_COLUMNS, WORKFLOW_COLUMNS, mail_from_row, workflow_from_row

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Mapping
    from datetime import datetime

    from .._base import WorkflowRecord
    from .._waits import Mail
    from ._pool import Connection, Pool
    from ._schema import Tables

    #: ``PostgresStore._run``: runs ``op(conn, tables, *args)`` on a pooled connection.
    _Run = Callable[..., Awaitable[Any]]

__all__ = ["PostgresWaits"]

Row = Any  # an asyncpg.Record

logger = logging.getLogger("flowkit.stores")

#: Seconds the wait for the listening connection, or its LISTEN, may take.
_LISTEN_WITHIN = 5.0
#: Seconds given to giving the listening connection back.
_RELEASE_WITHIN = 2.0
#: Seconds between attempts to LISTEN again after a failure (sleeping meanwhile).
_LISTEN_RETRY = 10.0
#: The smallest pool that spares a connection to listen on: one for the
#: store's operations, one the outbox relay may listen on, this one.
_LISTEN_POOL = 3


# -- the operations, each on one pooled connection ------------------------------------


async def wait_claim_due(
    conn: Connection,
    tables: Tables,
    name: str,
    owner: str,
    lease: float,
    limit: int,
    exclude: list[str],
) -> list[Row]:
    """Take the lease of at most ``limit`` due WAITING records of ``name`` that
    nobody holds, soonest ``wake_at`` first, in one statement;
    return their rows in that order.

    The due rows are read in the order of the partial index on ``(name,
    wake_at)``, so a claim stops after ``limit`` of them however many are due,
    and locked ``FOR UPDATE SKIP LOCKED``: concurrent claimers pass over each
    other's rows, and a row another claimer took meanwhile is checked again,
    found held, and left.
    """
    w = tables.workflows
    rows = await conn.fetch(
        f"WITH claimed AS (UPDATE {w} AS w "
        "SET owner = $2, lease_until = now() + make_interval(secs => $3), "
        "version = w.version + 1 "
        f"FROM (SELECT id FROM {w} "
        f"WHERE name = $1 AND status = '{WAITING}' AND wake_at <= now() "
        "AND NOT (id = ANY($5::text[])) "
        "AND (owner IS NULL OR lease_until <= now()) "
        "ORDER BY wake_at LIMIT $4 FOR UPDATE SKIP LOCKED) AS due "
        "WHERE w.id = due.id RETURNING w.*) "
        f"SELECT {WORKFLOW_COLUMNS} FROM claimed ORDER BY wake_at, id",
        name,
        owner,
        lease,
        limit,
        exclude,
    )
    return list(rows)


async def wait_next_wake(conn: Connection, tables: Tables, name: str) -> float | None:
    """Seconds from now to the soonest ``wake_at`` of the WAITING records of
    ``name`` nobody holds, by the server's clock; read from the front of the
    partial index on ``(name, wake_at)``."""
    seconds = await conn.fetchval(
        f"SELECT EXTRACT(EPOCH FROM MIN(wake_at) - now())::float8 FROM {tables.workflows} "
        f"WHERE name = $1 AND status = '{WAITING}' AND owner IS NULL",
        name,
    )
    return None if seconds is None else float(seconds)


async def wait_deliver(
    conn: Connection,
    tables: Tables,
    name: str,
    channel: str,
    key: str,
    message_id: str,
    body: str,
    notify: str | None = None,
) -> tuple[bool, list[str]]:
    """Keep a message (once per id) and make the records waiting on its channel
    and key due now, in a transaction holding the lock of those waits; when it
    made one due, notify the channel ``notify`` (if given) with ``name`` as
    the transaction commits.

    Returns:
        Whether the message was new, and the ids of the records made due.
    """
    async with conn.transaction(isolation="read_committed"):
        await conn.execute(f"SELECT {wait_lock('$1', '$2', '$3')}", name, channel, key)
        row = await conn.fetchrow(
            f"WITH added AS (INSERT INTO {tables.mailbox} "
            "(name, channel, key, message_id, body) VALUES ($1, $2, $3, $4, $5::jsonb) "
            "ON CONFLICT (name, channel, key, message_id) DO NOTHING RETURNING seq), "
            f"woken AS (UPDATE {tables.workflows} SET wake_at = now() "
            f"WHERE name = $1 AND status = '{WAITING}' AND wait_for = $2 AND wait_key = $3 "
            "RETURNING id) "
            "SELECT EXISTS (SELECT 1 FROM added) AS stored, "
            "ARRAY(SELECT id FROM woken ORDER BY id) AS woken",
            name,
            channel,
            key,
            message_id,
            body,
        )
        woken = list(row["woken"])
        if woken and notify is not None:
            await conn.execute("SELECT pg_notify($1, $2)", notify, name)
    return bool(row["stored"]), woken


async def wait_take(
    conn: Connection, tables: Tables, name: str, channel: str, key: str, consumer: str
) -> Row | None:
    """Mark taken by ``consumer`` the message it took before, else the oldest
    no consumer took, in one statement; its row, or None when there is none.

    The candidate is locked ``FOR UPDATE SKIP LOCKED``: a message another
    taker is taking is passed over, and one it took meanwhile is checked
    again and left.
    """
    m = tables.mailbox
    row: Row | None = await conn.fetchrow(
        f"WITH taken AS (UPDATE {m} AS m SET consumer = $4 FROM (SELECT seq FROM {m} "
        "WHERE name = $1 AND channel = $2 AND key = $3 AND (consumer IS NULL OR consumer = $4) "
        "ORDER BY consumer IS NULL, seq LIMIT 1 FOR UPDATE SKIP LOCKED) AS free "
        f"WHERE m.seq = free.seq RETURNING m.*) SELECT {MAIL_COLUMNS} FROM taken",
        name,
        channel,
        key,
        consumer,
    )
    return row


async def wait_drop(conn: Connection, tables: Tables, name: str, consumer: str) -> int:
    """Delete the messages of ``name`` that ``consumer`` took."""
    removed = await conn.fetchval(
        f"WITH gone AS (DELETE FROM {tables.mailbox} WHERE name = $1 AND consumer = $2 "
        "RETURNING 1) SELECT count(*) FROM gone",
        name,
        consumer,
    )
    return int(removed)


async def wait_prune(conn: Connection, tables: Tables, cutoff: datetime, limit: int) -> int:
    """Delete at most ``limit`` messages delivered before ``cutoff``, oldest first."""
    m = tables.mailbox
    removed = await conn.fetchval(
        f"WITH gone AS (DELETE FROM {m} WHERE seq IN (SELECT seq FROM {m} "
        "WHERE created_at < $1 ORDER BY created_at, seq LIMIT $2) RETURNING 1) "
        "SELECT count(*) FROM gone",
        cutoff,
        limit,
    )
    return int(removed)


# -- the store's face ----------------------------------------------------------------


class PostgresWaits:
    """The waits of one :class:`~flowkit.stores.PostgresStore`: a
    :class:`~flowkit.stores._waits.WaitStore`.

    Args:
        run: the store's ``_run``: an operation on a pooled connection, its
            errors raised as :class:`~flowkit.StoreError`.
        pool: the store's pool while it is open (None: no :meth:`sleep`
            listens, and deliveries notify nobody).
        channel: the schema's notification channel (``Tables.waits_channel``).
    """

    def __init__(
        self,
        run: _Run,
        *,
        pool: Callable[[], Pool | None] | None = None,
        channel: str | None = None,
    ) -> None:
        self._run = run
        self._pool = pool
        self.channel = channel if pool is not None else None
        #: Per name slept on: set when a notification for it came (and no
        #: sleep consumed it yet).
        self._heard: dict[str, anyio.Event] = {}
        self._listening: tuple[Pool, Connection] | None = None
        self._listen_lock: anyio.Lock | None = None
        self._listen_again_at = 0.0
        self._warned = False

    async def claim_due(
        self,
        name: str,
        owner: str,
        *,
        lease: float,
        limit: int = 100,
        exclude: Collection[str] = (),
    ) -> list[WorkflowRecord]:
        """One ``UPDATE`` claims the due rows a subquery picks ``FOR UPDATE SKIP
        LOCKED``, so concurrent claimers never claim one workflow twice."""
        held = claimant_lease(owner, lease)
        most = claim_limit(limit)
        skip = [exclude] if isinstance(exclude, str) else list(exclude)
        rows = await self._run(wait_claim_due, name, owner, held, most, skip)
        return [workflow_from_row(row) for row in rows]

    async def next_wake(self, name: str) -> float | None:
        """Computed by the server, from its clock."""
        seconds: float | None = await self._run(wait_next_wake, name)
        return seconds

    async def deliver(
        self, name: str, channel: str, key: str, message_id: str, body: Mapping[str, Any]
    ) -> Delivery:
        """The message is kept and the waits woken in one short transaction."""
        check_channel(name, channel, key)
        check_channel(name, channel, message_id)
        text = encode_state(body)
        stored, woken = await self._run(
            wait_deliver, name, channel, key, message_id, text, self.channel
        )
        return Delivery(stored=stored, woken=tuple(woken))

    async def take(self, name: str, channel: str, key: str, consumer: str) -> Mail | None:
        """One ``UPDATE`` marks the message a subquery picks ``FOR UPDATE SKIP LOCKED``."""
        check_channel(name, channel, key)
        row = await self._run(wait_take, name, channel, key, consumer)
        return None if row is None else mail_from_row(row)

    async def drop(self, name: str, consumer: str) -> int:
        removed: int = await self._run(wait_drop, name, consumer)
        return removed

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        """One ``DELETE`` removes at most ``limit`` messages."""
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        removed: int = await self._run(wait_prune, cutoff, most)
        return removed

    # -- hearing of deliveries ---------------------------------------------------------

    async def sleep(self, name: str, seconds: float) -> None:
        """Return after ``seconds``, or sooner when a notification for ``name``
        comes: a delivery, by any process, made a workflow of ``name`` due.

        A notification that came since the last sleep for ``name`` ended (while
        the caller looked in the store) ends this one at once. The connection
        it listens on is taken from the pool the first time, and again after
        it is lost; when that fails it logs one warning, sleeps, and tries
        again some seconds later.
        """
        deadline = anyio.current_time() + max(seconds, 0.0)
        heard = self._heard.get(name)
        if heard is None:
            heard = self._heard[name] = anyio.Event()
        if not heard.is_set():
            with anyio.move_on_after(max(seconds, 0.0)):
                await self._listen(deadline)
                await heard.wait()
        if heard.is_set() and self._heard.get(name) is heard:
            self._heard[name] = anyio.Event()  # consumed

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        heard = self._heard.get(payload)
        if heard is not None:
            heard.set()

    async def _listen(self, deadline: float) -> None:
        """Hold a pooled connection listening on the channel, unless one is
        held, the pool cannot spare one, or a failure is recent."""
        held = self._listening
        pool = None if self._pool is None else self._pool()
        if held is not None and held[0] is pool and _alive(held[1]):
            return
        if self._listen_lock is None:
            self._listen_lock = anyio.Lock()
        async with self._listen_lock:
            held = self._listening
            if held is not None:
                if held[0] is pool and _alive(held[1]):
                    return
                await self._unlisten()  # lost, or of a pool closed since
            if pool is None or self.channel is None or time.monotonic() < self._listen_again_at:
                return
            if getattr(pool, "get_max_size", lambda: _LISTEN_POOL)() < _LISTEN_POOL:
                return  # the pool cannot spare a connection: sleep
            within = min(_LISTEN_WITHIN, max(deadline - anyio.current_time(), 0.05))
            try:
                with anyio.fail_after(within):
                    conn = await pool.acquire(timeout=within)
                    try:
                        await conn.add_listener(self.channel, self._notified)
                    except BaseException:
                        with anyio.CancelScope(shield=True):
                            await _give_back(pool, conn, None, None)
                        raise
            except Exception as exc:
                self._listen_again_at = time.monotonic() + _LISTEN_RETRY
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "the waits cannot LISTEN for deliveries by other processes (%s); "
                        "looking for them every poll instead",
                        describe(exc),
                    )
                return
            self._warned = False
            if self._pool is None or self._pool() is not pool:  # closed meanwhile
                with anyio.CancelScope(shield=True):
                    await _give_back(pool, conn, self.channel, self._notified)
                return
            self._listening = (pool, conn)

    async def close(self) -> None:
        """Stop listening and give the connection back to its pool (the store
        closes); a sleep under way sleeps on."""
        await self._unlisten()
        self._heard.clear()

    async def _unlisten(self) -> None:
        held, self._listening = self._listening, None
        if held is not None and self.channel is not None:
            with anyio.CancelScope(shield=True):
                await _give_back(held[0], held[1], self.channel, self._notified)


def _alive(conn: Connection) -> bool:
    """Whether a held connection is still open (a lost one is released by its
    pool, and its proxy then answers nothing)."""
    try:
        return not conn.is_closed()
    except Exception:
        return False


async def _give_back(
    pool: Pool, conn: Connection, channel: str | None, listener: Callable[..., None] | None
) -> None:
    """Remove the listener and release the connection, within
    ``_RELEASE_WITHIN`` seconds; a connection that does not answer is dropped."""
    with anyio.move_on_after(_RELEASE_WITHIN) as scope:
        if channel is not None and listener is not None:
            with contextlib.suppress(Exception):
                if _alive(conn):
                    await conn.remove_listener(channel, listener)
        with contextlib.suppress(Exception):
            await pool.release(conn)
    if scope.cancelled_caught:
        with contextlib.suppress(Exception):
            conn.terminate()
