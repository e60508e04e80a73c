"""The flow trace of an SQLite database: the ``flowkit_trace`` table.

Every call runs on the store's writer thread, so a batch of trace entries is
committed with whatever else is queued (inbox claims, checkpoints) in one
transaction. An entry's time is kept as seconds since the epoch (REAL): the
recorder writes many entries, and a number costs less to write and compare
than text. A database of a schema older than the trace (opened read-only)
has no trace: reading it finds nothing.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from .._trace import TRACE_COLUMNS, aware, check_report, entry_of, positive, stalled_window
from ._ops import _atomic

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import datetime

    from .._trace import TraceEntry, TraceRow

    #: ``SQLiteStore._call``: runs ``fn(conn, *args)`` on the writer thread.
    _Call = Callable[..., Awaitable[Any]]

__all__ = ["SQLiteTrace"]

_COLUMNS = ", ".join(TRACE_COLUMNS)
_INSERT = f"INSERT INTO flowkit_trace ({_COLUMNS}) VALUES ({', '.join('?' * len(TRACE_COLUMNS))})"
_SELECT = f"SELECT seq, {_COLUMNS} FROM flowkit_trace"


def _missing(exc: sqlite3.OperationalError) -> bool:
    """Whether the database has no trace table (a read-only file of an older schema)."""
    return "no such table" in str(exc)


# -- the operations, run on the writer thread ----------------------------------------


def trace_add(conn: sqlite3.Connection, rows: Sequence[TraceRow]) -> None:
    with _atomic(conn):  # all the rows, or none: the writer's transaction is shared
        conn.executemany(_INSERT, rows)


def trace_read(
    conn: sqlite3.Connection, correlation_id: str, limit: int, after: int
) -> list[tuple[Any, ...]]:
    try:
        return conn.execute(
            f"{_SELECT} WHERE correlation_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (correlation_id, after, limit),
        ).fetchall()
    except sqlite3.OperationalError as exc:
        if _missing(exc):
            return []
        raise


def trace_count(conn: sqlite3.Connection, correlation_id: str) -> int:
    try:
        row = conn.execute(
            "SELECT count(*) FROM flowkit_trace WHERE correlation_id = ?", (correlation_id,)
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if _missing(exc):
            return 0
        raise
    return int(row[0])


def trace_find(conn: sqlite3.Connection, value: str, limit: int) -> list[str]:
    try:
        found: list[str] = []
        if conn.execute(
            "SELECT 1 FROM flowkit_trace WHERE correlation_id = ? LIMIT 1", (value,)
        ).fetchone():
            found.append(value)
        for column in ("workflow_id", "key"):
            rows = conn.execute(
                f"SELECT correlation_id FROM flowkit_trace WHERE {column} = ? "
                "GROUP BY correlation_id ORDER BY max(seq) DESC LIMIT ?",
                (value, limit),
            ).fetchall()
            found.extend(str(row[0]) for row in rows if row[0] not in found)
    except sqlite3.OperationalError as exc:
        if _missing(exc):
            return []
        raise
    return found[:limit]


def trace_stalled(
    conn: sqlite3.Connection,
    first: str,
    expected: Sequence[str],
    within: float,
    since: float,
    until: float,
    limit: int,
) -> list[tuple[Any, ...]]:
    marks = ", ".join("?" * len(expected))
    # The first publish of ``first`` in each flow of the window (SQLite takes the
    # bare columns from the row of the min), kept when no entry of an expected
    # type came at most ``within`` seconds after it.
    sql = (
        f"SELECT seq, {_COLUMNS} FROM ("
        f"  SELECT seq, {_COLUMNS}, min(at) AS first_at FROM flowkit_trace"
        "   WHERE kind = 'publish' AND message_type = ? AND at >= ? AND at < ?"
        "   GROUP BY correlation_id"
        ") AS f WHERE NOT EXISTS ("
        "  SELECT 1 FROM flowkit_trace AS u WHERE u.correlation_id = f.correlation_id"
        f"  AND u.message_type IN ({marks}) AND u.at <= f.first_at + ?"
        ") ORDER BY first_at, seq LIMIT ?"
    )
    try:
        return conn.execute(sql, (first, since, until, *expected, within, limit)).fetchall()
    except sqlite3.OperationalError as exc:
        if _missing(exc):
            return []
        raise


def trace_report(conn: sqlite3.Connection, row: TraceRow) -> bool:
    cursor = conn.execute(
        f"{_INSERT} ON CONFLICT (correlation_id, detail) WHERE kind = 'stalled' DO NOTHING",
        row,
    )
    return cursor.rowcount == 1


def trace_prune(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    cursor = conn.execute(
        "DELETE FROM flowkit_trace WHERE seq IN "
        "(SELECT seq FROM flowkit_trace WHERE at < ? ORDER BY at LIMIT ?)",
        (cutoff, limit),
    )
    return cursor.rowcount


def trace_cap(conn: sqlite3.Connection, max_entries: int, limit: int) -> int:
    # The rows are numbered in the order they were written and removed oldest
    # first, so the span of their numbers is (about) how many there are.
    low, high = conn.execute("SELECT min(seq), max(seq) FROM flowkit_trace").fetchone()
    if low is None or high - low + 1 <= max_entries:
        return 0
    below = min(high - max_entries + 1, low + limit)
    return conn.execute("DELETE FROM flowkit_trace WHERE seq < ?", (below,)).rowcount


# -- the store's face ----------------------------------------------------------------


class SQLiteTrace:
    """The trace operations of one :class:`~flowkit.stores.SQLiteStore`.

    Args:
        call: the store's call on its writer thread.
    """

    def __init__(self, call: _Call) -> None:
        self._call = call

    async def add(self, rows: Sequence[TraceRow]) -> None:
        """Append entries, in one statement of the writer's next transaction."""
        if rows:
            await self._call(trace_add, list(rows), write=True)

    async def read(
        self, correlation_id: str, *, limit: int = 1000, after: int | None = None
    ) -> list[TraceEntry]:
        """A flow's entries in the order they were stored."""
        rows = await self._call(
            trace_read, correlation_id, positive(limit, "limit"), after or 0, write=False
        )
        return [entry_of(int(row[0]), row[1:]) for row in rows]

    async def count(self, correlation_id: str) -> int:
        """How many entries a flow has."""
        counted: int = await self._call(trace_count, correlation_id, write=False)
        return counted

    async def find(self, value: str, *, limit: int = 20) -> list[str]:
        """The flows ``value`` names, as a correlation id, a workflow id or a business key."""
        found: list[str] = await self._call(
            trace_find, value, positive(limit, "limit"), write=False
        )
        return found

    async def stalled(
        self,
        first: str,
        expected: Sequence[str],
        *,
        within: float,
        since: datetime,
        until: datetime,
        limit: int = 100,
    ) -> list[TraceEntry]:
        """Flows in which ``first`` was published but nothing of ``expected`` followed in time."""
        types, start, end, most = stalled_window(expected, since, until, limit)
        rows = await self._call(
            trace_stalled,
            first,
            types,
            float(within),
            start.timestamp(),
            end.timestamp(),
            most,
            write=False,
        )
        return [entry_of(int(row[0]), row[1:]) for row in rows]

    async def report(self, name: str, correlation_id: str, row: TraceRow) -> bool:
        """Add a ``stalled`` entry unless the flow has one for ``name`` (atomic)."""
        check_report(name, correlation_id, row)
        done: bool = await self._call(trace_report, row, write=True)
        return done

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        """Remove entries recorded before ``older_than``, the oldest first."""
        removed: int = await self._call(
            trace_prune,
            aware(older_than, "older_than").timestamp(),
            positive(limit, "limit"),
            write=True,
        )
        return removed

    async def cap(self, max_entries: int, *, limit: int = 10_000) -> int:
        """Remove the oldest entries beyond the newest ``max_entries``."""
        removed: int = await self._call(
            trace_cap,
            positive(max_entries, "max_entries"),
            positive(limit, "limit"),
            write=True,
        )
        return removed
