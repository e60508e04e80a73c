"""The outbox of a PostgreSQL schema: written through the user's asyncpg
connection, read by a relay through the store's pool.

Writing an envelope also runs ``pg_notify`` in the user's transaction;
PostgreSQL delivers the notification when (and only if) that transaction
commits, and the relay, listening on a connection it holds for the purpose,
wakes at once. A relay without that connection (a pool of one, or a lost
connection) falls back on polling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

from ..._errors import StoreError
from .._outbox import OutboxRow, Wakeable, row_headers
from . import _ops as ops
from ._pool import check_asyncio, describe, translated

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from ._pool import Connection, Pool
    from ._schema import Tables

__all__ = ["PostgresOutbox", "PostgresRelaySession"]

logger = logging.getLogger("flowkit.outbox")

#: Seconds any one relay statement, or the wait for a pooled connection, may take.
_TIMEOUT = 10.0

#: Seconds given to giving the listening connection back.
_RELEASE_WITHIN = 2.0
#: Seconds between attempts to LISTEN again after a failure (polling meanwhile).
_LISTEN_RETRY = 30.0

_CONNECTIONS: tuple[type, ...] = (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)


class PostgresOutbox:
    """The outbox operations of one PostgresStore's schema."""

    connection_kind = "an asyncpg connection"

    def __init__(self, tables: Tables, pool: Callable[[], Pool | None], shown: str) -> None:
        self._tables = tables
        self._pool = pool
        self._shown = shown
        self.channel = tables.outbox_channel
        self._insert = (
            f"WITH added AS (INSERT INTO {tables.outbox} (topic, key, body, headers) "
            "VALUES ($1, $2, $3, ($4::text)::jsonb) RETURNING seq) "
            "SELECT pg_notify($5, '') FROM added"
        )

    # -- on the user's connection --------------------------------------------

    def _check(self, conn: Any, doing: str) -> Connection:
        check_asyncio()
        if not isinstance(conn, _CONNECTIONS):
            raise TypeError(
                f"{doing} takes an asyncpg connection to the PostgresStore's database "
                f"for this bus, not {type(conn).__module__}.{type(conn).__qualname__}"
            )
        db: Connection = conn
        if not db.is_in_transaction():
            raise StoreError(
                f"{doing} writes in your transaction, but the asyncpg connection has none "
                "open: call it inside `async with conn.transaction():`"
            )
        return db

    async def insert(
        self,
        conn: Any,
        topic: str,
        key: str | None,
        body: bytes,
        headers: Mapping[str, str],
    ) -> None:
        """Add an envelope to the outbox, and notify the relays at commit."""
        db = self._check(conn, "outbox publish")
        with translated("PostgreSQL outbox publish"):
            await db.execute(
                self._insert, topic, key, body, json.dumps(dict(headers)), self.channel
            )

    async def record_handled(self, conn: Any, consumer: str, message_id: str) -> bool:
        """Mark the pair done in the inbox, unless it is done already.

        A concurrent transaction marking the same pair waits on the row's lock,
        then sees it done once this one commits.
        """
        db = self._check(conn, "record_handled")
        with translated("PostgreSQL record_handled"):
            return await ops.inbox_complete(db, self._tables, consumer, message_id)

    # -- the relay's own connections ---------------------------------------------

    @contextlib.asynccontextmanager
    async def relay(self) -> AsyncIterator[PostgresRelaySession]:
        """The relay's session on the store's pool, listening while the block lasts."""
        check_asyncio()
        pool = self._pool()
        if pool is None:
            raise StoreError(
                f"the PostgreSQL store {self._shown} is not open; use `async with store:` first"
            )
        session = PostgresRelaySession(pool, self._tables, self.channel)
        try:
            await session.listen()
            yield session
        finally:
            with anyio.CancelScope(shield=True):
                await session.unlisten()


