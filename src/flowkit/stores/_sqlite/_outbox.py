"""The outbox of an SQLite database: written through the user's sqlite3
connection, read by a relay through a connection of its own.

The user's connection is used where the user calls, on the user's thread
(sqlite3 connections belong to the thread that made them); the statements are
short, and run inside a transaction the user holds, so they do not wait for
another writer once the transaction has written. The relay's connection runs
in a worker thread (``anyio.to_thread``), one call at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from ..._errors import StoreError
from .._outbox import OutboxRow, Wakeable, row_headers
from . import _ops as ops
from ._rows import timestamp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence


__all__ = ["SQLiteOutbox", "SQLiteRelaySession"]

#: Rows deleted per statement (SQLite binds at most 32,766 parameters).
_DELETE_CHUNK = 500


def _failed(doing: str, exc: sqlite3.Error) -> StoreError:
    # sqlite3's messages name tables and columns, never a row's values.
    return StoreError(f"SQLite {doing} failed: {type(exc).__name__}: {exc}")


class SQLiteOutbox:
    """The outbox operations of one SQLite database file.

    Attributes:
        path: the database file's absolute path.
        busy_timeout: seconds the relay's connection waits for another writer.
    """

    connection_kind = "an sqlite3.Connection"

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._real = os.path.realpath(path)
        self._same: dict[str, bool] = {}  # main file as a connection names it -> ours?

    # -- on the user's connection --------------------------------------------

    def _check(self, conn: Any, doing: str) -> sqlite3.Connection:
        if not isinstance(conn, sqlite3.Connection):
            raise TypeError(
                f"{doing} takes an sqlite3.Connection to the SQLiteStore's database "
                f"for this bus, not {type(conn).__module__}.{type(conn).__qualname__}"
            )
        autocommit = conn.isolation_level is None or getattr(conn, "autocommit", None) is True
        if autocommit and not conn.in_transaction:
            raise StoreError(
                f"{doing} writes in your transaction, but the sqlite3 connection has none "
                "open (it is in autocommit mode): run conn.execute('BEGIN IMMEDIATE') "
                "first, and commit your writes with it"
            )
        try:
            rows = conn.execute("PRAGMA database_list").fetchall()
        except sqlite3.Error as exc:
            raise _failed(doing, exc) from exc
        main = next((str(row[2]) for row in rows if row[1] == "main"), "")
        same = self._same.get(main)
        if same is None:
            same = bool(main) and os.path.realpath(main) == self._real
            if len(self._same) < 64:
                self._same[main] = same
        if not same:
            raise StoreError(
                f"{doing}: the sqlite3 connection is to another database than the "
                "bus's SQLiteStore; connect to the store's file (SQLiteStore.path)"
            )
        return conn

    async def insert(
        self,
        conn: Any,
        topic: str,
        key: str | None,
        body: bytes,
        headers: Mapping[str, str],
    ) -> None:
        """Add an envelope to ``flowkit_outbox`` in the connection's transaction."""
        db = self._check(conn, "outbox publish")
        try:
            db.execute(
                "INSERT INTO flowkit_outbox (topic, key, body, headers, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (topic, key, body, json.dumps(dict(headers)), timestamp(datetime.now(UTC))),
            )
        except sqlite3.Error as exc:
            raise _failed("outbox publish", exc) from exc

    async def record_handled(self, conn: Any, consumer: str, message_id: str) -> bool:
        """Mark the pair done in ``flowkit_inbox``, unless it is done already."""
        db = self._check(conn, "record_handled")
        try:
            return ops.inbox_complete(db, consumer, message_id)
        except sqlite3.Error as exc:
            raise _failed("record_handled", exc) from exc

    # -- the relay's own connection --------------------------------------------

    @contextlib.asynccontextmanager
    async def relay(self) -> AsyncIterator[SQLiteRelaySession]:
        """A connection for the relay, open while the block lasts."""

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )

        try:
            conn = await anyio.to_thread.run_sync(connect)
        except sqlite3.Error as exc:
            raise _failed("opening the outbox relay's connection", exc) from exc
        session = SQLiteRelaySession(conn)
        try:
            yield session
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(conn.close)


class SQLiteRelaySession(Wakeable):
    """The relay's connection to an SQLite database, used one call at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self._conn = conn
        self._lock = anyio.Lock()

    async def _run(self, doing: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        async with self._lock:
            try:
                return await anyio.to_thread.run_sync(fn, self._conn)
            except sqlite3.Error as exc:
                raise _failed(doing, exc) from exc

    async def fetch(self, limit: int) -> list[OutboxRow]:
        """The oldest ``limit`` stored envelopes at most, oldest first."""

        def fetch(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                "SELECT seq, topic, key, body, headers FROM flowkit_outbox ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()

        rows: list[tuple[Any, ...]] = await self._run("outbox fetch", fetch)
        return [
            OutboxRow(int(seq), str(topic), key, bytes(body), row_headers(seq, headers))
            for seq, topic, key, body, headers in rows
        ]

    async def pending(self) -> int:
        """How many envelopes wait to be published."""

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM flowkit_outbox").fetchone()[0])

        counted: int = await self._run("outbox count", count)
        return counted

    async def delete(self, seqs: Sequence[int]) -> None:
        """Delete the envelopes of ``seqs``, in one transaction."""
        if not seqs:
            return

        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(seqs), _DELETE_CHUNK):
                    chunk = seqs[start : start + _DELETE_CHUNK]
                    conn.execute(
                        f"DELETE FROM flowkit_outbox WHERE seq IN ({','.join('?' * len(chunk))})",
                        tuple(chunk),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

        await self._run("outbox delete", delete)

    async def hold_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Take or extend the lease: one upsert that wins only over an expired
        lease or one's own."""

        def hold(conn: sqlite3.Connection) -> bool:
            now = datetime.now(UTC)
            cursor = conn.execute(
                "INSERT INTO flowkit_leases (name, owner, lease_until) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE "
                "SET owner = excluded.owner, lease_until = excluded.lease_until "
                "WHERE flowkit_leases.owner = excluded.owner "
                "OR flowkit_leases.lease_until <= ?",
                (name, owner, timestamp(now + timedelta(seconds=seconds)), timestamp(now)),
            )
            return cursor.rowcount == 1

        held: bool = await self._run("outbox lease", hold)
        return held

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if ``owner`` holds it."""

        def release(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM flowkit_leases WHERE name = ? AND owner = ?", (name, owner))

        await self._run("outbox lease release", release)
