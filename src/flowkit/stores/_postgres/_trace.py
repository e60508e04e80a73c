"""The flow trace of a PostgreSQL schema: its ``flowkit_trace`` table.

A batch of entries is one ``INSERT ... SELECT FROM unnest(...)`` statement, one
array per column, whatever its size: a single round trip, parsed once. Times
are the recording processes' (``at`` comes with each entry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

from .._trace import TRACE_COLUMNS, aware, check_report, entry_of, positive, stalled_window

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence
    from datetime import datetime

    from .._trace import TraceEntry, TraceRow
    from ._pool import Connection
    from ._schema import Tables

    #: ``PostgresStore._run``: runs ``op(conn, tables, *args)`` on a pooled connection.
    _Run = Callable[..., Awaitable[Any]]

__all__ = ["PostgresTrace"]

_COLUMNS = ", ".join(TRACE_COLUMNS)
#: The SQL type of each column's array, in the order of TRACE_COLUMNS.
_ARRAY_TYPES = (
    "float8[]",  # at, seconds since the epoch
    *("text[]",) * 11,  # correlation_id .. step
    "int4[]",  # attempt
    "float8[]",  # duration
    *("text[]",) * 4,  # error_type .. detail
)
_VALUES = ", ".join(f"to_timestamp(c{i})" if i == 0 else f"c{i}" for i in range(len(TRACE_COLUMNS)))
_UNNEST = ", ".join(f"${i + 1}::{kind}" for i, kind in enumerate(_ARRAY_TYPES))
_NAMES = ", ".join(f"c{i}" for i in range(len(TRACE_COLUMNS)))
_ONE = ", ".join(
    f"to_timestamp(${i + 1})" if i == 0 else f"${i + 1}" for i in range(len(TRACE_COLUMNS))
)


def _table(tables: Tables) -> str:
    return f"{tables.quoted}.flowkit_trace"


def _clean(value: object) -> object:
    """A text without NUL characters, which PostgreSQL text cannot hold."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


def _entry(row: Any) -> TraceEntry:
    return entry_of(int(row[0]), tuple(row)[1:])


# -- the operations, each on one pooled connection ------------------------------------


async def trace_add(conn: Connection, tables: Tables, rows: Sequence[TraceRow]) -> None:
    sql = (
        f"INSERT INTO {_table(tables)} ({_COLUMNS}) "
        f"SELECT {_VALUES} FROM unnest({_UNNEST}) AS t ({_NAMES})"
    )
    columns = [list(column) for column in zip(*rows, strict=True)]
    try:
        await conn.execute(sql, *columns)
    except asyncpg.CharacterNotInRepertoireError:
        # An id or a name with a NUL character: keep the entries, with U+FFFD for it.
        await conn.execute(sql, *([_clean(v) for v in column] for column in columns))


async def trace_read(
    conn: Connection, tables: Tables, correlation_id: str, limit: int, after: int
) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"SELECT seq, {_COLUMNS} FROM {_table(tables)} "
        "WHERE correlation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        correlation_id,
        after,
        limit,
    )
    return rows


async def trace_count(conn: Connection, tables: Tables, correlation_id: str) -> int:
    counted = await conn.fetchval(
        f"SELECT count(*) FROM {_table(tables)} WHERE correlation_id = $1", correlation_id
    )
    return int(counted)


async def trace_find(conn: Connection, tables: Tables, value: str, limit: int) -> list[str]:
    table = _table(tables)
    found: list[str] = []
    if await conn.fetchval(f"SELECT true FROM {table} WHERE correlation_id = $1 LIMIT 1", value):
        found.append(value)
    for column in ("workflow_id", "key"):
        rows = await conn.fetch(
            f"SELECT correlation_id FROM {table} WHERE {column} = $1 "
            "GROUP BY correlation_id ORDER BY max(seq) DESC LIMIT $2",
            value,
            limit,
        )
        found.extend(str(row[0]) for row in rows if row[0] not in found)
    return found[:limit]


