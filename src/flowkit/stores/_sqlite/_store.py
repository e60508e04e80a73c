"""The public :class:`SQLiteStore`: arguments, lifecycle, and the store methods.

Durability
----------
The database runs in WAL mode. With ``synchronous="NORMAL"`` (the default) a
commit is written to the write-ahead log but not flushed to the disk: every
write whose ``await`` has returned survives the process being killed (even by
``SIGKILL``), but the last commits may be lost if the machine loses power or the
operating system crashes; the database itself is never corrupted.
With ``synchronous="FULL"`` (or ``"EXTRA"``) every commit is flushed to the disk
before the ``await`` returns, so it also survives a power loss, at the price of
one ``fsync`` per commit. ``"OFF"`` leaves flushing to the operating system
entirely: a process crash still loses nothing, but a power loss may corrupt the
database.

Sharing a file
--------------
Several stores, in one process or in several, may open the same file: SQLite
serializes their writes, each waiting up to ``busy_timeout`` seconds for the
others. Every write operation runs inside a write transaction (``BEGIN
IMMEDIATE``, which takes the file's write lock at once), so an inbox claim, or
a workflow claim that picks the free workflows and takes their leases, is
atomic across all of them. The lease times of workflows and inbox claims are
taken from the clock of the process whose store writes them, so processes
sharing a file should have clocks that agree closely against their leases.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import TYPE_CHECKING, Any, Self, TypeVar, TypeVarTuple, cast

import anyio

from ..._errors import StoreError
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
from .._rows import UnreadableRow, saved_record
from . import _ops as ops
from ._rows import (
    history_from_rows,
    letter_from_row,
    letter_row,
    parse_timestamp,
    timestamp,
    wait_from_row,
    wait_row,
    workflow_from_row,
)
from ._schema import MEMORY, SYNCHRONOUS_LEVELS, Database, SynchronousLevel
from ._writer import Call, Writer, stop, wait

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Awaitable, Callable, Collection, Sequence
    from datetime import datetime
    from types import TracebackType

    from .._base import Claim, DeadLetter, WorkflowRecord
    from ._outbox import SQLiteOutbox
    from ._trace import SQLiteTrace
    from ._waits import SQLiteWaits

__all__ = ["SQLiteStore"]

T = TypeVar("T")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

logger = logging.getLogger("flowkit.stores")

#: ``scheme://`` at the start of a URL (two letters at least: ``C://`` is a Windows path).
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+)://")


def _database_path(raw: str) -> str:
    """The absolute file path (or :data:`MEMORY`) that ``raw`` names.

    Raises:
        ValueError: if ``raw`` is a URL other than ``sqlite://``. The message
            names the scheme, never the rest of the URL.
    """
    match = _URL_SCHEME.match(raw)
    if match is None:
        return raw if raw == MEMORY else os.path.abspath(raw)
    scheme = match[1].lower()
    takes = "SQLiteStore takes a file path, or an sqlite:///path URL"
    if scheme != "sqlite":
        raise ValueError(f"{takes}, not a {scheme!r} URL")
    rest = raw[match.end() :]
    if rest in ("", "/:memory:"):
        return MEMORY
    if not rest.startswith("/"):
        raise ValueError(f"{takes}: an sqlite URL names no host or user (sqlite:///path)")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{takes}: an sqlite URL takes no query or fragment")
    return os.path.abspath(rest[1:])


class SQLiteStore:
    """A :class:`~flowkit.stores.StateStore` in one SQLite database file.

    Open it with ``async with store:`` (several users may enter one store; it
    closes when the last one exits). Opening creates the file and its tables if
    needed and applies any pending schema migrations; a database written by a
    newer flowkit is refused. Works on asyncio and on trio.

    The state of a workflow is kept as JSON text, and its history as one row
    per entry, appended to by each save; dead letter bodies as raw bytes.
    A waiting workflow keeps its wake time, channel and key in its record, and
    the messages kept for the waits are a mailbox table (see :meth:`wait_ops`).
    See the module documentation for what survives a crash with each
    ``synchronous`` level.

    Every call is run by the store's writer thread, batched with the calls of
    other tasks into one transaction. A task cancelled while it waits has its
    call skipped if the thread has not started it yet; otherwise the call
    completes (a write may be applied even though its caller was cancelled,
    as with any database).

    A row that a damaged or hand-edited file no longer makes a record of is
    skipped by the listings, with a WARNING on the ``flowkit.stores`` logger
    naming the record and the problem (never the stored value); reading it by
    id raises :class:`~flowkit.StoreError` naming the id. The other rows are
    read as usual.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: SynchronousLevel = "NORMAL",
        busy_timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        """Describe the store; nothing is opened until ``async with store:``.

        Args:
            path: the database file (created if missing; its directory must
                exist), or ``":memory:"`` for a private in-memory database;
                either may be given as a URL: ``sqlite:///relative/path``,
                ``sqlite:////absolute/path``, ``sqlite:///:memory:``.
            synchronous: SQLite's ``synchronous`` level: ``"NORMAL"`` survives a
                process crash, ``"FULL"`` also survives a power loss.
            busy_timeout: how many seconds to wait for another connection that
                holds the write lock before failing with StoreError.
            read_only: open the file read-only, to inspect it: it is never
                created, migrated or written to (SQLite may still create the
                ``-wal`` and ``-shm`` files that any reader of a WAL database
                needs). Opening fails if the file does not exist or holds no
                flowkit data; every write fails with StoreError.

        Raises:
            ValueError: if ``synchronous`` or ``busy_timeout`` is not valid, if
                ``path`` is a URL of another database than SQLite (the message
                names its scheme), or if ``read_only`` is asked of an
                in-memory database.
        """
        level = str(synchronous).upper()
        if level not in SYNCHRONOUS_LEVELS:
            raise ValueError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, not {synchronous!r}"
            )
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, not {busy_timeout!r}")
        resolved = _database_path(os.fspath(path))
        if read_only and resolved == MEMORY:
            raise ValueError("a read-only SQLiteStore needs a database file, not ':memory:'")
        self._database = Database(
            path=resolved,
            synchronous=level,
            busy_timeout=float(busy_timeout),
            read_only=read_only,
        )
        self._users = 0
        self._writer: Writer | None = None
        self._opener: Call | None = None

    def __repr__(self) -> str:
        state = "open" if self._writer is not None else "closed"
        mode = " read-only" if self._database.read_only else ""
        return (
            f"<SQLiteStore {self._database.shown} synchronous={self._database.synchronous}"
            f"{mode} {state}>"
        )

    @property
    def path(self) -> str:
        """The database file's absolute path (or ``":memory:"``)."""
        return self._database.path

    @property
    def synchronous(self) -> SynchronousLevel:
        """The ``synchronous`` level the connection uses."""
        return self._database.synchronous

    @property
    def read_only(self) -> bool:
        """Whether the store was opened for reading only."""
        return self._database.read_only

    async def _call(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts, write: bool) -> T:
        writer = self._writer
        if writer is None:
            raise StoreError(
                f"the SQLite store {self._database.shown} is not open; "
                "use `async with store:` first"
            )
        if write and self._database.read_only:
            raise StoreError(
                f"the SQLite store {self._database.shown} is read-only: "
                f"{fn.__name__} writes to it; open it without read_only=True"
            )
        call = Call(fn, args, write=write)
        writer.submit(call)
        try:
            await wait(call.done)
        except BaseException:
            call.abandoned = True  # skipped unless the writer already started it
            raise
        if call.error is not None:
            raise call.error
        return cast("T", call.result)

    async def _read_pragma(self, name: str) -> object:
        """The value of a pragma on the store's own connection (for tests)."""
        return await self._call(ops.pragma, name, write=False)

    @property
    def _transactions(self) -> int:
        """How many write transactions this store has committed since it opened."""
        return 0 if self._writer is None else self._writer.transactions

    def _readable(self, rows: list[R], from_row: Callable[[R], T]) -> list[T]:
        """The records of ``rows``, skipping (and logging) those that make none."""
        records: list[T] = []
        for row in rows:
            try:
                records.append(from_row(row))
            except UnreadableRow as exc:
                logger.warning(
                    "skipped the %s %r of the SQLite store %s: %s",
                    exc.kind,
                    exc.record_id,
                    self._database.shown,
                    exc.problem,
                )
        return records

    async def _paged(
        self,
        read: Callable[[int, int], Awaitable[list[R]]],
        from_row: Callable[[R], T],
        wanted: int,
    ) -> list[T]:
        """Up to ``wanted`` records of the rows ``read(count, offset)`` returns,
        read again past the rows that make no record, so that the rows after
        them fill their place."""
        records: list[T] = []
        offset = 0
        while True:
            asked = wanted - len(records)
            rows = await read(asked, offset)
            records.extend(self._readable(rows, from_row))
            offset += len(rows)
            if len(rows) < asked or len(records) >= wanted:
                return records

    # -- inbox ---------------------------------------------------------------

    async def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> Claim:
        """One statement, in a write transaction, inserts the entry or takes over
        an expired claim. Leases are measured with the wall clocks of the
        claiming processes, so they should be long against clock differences."""
        seconds = lease_seconds(lease)
        return await self._call(ops.inbox_claim, consumer, message_id, seconds, write=True)

    async def inbox_complete(self, consumer: str, message_id: str) -> None:
        await self._call(ops.inbox_complete, consumer, message_id, write=True)

    async def inbox_release(self, consumer: str, message_id: str) -> None:
        await self._call(ops.inbox_release, consumer, message_id, write=True)

    async def inbox_prune(self, older_than: datetime) -> int:
        cutoff = utc(older_than, "older_than")
        return await self._call(ops.inbox_prune, cutoff, write=True)

    # -- dead letters --------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        await self._call(ops.add_dead_letter, letter_row(letter), write=True)

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """A letter whose row cannot be read is skipped and logged (see the class
        documentation); the letters after it fill its place within ``limit``."""
        return await self._paged(
            lambda count, offset: self._call(
                ops.list_dead_letters, consumer, topic, count, offset, write=False
            ),
            letter_from_row,
            max(limit, 0),
        )

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        return letter_from_row(await self._call(ops.get_dead_letter, letter_id, write=False))

    async def delete_dead_letter(self, letter_id: str) -> None:
        """Its row is removed whether it is readable or not."""
        await self._call(ops.delete_dead_letter, letter_id, write=True)

    async def prune_dead_letters(
        self,
        older_than: datetime,
        *,
        consumer: str | None = None,
        topic: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """One ``DELETE`` removes at most ``limit`` letters, readable or not."""
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        return await self._call(ops.prune_dead_letters, cutoff, consumer, topic, most, write=True)

    # -- workflows -----------------------------------------------------------

    async def create_workflow(
        self, record: WorkflowRecord, *, lease: float | None = None
    ) -> tuple[WorkflowRecord, bool]:
        """Insert-or-return-existing is one atomic step, and the history entries
        are stored in the same transaction."""
        held = owner_lease(record.owner, lease)
        state = encode_state(record.state)
        history = encode_history(record.history)
        row, created = await self._call(
            ops.create_workflow,
            record.id,
            record.name,
            record.status,
            state,
            history,
            record.owner,
            held,
            wait_row(record),
            write=True,
        )
        return workflow_from_row(row), created

    async def save_workflow(
        self,
        record: WorkflowRecord,
        *,
        history: Sequence[Sequence[Any]] = (),
        lease: float | None = None,
    ) -> WorkflowRecord:
        """One transaction writes the record and appends ``history``; the entries
        already stored are neither read nor rewritten."""
        held = owner_lease(record.owner, lease)
        state = encode_state(record.state)
        entries = encode_history(history)
        wait = wait_row(record)
        name, created_at, updated_at, lease_until, cancel, *waited = await self._call(
            ops.save_workflow,
            record.id,
            record.status,
            state,
            record.version,
            entries,
            record.owner,
            held,
            wait,
            write=True,
        )
        saved = saved_record(
            record,
            name=name,
            created_at=parse_timestamp(created_at),
            updated_at=parse_timestamp(updated_at),
            owner=record.owner,
            lease_until=None if lease_until is None else parse_timestamp(lease_until),
            cancel_requested=cancel == 1,
        )
        wake_at, wait_for, wait_key = wait_from_row(record.id, tuple(waited))
        return dataclasses.replace(saved, wake_at=wake_at, wait_for=wait_for, wait_key=wait_key)

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        """The record and its history are read together. A row or history entry
        that cannot be read raises :class:`~flowkit.StoreError` naming the id."""
        row, history = await self._call(ops.load_workflow, workflow_id, write=False)
        record = workflow_from_row(row)
        return dataclasses.replace(record, history=history_from_rows(record.id, history))

    async def list_workflows(
        self,
        *,
        status: Collection[str] | None = None,
        name: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[WorkflowRecord]:
        """A record whose row cannot be read is skipped and logged (see the class
        documentation); the records after it fill its place within ``limit``."""
        start: tuple[str, str] | None = None
        if after is not None:
            created_at, after_id = parse_cursor(after)
            start = (timestamp(created_at), after_id)
        statuses = None if status is None else status_tuple(status)
        if limit is None:
            rows = await self._call(ops.list_workflows, statuses, name, start, None, 0, write=False)
            return self._readable(rows, workflow_from_row)
        return await self._paged(
            lambda count, offset: self._call(
                ops.list_workflows, statuses, name, start, count, offset, write=False
            ),
            workflow_from_row,
            max(limit, 0),
        )

    async def count_workflows(self) -> dict[tuple[str, str], int]:
        """One ``GROUP BY`` reads the index on ``(name, status, ...)`` alone."""
        rows = await self._call(ops.count_workflows, write=False)
        return {(name, status): count for name, status, count in rows}

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
        """The choice and the update are one write transaction, which holds the
        database's write lock: stores sharing the file, in this process or
        others, never claim one workflow twice. A claimed record whose row
        cannot be read is left out (and logged)."""
        held = claimant_lease(owner, lease)
        most = claim_limit(limit)
        skip = [exclude] if isinstance(exclude, str) else list(exclude)
        rows = await self._call(ops.claim_workflows, name, owner, held, most, skip, write=True)
        return self._readable(rows, workflow_from_row)

    async def claim_workflow(
        self, workflow_id: str, owner: str, *, lease: float
    ) -> WorkflowRecord | None:
        held = claimant_lease(owner, lease)
        row = await self._call(ops.claim_workflow, workflow_id, owner, held, write=True)
        return None if row is None else workflow_from_row(row)

    async def renew_leases(
        self, owner: str, workflow_ids: Collection[str], *, lease: float
    ) -> dict[str, bool]:
        """One statement renews any number of ids."""
        held = claimant_lease(owner, lease)
        ids = workflow_id_list(workflow_ids)
        if not ids:
            return {}
        rows = await self._call(ops.renew_leases, owner, ids, held, write=True)
        return {workflow_id: bool(cancel) for workflow_id, cancel in rows}

    async def release_workflows(self, owner: str, workflow_ids: Collection[str]) -> None:
        ids = workflow_id_list(workflow_ids)
        if ids:
            await self._call(ops.release_workflows, owner, ids, write=True)

    async def request_cancel(self, workflow_id: str) -> WorkflowRecord:
        return workflow_from_row(await self._call(ops.request_cancel, workflow_id, write=True))

    async def prune_workflows(
        self,
        older_than: datetime,
        *,
        statuses: Collection[str] = ("COMPLETED", "COMPENSATED", "FAILED"),
        name: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """One ``DELETE`` removes at most ``limit`` records, their history in the
        same transaction."""
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        return await self._call(
            ops.prune_workflows, cutoff, status_tuple(statuses), name, most, write=True
        )

    # -- outbox ----------------------------------------------------------------

    def outbox_ops(self) -> SQLiteOutbox:
        """The transactional outbox of this database (see :mod:`flowkit.stores._outbox`).

        Raises:
            StoreError: if the database is in memory (no other connection can
                reach it) or the store is read-only.
        """
        from ._outbox import SQLiteOutbox

        if self.path == MEMORY:
            raise StoreError(
                "the outbox needs an SQLiteStore on a database file: your sqlite3 "
                "connection cannot reach the store's private ':memory:' database"
            )
        if self.read_only:
            raise StoreError("the outbox cannot use a read-only SQLiteStore")
        return SQLiteOutbox(self.path, self._database.busy_timeout)

    def trace_ops(self) -> SQLiteTrace:
        """The flow trace kept in this database (see :mod:`flowkit.stores._trace`);
        its writes join the writer thread's transactions."""
        from ._trace import SQLiteTrace

        return SQLiteTrace(self._call)

    def wait_ops(self) -> SQLiteWaits:
        """The waiting workflows and the mailbox kept in this database (see
        :mod:`flowkit.stores._waits`); its writes join the writer thread's
        transactions."""
        from ._waits import SQLiteWaits

        return SQLiteWaits(self._call, self._readable)

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the store (or add a user to an open one).

        Raises:
            StoreError: if the database cannot be opened, is not in WAL mode, or
                has a newer schema than this flowkit supports; read-only, if
                there is no database at the path or it holds no flowkit data.
        """
        self._users += 1
        try:
            await self._open()
        except BaseException:
            self._users -= 1
            raise
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

        Operations already queued are finished first; the writer thread stops
        and the connection is closed. The store can be entered again later.

        Raises:
            StoreError: if SQLite fails to close the connection.
        """
        self._users = 0
        await self._close()

    async def _open(self) -> None:
        opener = self._opener
        writer = self._writer
        if writer is None or opener is None:
            writer = Writer(self._database)
            opener = writer.start()
            self._writer, self._opener = writer, opener
        # Shielded: a cancelled enter must not leave a half-open database behind.
        with anyio.CancelScope(shield=True):
            await wait(opener.done)
            if opener.error is not None:
                if self._writer is writer:
                    self._writer = self._opener = None
                await anyio.to_thread.run_sync(writer.thread.join)  # it is stopping by itself
        if opener.error is not None:
            raise StoreError(str(opener.error)) from opener.error.__cause__

    async def _close(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._writer = self._opener = None
        stopper = Call(stop, (), write=False)
        with anyio.CancelScope(shield=True):
            try:
                writer.submit(stopper)
            except StoreError:
                pass  # the thread already stopped
            else:
                await wait(stopper.done)
            await anyio.to_thread.run_sync(writer.thread.join)
        if stopper.error is not None:
            raise stopper.error
