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
from .._base import WorkflowRecord
from .._codec import (
    claim_limit,
    encode_state,
    lease_seconds,
    owner_lease,
    parse_cursor,
    prune_limit,
    status_tuple,
    utc,
)
from . import _ops as ops
from ._rows import (
    UnreadableRow,
    history_entries,
    history_from_rows,
    letter_from_row,
    letter_row,
    parse_timestamp,
    timestamp,
    workflow_from_row,
)
from ._schema import MEMORY, SYNCHRONOUS_LEVELS, Database, SynchronousLevel
from ._writer import Call, Writer, stop, wait

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Collection, Sequence
    from datetime import datetime
    from types import TracebackType

    from .._base import Claim, DeadLetter
    from ._outbox import SQLiteOutbox

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

    # -- inbox ---------------------------------------------------------------

    async def inbox_claim(self, consumer: str, message_id: str, *, lease: float) -> Claim:
        """Claim ``message_id`` for ``consumer``, atomically.

        One statement inserts the entry, or takes over a claim whose lease has
        run out, in a write transaction: exactly one caller gets
        :attr:`~flowkit.stores.Claim.CLAIMED`, whichever store instance or
        process it calls from. Leases are measured with the wall clocks of the
        claiming processes, so they should be long against clock differences.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the message's id.
            lease: seconds the claim holds before another caller may take it
                over (a lease longer than about 31 years counts as that).

        Returns:
            ``CLAIMED``, ``DONE`` or ``BUSY``.

        Raises:
            StoreError: if the store is not open or is read-only, ``lease`` is
                not a positive number, or SQLite fails.
        """
        seconds = lease_seconds(lease)
        return await self._call(ops.inbox_claim, consumer, message_id, seconds, write=True)

    async def inbox_complete(self, consumer: str, message_id: str) -> None:
        """Record that ``consumer`` is done with ``message_id``.

        Completing a pair that was never claimed records it all the same;
        completing it again changes nothing.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the message's id.

        Raises:
            StoreError: if the store is not open or is read-only, or SQLite fails.
        """
        await self._call(ops.inbox_complete, consumer, message_id, write=True)

    async def inbox_release(self, consumer: str, message_id: str) -> None:
        """Drop an unfinished claim, so the next delivery may claim the message.

        A completed pair stays completed; releasing an unknown pair does nothing.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the message's id.

        Raises:
            StoreError: if the store is not open or is read-only, or SQLite fails.
        """
        await self._call(ops.inbox_release, consumer, message_id, write=True)

    async def inbox_prune(self, older_than: datetime) -> int:
        """Forget the entries completed before ``older_than``.

        Claims whose lease ran out before ``older_than`` (their holder died
        without completing or releasing them) are forgotten too: a claim on a
        forgotten pair answers ``CLAIMED``, as it would on the expired claim.
        Claims still held are kept.

        Args:
            older_than: a timezone-aware time.

        Returns:
            How many entries were removed.

        Raises:
            StoreError: if the store is not open or is read-only,
                ``older_than`` is naive, or SQLite fails.
        """
        cutoff = utc(older_than, "older_than")
        return await self._call(ops.inbox_prune, cutoff, write=True)

    # -- dead letters --------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a dead letter.

        Adding a letter whose id is already kept leaves the kept one unchanged,
        so a retried add is harmless.

        Args:
            letter: the letter to keep.

        Raises:
            StoreError: if the store is not open or is read-only,
                ``letter.failed_at`` is naive, the headers are not strings, or
                SQLite fails.
        """
        await self._call(ops.add_dead_letter, letter_row(letter), write=True)

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest (by ``failed_at``) first.

        A letter whose row cannot be read is skipped and logged (see the class
        documentation); the letters after it fill its place within ``limit``.

        Args:
            consumer: only the letters of this consumer.
            topic: only the letters from this topic.
            limit: at most this many letters.

        Returns:
            The matching letters.

        Raises:
            StoreError: if the store is not open or SQLite fails.
        """
        wanted = max(limit, 0)
        letters: list[DeadLetter] = []
        offset = 0
        while True:
            asked = wanted - len(letters)
            rows = await self._call(
                ops.list_dead_letters, consumer, topic, asked, offset, write=False
            )
            letters.extend(self._readable(rows, letter_from_row))
            offset += len(rows)
            if len(rows) < asked or len(letters) >= wanted:
                return letters

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter by id.

        Args:
            letter_id: the letter's id.

        Returns:
            The letter.

        Raises:
            NotFound: if there is none with that id.
            StoreError: if the store is not open, the letter's row cannot be
                read (the message names the id), or SQLite fails.
        """
        return letter_from_row(await self._call(ops.get_dead_letter, letter_id, write=False))

    async def delete_dead_letter(self, letter_id: str) -> None:
        """Remove a dead letter (after a replay), whether its row is readable or not.

        Args:
            letter_id: the letter's id.

        Raises:
            NotFound: if there is none with that id.
            StoreError: if the store is not open or is read-only, or SQLite fails.
        """
        await self._call(ops.delete_dead_letter, letter_id, write=True)

    async def prune_dead_letters(
        self,
        older_than: datetime,
        *,
        consumer: str | None = None,
        topic: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """Remove the dead letters that failed before ``older_than``, oldest first.

        One ``DELETE`` removes at most ``limit`` letters (readable or not), so
        a large prune is many short transactions: call again until it returns
        less than ``limit``.

        Args:
            older_than: a timezone-aware time; letters whose ``failed_at`` is
                before it are removed.
            consumer: only the letters of this consumer.
            topic: only the letters from this topic.
            limit: the most letters removed by this call.

        Returns:
            How many letters were removed.

        Raises:
            StoreError: if the store is not open or is read-only,
                ``older_than`` is naive, ``limit`` is not a positive integer,
                or SQLite fails.
        """
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        return await self._call(ops.prune_dead_letters, cutoff, consumer, topic, most, write=True)

    # -- workflows -----------------------------------------------------------

    async def create_workflow(
        self, record: WorkflowRecord, *, lease: float | None = None
    ) -> tuple[WorkflowRecord, bool]:
        """Insert a new workflow record with version 1, unless the id exists.

        Insert-or-return-existing is one atomic step, and the record's history
        entries are stored as its first in the same transaction. The store sets
        ``created_at`` and ``updated_at``; the record's own version and
        timestamps are ignored. When ``record.owner`` is set, that owner holds
        the workflow's lease for ``lease`` seconds from now.

        Args:
            record: the new workflow's id, name, status, state, history and owner.
            lease: how long the owner's lease holds, in seconds (needed with
                an owner).

        Returns:
            ``(stored, created)``: the new record and True, or the record that
            already had this id and False (it is left unchanged). Neither
            carries history.

        Raises:
            StoreError: if the store is not open or is read-only, the state or
                a history entry is not JSON-serializable, an owner comes
                without a positive ``lease``, the existing record cannot be
                read, or SQLite fails.
        """
        held = owner_lease(record.owner, lease)
        state = encode_state(record.state)
        history = history_entries(record.history)
        row, created = await self._call(
            ops.create_workflow,
            record.id,
            record.name,
            record.status,
            state,
            history,
            record.owner,
            held,
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
        """Write a changed record; ``record.version`` is the version it was read at.

        The status, state and owner are written and ``history`` is appended
        to the stored history (``record.history`` is ignored), in one
        transaction: the entries already stored are neither read nor
        rewritten, so a checkpoint costs the same however long the history
        is. The name and ``created_at`` stay as they were created. Saving a
        status other than ``RUNNING`` drops a pending cancel request.

        Args:
            record: the changed record; its owner (or None) becomes the owner.
            history: the entries to append.
            lease: how long the owner's lease holds from now, in seconds
                (needed with an owner).

        Returns:
            The stored record, its version incremented, without history; its
            state is the mapping given and its ``cancel_requested`` the stored flag.

        Raises:
            ConcurrencyConflict: if the stored version is not ``record.version``.
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open or is read-only, the state or
                a history entry is not JSON-serializable, an owner comes
                without a positive ``lease``, or SQLite fails.
        """
        held = owner_lease(record.owner, lease)
        state = encode_state(record.state)
        entries = history_entries(history)
        owner = record.owner
        name, created_at, updated_at, lease_until, cancel = await self._call(
            ops.save_workflow,
            record.id,
            record.status,
            state,
            record.version,
            entries,
            owner,
            held,
            write=True,
        )
        return WorkflowRecord(
            id=record.id,
            name=name,
            status=record.status,
            state=record.state,
            version=record.version + 1,
            created_at=parse_timestamp(created_at),
            updated_at=parse_timestamp(updated_at),
            owner=owner,
            lease_until=None if lease_until is None else parse_timestamp(lease_until),
            cancel_requested=cancel == 1,
        )

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        """One workflow record, with its whole history (read together with it).

        Args:
            workflow_id: the workflow's id.

        Returns:
            The stored record; its history entries are lists, oldest first.

        Raises:
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open, the record's row or one of
                its history entries cannot be read (the message names the id
                and the problem), or SQLite fails.
        """
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
        """Workflow records without history, oldest first (by ``created_at``, then id).

        A record whose row cannot be read is skipped and logged (see the class
        documentation); the records after it fill its place within ``limit``.

        Args:
            status: only records in one of these statuses (a single string is
                taken as one status).
            name: only records of this orchestrator.
            limit: at most this many records (all when None).
            after: a record's :attr:`~flowkit.stores.WorkflowRecord.cursor`:
                only the records listed after it, for the next page.

        Returns:
            The matching records.

        Raises:
            StoreError: if the store is not open, ``after`` is not a cursor,
                or SQLite fails.
        """
        start: tuple[str, str] | None = None
        if after is not None:
            created_at, after_id = parse_cursor(after)
            start = (timestamp(created_at), after_id)
        statuses: tuple[str, ...] | None
        if status is None:
            statuses = None
        elif isinstance(status, str):
            statuses = (status,)
        else:
            statuses = tuple(dict.fromkeys(status))
        if limit is None:
            rows = await self._call(ops.list_workflows, statuses, name, start, None, 0, write=False)
            return self._readable(rows, workflow_from_row)
        wanted = max(limit, 0)
        records: list[WorkflowRecord] = []
        offset = 0
        while True:
            asked = wanted - len(records)
            rows = await self._call(
                ops.list_workflows, statuses, name, start, asked, offset, write=False
            )
            records.extend(self._readable(rows, workflow_from_row))
            offset += len(rows)
            if len(rows) < asked or len(records) >= wanted:
                return records

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
        """Take the lease of unfinished workflows of orchestrator ``name`` that
        nobody holds, oldest first.

        A workflow is free when it has no owner, when its lease ran out, or
        when ``owner`` itself holds it but it is not in ``exclude``. The choice
        and the update are one write transaction, which holds the database's
        write lock: stores sharing the file, in this process or others, never
        claim one workflow twice. Each claimed record's version is
        incremented, fencing out a previous holder; ``updated_at`` is left as
        it was.

        Args:
            name: the orchestrator's name.
            owner: the claiming process's id.
            lease: how long the lease holds, in seconds (positive).
            limit: the most workflows claimed by this call (positive).
            exclude: workflow ids of ``owner`` that are not free (it runs them).

        Returns:
            The claimed records, without history, owned by ``owner``. A claimed
            record whose row cannot be read is left out (and logged).

        Raises:
            StoreError: if the store is not open or is read-only, ``owner`` is
                not a non-empty string, ``lease`` is not a positive number,
                ``limit`` is not a positive integer, or SQLite fails.
        """
        held = owner_lease(owner, lease)
        most = claim_limit(limit)
        skip = [exclude] if isinstance(exclude, str) else list(exclude)
        rows = await self._call(
            ops.claim_workflows, name, owner, cast("float", held), most, skip, write=True
        )
        return self._readable(rows, workflow_from_row)

    async def claim_workflow(
        self, workflow_id: str, owner: str, *, lease: float
    ) -> WorkflowRecord | None:
        """Take the lease of one unfinished workflow if it is free (no owner,
        an expired lease, or held by ``owner`` itself); its version is incremented.

        Args:
            workflow_id: the workflow's id.
            owner: the claiming process's id.
            lease: how long the lease holds, in seconds (positive).

        Returns:
            The claimed record (without history), or None if the workflow is
            finished or another owner's lease on it still holds.

        Raises:
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open or is read-only, ``owner`` is
                not a non-empty string, ``lease`` is not a positive number,
                the record's row cannot be read, or SQLite fails.
        """
        held = owner_lease(owner, lease)
        row = await self._call(
            ops.claim_workflow, workflow_id, owner, cast("float", held), write=True
        )
        return None if row is None else workflow_from_row(row)

    async def renew_leases(
        self, owner: str, workflow_ids: Collection[str], *, lease: float
    ) -> dict[str, bool]:
        """Extend ``owner``'s leases on these workflows to ``lease`` seconds from now.

        A lease that ran out but that nobody claimed is renewed too; finished
        workflows are not. The version does not change. Any number of ids is
        renewed by one statement.

        Args:
            owner: the holding process's id.
            workflow_ids: the workflows it runs.
            lease: how long the leases hold from now, in seconds (positive).

        Returns:
            For each workflow ``owner`` still holds, whether a cancel was
            requested. A workflow missing from the answer is lost.

        Raises:
            StoreError: if the store is not open or is read-only, ``owner`` is
                not a non-empty string, ``lease`` is not a positive number, or
                SQLite fails.
        """
        held = owner_lease(owner, lease)
        ids = list(dict.fromkeys(workflow_ids))
        if not ids:
            return {}
        rows = await self._call(ops.renew_leases, owner, ids, cast("float", held), write=True)
        return {workflow_id: bool(cancel) for workflow_id, cancel in rows}

    async def release_workflows(self, owner: str, workflow_ids: Collection[str]) -> None:
        """Give up ``owner``'s leases on these workflows, so that another
        process may claim them at once. Workflows ``owner`` does not hold are
        left as they are; the version does not change.

        Args:
            owner: the holding process's id.
            workflow_ids: the workflows to give up.

        Raises:
            StoreError: if the store is not open or is read-only, or SQLite fails.
        """
        ids = list(dict.fromkeys(workflow_ids))
        if ids:
            await self._call(ops.release_workflows, owner, ids, write=True)

    async def request_cancel(self, workflow_id: str) -> WorkflowRecord:
        """Ask the owner of a ``RUNNING`` workflow to cancel it: sets its
        ``cancel_requested`` flag, which the owner sees in its next
        :meth:`renew_leases` or :meth:`save_workflow`. The version does not
        change; a workflow that is not ``RUNNING`` is left as it is.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The record after the request (without history).

        Raises:
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open or is read-only, the record's
                row cannot be read, or SQLite fails.
        """
        return workflow_from_row(await self._call(ops.request_cancel, workflow_id, write=True))

    async def prune_workflows(
        self,
        older_than: datetime,
        *,
        statuses: Collection[str] = ("COMPLETED", "COMPENSATED", "FAILED"),
        name: str | None = None,
        limit: int = 10_000,
    ) -> int:
        """Remove the records in ``statuses`` last updated before ``older_than``,
        with their history (in the same transaction).

        An unfinished status (``RUNNING``, ``COMPENSATING``) is pruned only
        when named. One ``DELETE`` removes at most ``limit`` records, the
        least recently updated first: call again until it returns less.

        Args:
            older_than: a timezone-aware time; records whose ``updated_at``
                is before it are removed.
            statuses: the statuses pruned (a single string is taken as one
                status; none prunes nothing).
            name: only the records of this orchestrator.
            limit: the most records removed by this call.

        Returns:
            How many records were removed.

        Raises:
            StoreError: if the store is not open or is read-only,
                ``older_than`` is naive, ``limit`` is not a positive integer,
                or SQLite fails.
        """
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        return await self._call(
            ops.prune_workflows, cutoff, status_tuple(statuses), name, most, write=True
        )

    # -- lifecycle -----------------------------------------------------------

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