class PostgresRelaySession(Wakeable):
    """The relay's work on a PostgreSQL pool, and the connection it listens on."""

    def __init__(self, pool: Pool, tables: Tables, channel: str) -> None:
        super().__init__()
        self._pool = pool
        self._tables = tables
        self._channel = channel
        self._listening: Connection | None = None
        self._listen_again_at = 0.0

    def _notified(self, *_: object) -> None:
        self.wake()

    async def listen(self) -> None:
        """Hold a pooled connection and LISTEN on it; on failure, poll instead."""
        if self._listening is not None and not self._listening.is_closed():
            return
        await self.unlisten()
        if time.monotonic() < self._listen_again_at:
            return
        max_size = getattr(self._pool, "get_max_size", lambda: 2)()
        if max_size < 2:
            return  # the pool's only connection is the store's: poll
        conn: Connection | None = None
        try:
            conn = await self._pool.acquire(timeout=_TIMEOUT)
            await conn.add_listener(self._channel, self._notified)
        except Exception as exc:
            logger.warning("the outbox relay cannot LISTEN (%s); polling instead", describe(exc))
            self._listen_again_at = time.monotonic() + _LISTEN_RETRY
            if conn is not None:
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)
            return
        self._listening = conn

    async def unlisten(self) -> None:
        """Stop listening and give the connection back to the pool."""
        conn, self._listening = self._listening, None
        if conn is None:
            return
        with anyio.move_on_after(_RELEASE_WITHIN) as scope:
            with contextlib.suppress(Exception):
                if not conn.is_closed():
                    await conn.remove_listener(self._channel, self._notified)
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
        if scope.cancelled_caught:  # a connection that does not answer: drop it
            with contextlib.suppress(Exception):
                conn.terminate()

    async def _run(self, doing: str, op: Callable[[Connection], Any]) -> Any:
        with translated(f"PostgreSQL {doing}"):
            async with self._pool.acquire(timeout=_TIMEOUT) as conn:
                return await op(conn)

    async def fetch(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` stored envelopes at most, oldest first."""
        sql = (
            f"SELECT seq, topic, key, body, headers::text AS headers FROM {self._tables.outbox} "
            "ORDER BY seq LIMIT $1"
        )
        rows = await self._run(
            "outbox fetch", lambda conn: conn.fetch(sql, limit, timeout=_TIMEOUT)
        )
        return [
            OutboxRow(
                int(row["seq"]),
                str(row["topic"]),
                row["key"],
                bytes(row["body"]),
                row_headers(row["seq"], row["headers"]),
            )
            for row in rows
        ]

    async def pending(self) -> int:
        """How many envelopes wait to be published."""
        sql = f"SELECT count(*) FROM {self._tables.outbox}"
        counted = await self._run("outbox count", lambda conn: conn.fetchval(sql, timeout=_TIMEOUT))
        return int(counted)

    async def delete(self, seqs: Sequence[int]) -> None:
        """Delete the envelopes of ``seqs``."""
        if not seqs:
            return
        sql = f"DELETE FROM {self._tables.outbox} WHERE seq = ANY($1::bigint[])"
        await self._run(
            "outbox delete", lambda conn: conn.execute(sql, list(seqs), timeout=_TIMEOUT)
        )

    async def hold_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take or extend the lease, measured by the server's clock."""
        sql = (
            f"INSERT INTO {self._tables.leases} AS lease (name, owner, lease_until) "
            "VALUES ($1, $2, now() + make_interval(secs => $3)) "
            "ON CONFLICT (name) DO UPDATE "
            "SET owner = excluded.owner, lease_until = excluded.lease_until "
            "WHERE lease.owner = excluded.owner OR lease.lease_until <= now() "
            "RETURNING true"
        )
        won = await self._run(
            "outbox lease",
            lambda conn: conn.fetchval(sql, name, owner, float(seconds), timeout=_TIMEOUT),
        )
        return bool(won)

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if ``owner`` holds it."""
        sql = f"DELETE FROM {self._tables.leases} WHERE name = $1 AND owner = $2"
        await self._run(
            "outbox lease release",
            lambda conn: conn.execute(sql, name, owner, timeout=_TIMEOUT),
        )

    async def wait(self, timeout: float) -> None:
        """Wait for a notification, up to ``timeout`` seconds."""
        await self.listen()  # again, if the listening connection was lost
        await super().wait(timeout)
