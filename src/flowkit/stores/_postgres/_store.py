"""The public :class:`PostgresStore`: arguments, lifecycle, and the store methods."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ..._errors import StoreError
from ..._redact import redact_url
from .._codec import (
    claim_limit,
    claimant_lease,
    encode_history,
    encode_state,
    lease_seconds,
    owner_lease,
    parse_cursor,
    prune_limit,
    status_tuple,
    utc,
    workflow_id_list,
)
from .._rows import saved_record
from .._waits import WAITING
from . import _ops as ops
from ._pool import check_asyncio, create_pool, describe, translated
from ._rows import history_from_text, letter_args, letter_from_row, wait_args, workflow_from_row
from ._schema import Tables, migrate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence
    from datetime import datetime
    from types import TracebackType

    from .._base import Claim, DeadLetter, WorkflowRecord
    from ._outbox import PostgresOutbox
    from ._pool import Connection, Pool
    from ._trace import PostgresTrace
    from ._waits import PostgresWaits

__all__ = ["PostgresStore"]

T = TypeVar("T")

logger = logging.getLogger("flowkit.stores")


class PostgresStore:
    """A :class:`~flowkit.stores.StateStore` in a PostgreSQL database.

    It uses asyncpg, the fastest asyncio client of PostgreSQL (its binary
    protocol and prepared statements); psycopg 3 would bring no trio support
    either. The store is therefore **asyncio only**: used under trio, it
    raises :class:`~flowkit.StoreError` saying so (use
    :class:`~flowkit.stores.SQLiteStore` there).

    Open it with ``async with store:`` (several users may enter one store; it
    closes when the last one exits). Opening creates a pool of connections,
    then the store's PostgreSQL schema and tables if needed, or applies the
    migrations they lack; a schema written by a newer flowkit is refused.
    Several processes may open one database at once: the migrations run under
    an advisory lock.

    Every table is in the schema named by ``schema``, so several independent
    stores can share one database. Workflow state and dead letter headers are
    kept as ``jsonb``, dead letter bodies as ``bytea``. ``jsonb`` keeps a
    number's value, not its spelling: a whole-number float that JSON writes
    with an exponent (``1e20``) comes back as the equal integer.
    PostgreSQL text holds no NUL character: an id, a name, an error text or a
    state string containing ``"\\x00"`` is refused with :class:`~flowkit.StoreError`.
    Errors quote PostgreSQL's first line only, never the values of a row.

    Each operation runs on one pooled connection, in autocommit mode: an inbox
    claim is one ``INSERT ... ON CONFLICT DO UPDATE`` statement, so exactly one
    of any number of concurrent claimers, in any process, wins. Times are the
    database server's clock.

    It keeps waiting workflows and their mailbox (:meth:`wait_ops`, see
    :mod:`flowkit.stores._waits`), the flow trace (:meth:`trace_ops`) and a
    transactional outbox (:meth:`outbox_ops`).

    The DSN's password never shows in an error, a log or the ``repr``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "flowkit",
        min_size: int = 1,
        max_size: int = 10,
        **connect_options: Any,
    ) -> None:
        """Describe the store; nothing is opened until ``async with store:``.

        Args:
            dsn: the database, as a ``postgresql://user:password@host:port/db``
                URL (``postgres://`` also works) or a libpq keyword string.
            schema: the PostgreSQL schema that holds flowkit's tables
                (created if missing): letters, digits and underscores.
            min_size: connections the pool keeps open.
            max_size: connections the pool opens at most.
            connect_options: further keyword arguments of
                ``asyncpg.create_pool`` (``ssl``, ``command_timeout``,
                ``server_settings``, ...).

        Raises:
            ValueError: if ``schema`` is not a plain identifier or the pool
                sizes are not ``1 <= min_size <= max_size`` (``min_size`` may be 0).
        """
        if not isinstance(dsn, str) or not dsn:
            raise ValueError("PostgresStore takes a DSN string (postgresql://...)")
        self._tables = Tables.of(schema)
        for label, size in (("min_size", min_size), ("max_size", max_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"{label} must be a non-negative integer, not {size!r}")
        if max_size < 1 or min_size > max_size:
            raise ValueError(
                f"the pool sizes must be 0 <= min_size <= max_size and max_size >= 1, "
                f"not min_size={min_size}, max_size={max_size}"
            )
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._options = connect_options
        self._pool: Pool | None = None
        self._waits: PostgresWaits | None = None
        self._users = 0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self._dsn)!r}, schema={self._tables.schema!r})"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds the store's tables."""
        return self._tables.schema

    @property
    def _shown(self) -> str:
        return f"{redact_url(self._dsn)!r} (schema {self._tables.schema!r})"

    async def _run(self, op: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run an operation on a pooled connection, errors translated."""
        check_asyncio()
        pool = self._pool
        if pool is None:
            raise StoreError(
                f"the PostgreSQL store {self._shown} is not open; use `async with store:` first"
            )
        with translated(f"PostgreSQL {op.__name__}"):
            async with pool.acquire() as conn:
                return await op(conn, self._tables, *args)

    # -- inbox ---------------------------------------------------------------

    async def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> Claim:
        """One ``INSERT ... ON CONFLICT DO UPDATE`` statement inserts the entry
        or takes over an expired claim."""
        seconds = lease_seconds(lease)
        return await self._run(ops.inbox_claim, consumer, message_id, seconds)

    async def inbox_complete(self, consumer: str, message_id: str) -> None:
        await self._run(ops.inbox_complete, consumer, message_id)

    async def inbox_release(self, consumer: str, message_id: str) -> None:
        await self._run(ops.inbox_release, consumer, message_id)

    async def inbox_prune(self, older_than: datetime) -> int:
        cutoff = utc(older_than, "older_than")
        return await self._run(ops.inbox_prune, cutoff)

    # -- dead letters --------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._run(ops.add_dead_letter, letter_args(letter))

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        rows = await self._run(ops.list_dead_letters, consumer, topic, max(limit, 0))
        return [letter_from_row(row) for row in rows]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return letter_from_row(await self._run(ops.get_dead_letter, letter_id))

    async def delete_dead_letter(self, letter_id: str) -> None:
        await self._run(ops.delete_dead_letter, letter_id)

    async def prune_dead_letters(
        self,
        older_than: datetime,
        *,
        consumer: str | None = None,
        topic: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """One ``DELETE`` statement removes at most ``limit`` letters."""
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        return await self._run(ops.prune_dead_letters, cutoff, consumer, topic, most)

    # -- workflows -----------------------------------------------------------

    async def create_workflow(
        self, record: WorkflowRecord, *, lease: float | None = None
    ) -> tuple[WorkflowRecord, bool]:
        """Insert-or-return-existing is one ``INSERT ... ON CONFLICT DO NOTHING``;
        the history entries are inserted in the same transaction."""
        held = owner_lease(record.owner, lease)
        wait = wait_args(record)
        state = encode_state(record.state)
        history = encode_history(record.history, arrays=True)
        row, created = await self._run(
            ops.create_workflow,
            record.id,
            record.name,
            record.status,
            state,
            record.owner,
            held,
            history,
            *wait,
        )
        return workflow_from_row(row), created

    async def save_workflow(
        self,
        record: WorkflowRecord,
        *,
        history: Sequence[Sequence[Any]] = (),
        lease: float | None = None,
    ) -> WorkflowRecord:
        """One statement updates the record ``WHERE id = $1 AND version = $2``
        and, only if it matched, appends ``history``. A WAITING record that
        waits on a mailbox channel is written in a short transaction that first
        takes an advisory lock on that channel and key, as a delivery to it
        does (see :mod:`flowkit.stores._postgres._waits`)."""
        held = owner_lease(record.owner, lease)
        wait = wait_args(record)
        state = encode_state(record.state)
        entries = encode_history(history, arrays=True)
        row = await self._run(
            ops.save_workflow,
            record.id,
            record.status,
            state,
            record.version,
            record.owner,
            held,
            entries,
            *wait,
        )
        saved = saved_record(
            record,
            name=row["name"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            owner=row["owner"],
            lease_until=row["lease_until"],
            cancel_requested=row["cancel_requested"],
        )
        if record.status != WAITING:
            return saved
        return dataclasses.replace(
            saved, wake_at=row["wake_at"], wait_for=row["wait_for"], wait_key=row["wait_key"]
        )

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        """The record and its history are read in one statement."""
        row = await self._run(ops.load_workflow, workflow_id)
        return workflow_from_row(row, history_from_text(row["id"], row["history"]))

    async def list_workflows(
        self,
        *,
        status: Collection[str] | None = None,
        name: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowRecord]:
        start = None if after is None else parse_cursor(after)
        statuses = None if status is None else list(status_tuple(status))
        wanted = None if limit is None else max(limit, 0)
        rows = await self._run(ops.list_workflows, statuses, name, wanted, start)
        return [workflow_from_row(row) for row in rows]

    async def count_workflows(self) -> dict[tuple[str, str], int]:
        """One ``GROUP BY`` over the index on ``(name, status, lease_until)``."""
        rows = await self._run(ops.count_workflows)
        return {(row["name"], row["status"]): int(row["count"]) for row in rows}

    # -- ownership -----------------------------------------------------------

    async def claim_workflows(
        self,
        name: str,
        owner: str,
        *,
        lease: float,
        limit: int = 100,
        exclude: Collection[str] = (),
    ) -> list[WorkflowRecord]:
        """One ``UPDATE`` claims the rows a subquery picks ``FOR UPDATE SKIP
        LOCKED``, so concurrent claimers, in any process, never claim one
        workflow twice."""
        held = claimant_lease(owner, lease)
        most = claim_limit(limit)
        skip = [exclude] if isinstance(exclude, str) else list(exclude)
        rows = await self._run(ops.claim_workflows, name, owner, held, most, skip)
        return [workflow_from_row(row) for row in rows]

    async def claim_workflow(
        self, workflow_id: str, owner: str, *, lease: float
    ) -> WorkflowRecord | None:
        held = claimant_lease(owner, lease)
        row = await self._run(ops.claim_workflow, workflow_id, owner, held)
        return None if row is None else workflow_from_row(row)

    async def renew_leases(
        self, owner: str, workflow_ids: Collection[str], *, lease: float
    ) -> dict[str, bool]:
        held = claimant_lease(owner, lease)
        ids = workflow_id_list(workflow_ids)
        return await self._run(ops.renew_leases, owner, ids, held)

    async def release_workflows(self, owner: str, workflow_ids: Collection[str]) -> None:
        ids = workflow_id_list(workflow_ids)
        await self._run(ops.release_workflows, owner, ids)

    async def request_cancel(self, workflow_id: str) -> WorkflowRecord:
        channel = self._tables.waits_channel
        return workflow_from_row(await self._run(ops.request_cancel, workflow_id, channel))

    async def prune_workflows(
        self,
        older_than: datetime,
        *,
        statuses: Collection[str] = ("COMPLETED", "COMPENSATED", "FAILED"),
        name: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """One statement removes at most ``limit`` records and their history."""
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        return await self._run(
            ops.prune_workflows, cutoff, list(status_tuple(statuses)), name, most
        )

    # -- outbox ----------------------------------------------------------------

    def outbox_ops(self) -> PostgresOutbox:
        """The transactional outbox of this schema (see :mod:`flowkit.stores._outbox`)."""
        from ._outbox import PostgresOutbox

        return PostgresOutbox(self._tables, lambda: self._pool, self._shown)

    def trace_ops(self) -> PostgresTrace:
        """The flow trace kept in this schema (see :mod:`flowkit.stores._trace`)."""
        from ._trace import PostgresTrace

        return PostgresTrace(self._run)

    def wait_ops(self) -> PostgresWaits:
        """The waiting workflows and the mailbox kept in this schema (see
        :mod:`flowkit.stores._waits`); one object per store, which holds a
        pooled connection to hear of deliveries by other processes while it
        is asked to (given back when the store closes)."""
        from ._waits import PostgresWaits

        if self._waits is None:
            self._waits = PostgresWaits(
                self._run, pool=lambda: self._pool, channel=self._tables.waits_channel
            )
        return self._waits

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the store (or add a user to an open one).

        Raises:
            StoreError: if this is not asyncio, the database cannot be reached,
                or its schema is newer than this flowkit supports.
        """
        check_asyncio()
        async with self._lock:
            if self._pool is None:
                self._pool = await self._open()
            self._users += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove a user; the last one out closes the store."""
        self._users = max(self._users - 1, 0)
        if self._users == 0:
            await self._close()

    async def aclose(self) -> None:
        """Close the store at once, whoever else entered it.

        The pool waits for the operations under way, then closes its
        connections. The store can be entered again later.

        Raises:
            StoreError: if closing the connections fails.
        """
        self._users = 0
        await self._close()

    async def _open(self) -> Pool:
        try:
            pool = await create_pool(self._dsn, self._min_size, self._max_size, self._options)
        except StoreError:
            raise
        except Exception as exc:  # asyncpg raises ValueError, OSError, PostgresError...
            raise StoreError(
                f"cannot connect to the PostgreSQL store {self._shown}: {describe(exc)}"
            ) from exc
        try:
            with translated(f"migrating the PostgreSQL store {self._shown}"):
                async with pool.acquire() as conn:
                    await self._migrate(conn)
        except BaseException:
            pool.terminate()
            raise
        return pool

    async def _migrate(self, conn: Connection) -> None:
        version = await migrate(conn, self._tables)
        logger.debug("opened the PostgreSQL store %s at schema version %d", self._shown, version)

    async def _close(self) -> None:
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        if self._waits is not None:
            await self._waits.close()  # its listening connection, back to the pool
        with translated(f"closing the PostgreSQL store {self._shown}"):
            await pool.close()