async def trace_stalled(
    conn: Connection,
    tables: Tables,
    first: str,
    expected: list[str],
    within: float,
    since: datetime,
    until: datetime,
    limit: int,
) -> list[Any]:
    table = _table(tables)
    # The first publish of ``first`` in each flow of the window, kept when no
    # entry of an expected type came at most ``within`` seconds after it.
    rows: list[Any] = await conn.fetch(
        f"SELECT f.* FROM ("
        f"  SELECT DISTINCT ON (correlation_id) seq, {_COLUMNS} FROM {table}"
        "   WHERE kind = 'publish' AND message_type = $1 AND at >= $2 AND at < $3"
        "   ORDER BY correlation_id, at, seq"
        ") AS f WHERE NOT EXISTS ("
        f"  SELECT 1 FROM {table} AS u WHERE u.correlation_id = f.correlation_id"
        "   AND u.message_type = ANY($4::text[])"
        "   AND u.at <= f.at + make_interval(secs => $5)"
        ") ORDER BY f.at, f.seq LIMIT $6",
        first,
        since,
        until,
        expected,
        within,
        limit,
    )
    return rows


async def trace_report(conn: Connection, tables: Tables, row: TraceRow) -> bool:
    done = await conn.fetchval(
        f"INSERT INTO {_table(tables)} ({_COLUMNS}) VALUES ({_ONE}) "
        "ON CONFLICT (correlation_id, detail) WHERE kind = 'stalled' DO NOTHING "
        "RETURNING true",
        *(_clean(value) for value in row),
    )
    return bool(done)


async def trace_prune(conn: Connection, tables: Tables, cutoff: datetime, limit: int) -> int:
    table = _table(tables)
    status = await conn.execute(
        f"DELETE FROM {table} WHERE seq IN "
        f"(SELECT seq FROM {table} WHERE at < $1 ORDER BY at LIMIT $2)",
        cutoff,
        limit,
    )
    return _count(status)


async def trace_cap(conn: Connection, tables: Tables, max_entries: int, limit: int) -> int:
    # Entries are numbered in the order they were written and removed oldest
    # first, so the span of their numbers is (about) how many there are.
    table = _table(tables)
    low, high = await conn.fetchrow(f"SELECT min(seq), max(seq) FROM {table}")
    if low is None or high - low + 1 <= max_entries:
        return 0
    below = min(high - max_entries + 1, low + limit)
    return _count(await conn.execute(f"DELETE FROM {table} WHERE seq < $1", below))


# -- the store's face ----------------------------------------------------------------


class PostgresTrace:
    """The trace operations of one :class:`~flowkit.stores.PostgresStore`.

    Args:
        run: the store's ``_run``: an operation on a pooled connection, its
            errors raised as :class:`~flowkit.StoreError`.
    """

    def __init__(self, run: _Run) -> None:
        self._run = run

    async def add(self, rows: Sequence[TraceRow]) -> None:
        """Append entries, in one statement."""
        if rows:
            await self._run(trace_add, rows)

    async def read(
        self, correlation_id: str, *, limit: int = 1000, after: int | None = None
    ) -> list[TraceEntry]:
        """A flow's entries in the order they were stored."""
        rows = await self._run(trace_read, correlation_id, positive(limit, "limit"), after or 0)
        return [_entry(row) for row in rows]

    async def count(self, correlation_id: str) -> int:
        """How many entries a flow has."""
        counted: int = await self._run(trace_count, correlation_id)
        return counted

    async def find(self, value: str, *, limit: int = 20) -> list[str]:
        """The flows ``value`` names, as a correlation id, a workflow id or a business key."""
        found: list[str] = await self._run(trace_find, value, positive(limit, "limit"))
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
        rows = await self._run(trace_stalled, first, types, float(within), start, end, most)
        return [_entry(row) for row in rows]

    async def report(self, name: str, correlation_id: str, row: TraceRow) -> bool:
        """Add a ``stalled`` entry unless the flow has one for ``name`` (atomic)."""
        check_report(name, correlation_id, row)
        done: bool = await self._run(trace_report, row)
        return done

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        """Remove entries recorded before ``older_than``, the oldest first."""
        cutoff = aware(older_than, "older_than")
        removed: int = await self._run(trace_prune, cutoff, positive(limit, "limit"))
        return removed

    async def cap(self, max_entries: int, *, limit: int = 10_000) -> int:
        """Remove the oldest entries beyond the newest ``max_entries``."""
        removed: int = await self._run(
            trace_cap, positive(max_entries, "max_entries"), positive(limit, "limit")
        )
        return removed
