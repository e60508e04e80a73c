"""A state store in one SQLite database file (standard library :mod:`sqlite3` only).

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

How the event loop is kept free
-------------------------------
SQLite calls block, so each open store runs one writer thread that owns the
connection. Callers queue their operations and wait; the thread takes
everything queued so far and runs it as one transaction (a *group commit*:
concurrent workflows share one commit, and with ``FULL`` one ``fsync``), then
wakes each caller on its own event loop (asyncio or trio). Every operation
issues at most one modifying statement, so an operation that fails (a version
conflict, say) changes nothing and fails alone while the rest of its batch
commits.

Several stores, in one process or in several, may open the same file: SQLite
serializes their writes, each waiting up to ``busy_timeout`` seconds for the
others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import sys
import threading
from datetime import UTC, datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Literal,
    Self,
    TypeAlias,
    TypeVar,
    TypeVarTuple,
    cast,
)

import anyio

from .._errors import ConcurrencyConflict, NotFound, StoreError, WorkflowNotFound
from ._base import DeadLetter, WorkflowRecord
from ._codec import decode_state, encode_state, utc

if TYPE_CHECKING:
    from collections.abc import Callable, Collection
    from types import TracebackType

    import trio

    #: Schedules ``callback(calls)`` on an event loop, from any thread.
    _Post: TypeAlias = Callable[[Callable[[list["_Call"]], None], list["_Call"]], object]
    #: What a caller waits on: set on its own event loop once its call is done.
    _Done: TypeAlias = asyncio.Future[None] | trio.Event

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

SynchronousLevel = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
_SYNCHRONOUS_LEVELS: tuple[SynchronousLevel, ...] = ("OFF", "NORMAL", "FULL", "EXTRA")

#: The most operations the writer thread commits in one transaction.
_MAX_BATCH = 512

# -- schema ---------------------------------------------------------------------

#: The statements that bring the schema from version ``n`` to ``n + 1`` are
#: ``_MIGRATIONS[n]``. Released migrations are never edited, only appended to.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE flowkit_inbox (
            consumer TEXT NOT NULL,
            message_id TEXT NOT NULL,
            added_at TEXT NOT NULL,
            PRIMARY KEY (consumer, message_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE flowkit_dead_letters (
            id TEXT NOT NULL PRIMARY KEY,
            consumer TEXT NOT NULL,
            topic TEXT NOT NULL,
            body BLOB NOT NULL,
            headers TEXT NOT NULL,
            error_type TEXT NOT NULL,
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            failed_at TEXT NOT NULL,
            message_id TEXT
        )""",
        "CREATE INDEX flowkit_dead_letters_failed_at ON flowkit_dead_letters (failed_at)",
        "CREATE INDEX flowkit_dead_letters_consumer ON flowkit_dead_letters (consumer, failed_at)",
        "CREATE INDEX flowkit_dead_letters_topic ON flowkit_dead_letters (topic, failed_at)",
        """CREATE TABLE flowkit_workflows (
            id TEXT NOT NULL PRIMARY KEY,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX flowkit_workflows_status ON flowkit_workflows (status, created_at)",
        "CREATE INDEX flowkit_workflows_name ON flowkit_workflows (name, created_at)",
        "CREATE INDEX flowkit_workflows_created_at ON flowkit_workflows (created_at)",
        "CREATE INDEX flowkit_inbox_added_at ON flowkit_inbox (added_at)",
    ),
)

#: The schema version this code writes; a database with a newer one is refused.
SCHEMA_VERSION = len(_MIGRATIONS)


def _schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'flowkit_schema'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM flowkit_schema").fetchone()
    return int(row[0])


def _check_not_newer(version: int, path: str) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database {path!r} has flowkit schema version {version}, newer than "
            f"version {SCHEMA_VERSION} that this flowkit supports; upgrade flowkit"
        )


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    version = _schema_version(conn)
    _check_not_newer(version, path)
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS flowkit_schema ("
            "version INTEGER NOT NULL PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        version = _schema_version(conn)  # again, now that we hold the write lock
        _check_not_newer(version, path)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO flowkit_schema (version, applied_at) VALUES (?, ?)",
                (target, _timestamp(datetime.now(UTC))),
            )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _connect(path: str, synchronous: SynchronousLevel, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    try:
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode.lower() != "wal" and path != ":memory:":
            raise StoreError(f"cannot put the database {path!r} in WAL mode (it is in {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


# -- values ---------------------------------------------------------------------


def _timestamp(value: datetime) -> str:
    # Fixed width, so that text order is time order in SQL.
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# id, consumer, topic, body, headers, error_type, error, attempts, failed_at, message_id
_LetterRow = tuple[str, str, str, bytes, str, str, str, int, str, "str | None"]
# id, name, status, version, state, created_at, updated_at
_WorkflowRow = tuple[str, str, str, int, str, str, str]

_LETTER_COLUMNS = (
    "id, consumer, topic, body, headers, error_type, error, attempts, failed_at, message_id"
)
_WORKFLOW_COLUMNS = "id, name, status, version, state, created_at, updated_at"


def _letter_from_row(row: _LetterRow) -> DeadLetter:
    headers = decode_state(row[4], "dead letter headers")
    return DeadLetter(
        id=row[0],
        consumer=row[1],
        topic=row[2],
        body=bytes(row[3]),
        headers=dict(headers),
        error_type=row[5],
        error=row[6],
        attempts=row[7],
        failed_at=_parse_timestamp(row[8]),
        message_id=row[9],
    )


def _workflow_from_row(row: _WorkflowRow) -> WorkflowRecord:
    return WorkflowRecord(
        id=row[0],
        name=row[1],
        status=row[2],
        state=decode_state(row[4], "workflow state"),
        version=row[3],
        created_at=_parse_timestamp(row[5]),
        updated_at=_parse_timestamp(row[6]),
    )


# -- operations (run on the writer thread) ---------------------------------------
#
# Each operation issues at most one modifying statement, and raises only after
# a statement that changed nothing, so a failed operation never leaves a partial
# change in the shared transaction of its batch.


def _op_inbox_add(conn: sqlite3.Connection, consumer: str, message_id: str, now: str) -> bool:
    cursor = conn.execute(
        "INSERT INTO flowkit_inbox (consumer, message_id, added_at) VALUES (?, ?, ?) "
        "ON CONFLICT (consumer, message_id) DO NOTHING",
        (consumer, message_id, now),
    )
    return cursor.rowcount == 1


def _op_inbox_contains(conn: sqlite3.Connection, consumer: str, message_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM flowkit_inbox WHERE consumer = ? AND message_id = ?",
        (consumer, message_id),
    ).fetchone()
    return row is not None


def _op_inbox_prune(conn: sqlite3.Connection, cutoff: str) -> int:
    return conn.execute("DELETE FROM flowkit_inbox WHERE added_at < ?", (cutoff,)).rowcount


def _op_add_dead_letter(conn: sqlite3.Connection, row: _LetterRow) -> None:
    conn.execute(
        f"INSERT INTO flowkit_dead_letters ({_LETTER_COLUMNS}) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        row,
    )


def _op_list_dead_letters(
    conn: sqlite3.Connection, consumer: str | None, topic: str | None, limit: int
) -> list[_LetterRow]:
    clauses: list[str] = []
    params: list[object] = []
    if consumer is not None:
        clauses.append("consumer = ?")
        params.append(consumer)
    if topic is not None:
        clauses.append("topic = ?")
        params.append(topic)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    sql = (
        f"SELECT {_LETTER_COLUMNS} FROM flowkit_dead_letters{where} "
        "ORDER BY failed_at, rowid LIMIT ?"
    )
    return cast("list[_LetterRow]", conn.execute(sql, params).fetchall())


def _op_get_dead_letter(conn: sqlite3.Connection, letter_id: str) -> _LetterRow:
    row = conn.execute(
        f"SELECT {_LETTER_COLUMNS} FROM flowkit_dead_letters WHERE id = ?", (letter_id,)
    ).fetchone()
    if row is None:
        raise NotFound(f"no dead letter with id {letter_id!r}")
    return cast("_LetterRow", row)


def _op_delete_dead_letter(conn: sqlite3.Connection, letter_id: str) -> None:
    cursor = conn.execute("DELETE FROM flowkit_dead_letters WHERE id = ?", (letter_id,))
    if cursor.rowcount == 0:
        raise NotFound(f"no dead letter with id {letter_id!r}")


def _op_create_workflow(
    conn: sqlite3.Connection, workflow_id: str, name: str, status: str, state: str, now: str
) -> tuple[_WorkflowRow, bool]:
    cursor = conn.execute(
        f"INSERT INTO flowkit_workflows ({_WORKFLOW_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (workflow_id, name, status, state, now, now),
    )
    if cursor.rowcount == 1:
        return (workflow_id, name, status, 1, state, now, now), True
    return _op_load_workflow(conn, workflow_id), False


def _op_save_workflow(
    conn: sqlite3.Connection, workflow_id: str, status: str, state: str, version: int, now: str
) -> tuple[str, str]:
    cursor = conn.execute(
        "UPDATE flowkit_workflows SET status = ?, state = ?, version = version + 1, "
        "updated_at = ? WHERE id = ? AND version = ?",
        (status, state, now, workflow_id, version),
    )
    if cursor.rowcount == 1:
        row = conn.execute(
            "SELECT name, created_at FROM flowkit_workflows WHERE id = ?", (workflow_id,)
        ).fetchone()
        return cast("tuple[str, str]", row)
    row = conn.execute(
        "SELECT version FROM flowkit_workflows WHERE id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    raise ConcurrencyConflict(
        f"workflow {workflow_id!r} is at version {row[0]}, not {version}: "
        "it was saved by someone else"
    )


def _op_load_workflow(conn: sqlite3.Connection, workflow_id: str) -> _WorkflowRow:
    row = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS} FROM flowkit_workflows WHERE id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow with id {workflow_id!r}")
    return cast("_WorkflowRow", row)


def _op_list_workflows(
    conn: sqlite3.Connection,
    statuses: tuple[str, ...] | None,
    name: str | None,
    limit: int | None,
) -> list[_WorkflowRow]:
    clauses: list[str] = []
    params: list[object] = []
    if statuses is not None:
        if not statuses:
            return []
        clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
        params.extend(statuses)
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = f"SELECT {_WORKFLOW_COLUMNS} FROM flowkit_workflows{where} ORDER BY created_at, rowid"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return cast("list[_WorkflowRow]", conn.execute(sql, params).fetchall())


def _op_pragma(conn: sqlite3.Connection, name: str) -> object:
    if not name.isidentifier():
        raise StoreError(f"not a pragma name: {name!r}")
    row = conn.execute(f"PRAGMA {name}").fetchone()
    return None if row is None else row[0]


def _op_open(conn: sqlite3.Connection) -> None:
    """Marks the call that opens the database (never called)."""


def _op_stop(conn: sqlite3.Connection) -> None:
    """Marks the call that stops the writer thread (never called)."""


# -- the bridge between event loops and the writer thread ------------------------


def _new_waiter() -> tuple[_Post, _Done]:
    """How the writer thread will wake the current task, and what the task waits on.

    The running event loop's own primitives are used (an asyncio future or a
    trio event, set through ``call_soon_threadsafe`` or a trio token), which
    costs a few microseconds less per call than a generic event.
    """
    if "trio" in sys.modules:
        import trio

        if trio.lowlevel.in_trio_run():
            return trio.lowlevel.current_trio_token().run_sync_soon, trio.Event()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise StoreError("SQLiteStore must be used from an asyncio or trio event loop") from None
    return loop.call_soon_threadsafe, loop.create_future()


async def _wait(done: _Done) -> None:
    if isinstance(done, asyncio.Future):
        await done
    else:
        await done.wait()


class _Call:
    """One operation queued for the writer thread, and its outcome."""

    __slots__ = ("abandoned", "args", "done", "error", "fn", "post", "result", "write")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], *, write: bool) -> None:
        self.fn = fn
        self.args = args
        self.write = write
        self.post, self.done = _new_waiter()
        self.result: Any = None
        self.error: BaseException | None = None
        self.abandoned = False


def _set_done(calls: list[_Call]) -> None:
    for call in calls:
        done = call.done
        if isinstance(done, asyncio.Future):
            if not done.done():  # not cancelled
                done.set_result(None)
        else:
            done.set()


def _wake(calls: list[_Call]) -> None:
    """Wake the callers of ``calls``: one callback per event loop (runs on the writer)."""
    by_loop: dict[_Post, list[_Call]] = {}
    for call in calls:
        by_loop.setdefault(call.post, []).append(call)
    for post, group in by_loop.items():
        # RuntimeError: the caller's event loop has ended; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            post(_set_done, group)


def _error_from(exc: BaseException, doing: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    error = StoreError(f"{doing}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    error.__suppress_context__ = True
    return error


def _operation_name(call: _Call) -> str:
    return f"SQLite {call.fn.__name__.removeprefix('_op_')} failed"


def _run_call(conn: sqlite3.Connection, call: _Call) -> None:
    try:
        call.result = call.fn(conn, *call.args)
        call.error = None
    except Exception as exc:
        call.result = None
        call.error = _error_from(exc, _operation_name(call))


class _Writer:
    """The thread that owns one SQLite connection and runs every operation on it."""

    def __init__(self, path: str, synchronous: SynchronousLevel, busy_timeout: float) -> None:
        self.path = path
        self.synchronous: SynchronousLevel = synchronous
        self.busy_timeout = busy_timeout
        self.queue: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.alive = True
        self.transactions = 0
        self.thread = threading.Thread(
            target=self._run, name=f"flowkit-sqlite {os.path.basename(path)}", daemon=True
        )

    def start(self) -> _Call:
        """Start the thread; the returned call is done once the database is open."""
        opener = _Call(_op_open, (), write=False)
        self.queue.put(opener)
        self.thread.start()
        return opener

    def submit(self, call: _Call) -> None:
        """Queue a call.

        Raises:
            StoreError: if the thread has stopped.
        """
        with self.lock:
            if not self.alive:
                raise StoreError(f"the SQLite store {self.path!r} is closed")
            self.queue.put(call)

    # -- on the writer thread ---------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        stop: _Call | None = None
        try:
            opener = self.queue.get()
            try:
                conn = _connect(self.path, self.synchronous, self.busy_timeout)
            except Exception as exc:
                opener.error = _error_from(exc, f"cannot open the SQLite database {self.path!r}")
                return
            finally:
                _wake([opener])
            while stop is None:
                batch = [self.queue.get()]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                for index, call in enumerate(batch):
                    if call.fn is _op_stop:
                        stop = call
                        for later in batch[index + 1 :]:
                            later.error = StoreError(f"the SQLite store {self.path!r} is closed")
                        del batch[index]  # woken last, once the connection is closed
                        break
                else:
                    index = len(batch)
                live = [call for call in batch[:index] if not call.abandoned]
                try:
                    if live:
                        self._execute(conn, live)
                except Exception as exc:  # unexpected: fail this batch, keep serving
                    _rollback(conn)
                    for call in live:
                        call.result = None
                        call.error = _error_from(exc, "the SQLite writer thread failed")
                finally:
                    _wake(batch)
        finally:
            self._shut_down(conn, stop)

    def _shut_down(self, conn: sqlite3.Connection | None, stop: _Call | None) -> None:
        with self.lock:
            self.alive = False
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                if stop is not None:
                    stop.error = _error_from(exc, "cannot close the SQLite database")
        left: list[_Call] = []
        while True:
            try:
                left.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for call in left:
            call.error = StoreError(f"the SQLite store {self.path!r} is closed")
        if stop is not None:
            left.append(stop)
        _wake(left)

    def _execute(self, conn: sqlite3.Connection, calls: list[_Call]) -> None:
        if not any(call.write for call in calls):
            for call in calls:
                _run_call(conn, call)
            return
        if not self._transaction(conn, calls):
            # The shared transaction was lost (an I/O error, a failed commit):
            # nothing of it was kept, so run each call in a transaction of its own.
            for call in calls:
                self._transaction(conn, [call])

    def _transaction(self, conn: sqlite3.Connection, calls: list[_Call]) -> bool:
        """Run ``calls`` in one transaction; False if it was lost and should be split."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for call in calls:
                call.result = None
                call.error = _error_from(exc, "cannot begin an SQLite write transaction")
            return True
        for call in calls:
            _run_call(conn, call)
            if not conn.in_transaction:  # an error rolled the whole transaction back
                break
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                if len(calls) > 1:
                    return False
                calls[0].result = None
                calls[0].error = _error_from(exc, "cannot commit an SQLite transaction")
                return True
            self.transactions += 1
            return True
        _rollback(conn)
        return len(calls) == 1


# -- the store --------------------------------------------------------------------


class SQLiteStore:
    """A :class:`~flowkit.stores.StateStore` in one SQLite database file.

    Open it with ``async with store:`` (several users may enter one store; it
    closes when the last one exits). Opening creates the file and its tables if
    needed and applies any pending schema migrations; a database written by a
    newer flowkit is refused. Works on asyncio and on trio.

    The state of a workflow is kept as JSON text; dead letter bodies as raw bytes.
    See the module documentation for what survives a crash with each
    ``synchronous`` level.

    Every call is run by the store's writer thread, batched with the calls of
    other tasks into one transaction. A task cancelled while it waits has its
    call skipped if the thread has not started it yet; otherwise the call
    completes (a write may be applied even though its caller was cancelled,
    as with any database).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: SynchronousLevel = "NORMAL",
        busy_timeout: float = 5.0,
    ) -> None:
        """Describe the store; nothing is opened until ``async with store:``.

        Args:
            path: the database file (created if missing; its directory must
                exist), or ``":memory:"`` for a private in-memory database.
            synchronous: SQLite's ``synchronous`` level: ``"NORMAL"`` survives a
                process crash, ``"FULL"`` also survives a power loss.
            busy_timeout: how many seconds to wait for another connection that
                holds the write lock before failing with StoreError.

        Raises:
            ValueError: if ``synchronous`` or ``busy_timeout`` is not valid.
        """
        level = str(synchronous).upper()
        if level not in _SYNCHRONOUS_LEVELS:
            raise ValueError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS_LEVELS)}, not {synchronous!r}"
            )
        if busy_timeout < 0:
            raise ValueError(f"busy_timeout must be >= 0 seconds, not {busy_timeout!r}")
        raw = os.fspath(path)
        self._path = raw if raw == ":memory:" else os.path.abspath(raw)
        self._synchronous: SynchronousLevel = level
        self._busy_timeout = float(busy_timeout)
        self._users = 0
        self._writer: _Writer | None = None
        self._opener: _Call | None = None

    def __repr__(self) -> str:
        state = "open" if self._writer is not None else "closed"
        return f"<SQLiteStore {self._path!r} synchronous={self._synchronous} {state}>"

    @property
    def path(self) -> str:
        """The database file's absolute path (or ``":memory:"``)."""
        return self._path

    @property
    def synchronous(self) -> SynchronousLevel:
        """The ``synchronous`` level the connection uses."""
        return self._synchronous

    async def _call(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts, write: bool) -> T:
        writer = self._writer
        if writer is None:
            raise StoreError(
                f"the SQLite store {self._path!r} is not open; use `async with store:` first"
            )
        call = _Call(fn, args, write=write)
        writer.submit(call)
        try:
            await _wait(call.done)
        except BaseException:
            call.abandoned = True  # skipped unless the writer already started it
            raise
        if call.error is not None:
            raise call.error
        return cast("T", call.result)

    async def _read_pragma(self, name: str) -> object:
        """The value of a pragma on the store's own connection (for tests)."""
        return await self._call(_op_pragma, name, write=False)

    @property
    def _transactions(self) -> int:
        """How many write transactions this store has committed since it opened."""
        return 0 if self._writer is None else self._writer.transactions

    # -- inbox ---------------------------------------------------------------

    async def inbox_add(self, consumer: str, message_id: str) -> bool:
        """Record that ``consumer`` handled ``message_id``.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the handled message's id.

        Returns:
            True if the pair was new, False if it was already recorded.

        Raises:
            StoreError: if the store is not open or SQLite fails.
        """
        now = _timestamp(datetime.now(UTC))
        return await self._call(_op_inbox_add, consumer, message_id, now, write=True)

    async def inbox_contains(self, consumer: str, message_id: str) -> bool:
        """Whether ``consumer`` has already handled ``message_id``.

        Args:
            consumer: the consumer group (``service:handler``).
            message_id: the message's id.

        Returns:
            True if :meth:`inbox_add` recorded the pair.

        Raises:
            StoreError: if the store is not open or SQLite fails.
        """
        return await self._call(_op_inbox_contains, consumer, message_id, write=False)

    async def inbox_prune(self, older_than: datetime) -> int:
        """Forget the inbox entries recorded before ``older_than``.

        Args:
            older_than: a timezone-aware time.

        Returns:
            How many entries were removed.

        Raises:
            StoreError: if the store is not open, ``older_than`` is naive, or
                SQLite fails.
        """
        cutoff = _timestamp(utc(older_than, "older_than"))
        return await self._call(_op_inbox_prune, cutoff, write=True)

    # -- dead letters --------------------------------------------------------

    async def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep a dead letter.

        Adding a letter whose id is already kept leaves the kept one unchanged,
        so a retried add is harmless.

        Args:
            letter: the letter to keep.

        Raises:
            StoreError: if the store is not open, ``letter.failed_at`` is naive,
                the headers are not strings, or SQLite fails.
        """
        failed_at = _timestamp(utc(letter.failed_at, "DeadLetter.failed_at"))
        try:
            headers = json.dumps(dict(letter.headers), separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"dead letter headers are not JSON-serializable: {exc}") from exc
        row: _LetterRow = (
            letter.id,
            letter.consumer,
            letter.topic,
            bytes(letter.body),
            headers,
            letter.error_type,
            letter.error,
            letter.attempts,
            failed_at,
            letter.message_id,
        )
        await self._call(_op_add_dead_letter, row, write=True)

    async def list_dead_letters(
        self, *, consumer: str | None = None, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest (by ``failed_at``) first.

        Args:
            consumer: only the letters of this consumer.
            topic: only the letters from this topic.
            limit: at most this many letters.

        Returns:
            The matching letters.

        Raises:
            StoreError: if the store is not open or SQLite fails.
        """
        rows = await self._call(_op_list_dead_letters, consumer, topic, max(limit, 0), write=False)
        return [_letter_from_row(row) for row in rows]

    async def get_dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter by id.

        Args:
            letter_id: the letter's id.

        Returns:
            The letter.

        Raises:
            NotFound: if there is none with that id.
            StoreError: if the store is not open or SQLite fails.
        """
        return _letter_from_row(await self._call(_op_get_dead_letter, letter_id, write=False))

    async def delete_dead_letter(self, letter_id: str) -> None:
        """Remove a dead letter (after a replay).

        Args:
            letter_id: the letter's id.

        Raises:
            NotFound: if there is none with that id.
            StoreError: if the store is not open or SQLite fails.
        """
        await self._call(_op_delete_dead_letter, letter_id, write=True)

    # -- workflows -----------------------------------------------------------

    async def create_workflow(self, record: WorkflowRecord) -> tuple[WorkflowRecord, bool]:
        """Insert a new workflow record with version 1, unless the id exists.

        Insert-or-return-existing is one atomic step. The store sets
        ``created_at`` and ``updated_at``; the record's own version and
        timestamps are ignored.

        Args:
            record: the new workflow's id, name, status and state.

        Returns:
            ``(stored, created)``: the new record and True, or the record that
            already had this id and False (it is left unchanged).

        Raises:
            StoreError: if the store is not open, the state is not
                JSON-serializable, or SQLite fails.
        """
        state = encode_state(record.state)
        now = _timestamp(datetime.now(UTC))
        row, created = await self._call(
            _op_create_workflow, record.id, record.name, record.status, state, now, write=True
        )
        return _workflow_from_row(row), created

    async def save_workflow(self, record: WorkflowRecord) -> WorkflowRecord:
        """Write a changed record; ``record.version`` is the version it was read at.

        The status and state are written; the name and ``created_at`` stay as
        they were created.

        Args:
            record: the changed record.

        Returns:
            The stored record, its version incremented.

        Raises:
            ConcurrencyConflict: if the stored version is not ``record.version``.
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open, the state is not
                JSON-serializable, or SQLite fails.
        """
        state = encode_state(record.state)
        now = datetime.now(UTC)
        name, created_at = await self._call(
            _op_save_workflow,
            record.id,
            record.status,
            state,
            record.version,
            _timestamp(now),
            write=True,
        )
        return WorkflowRecord(
            id=record.id,
            name=name,
            status=record.status,
            state=record.state,
            version=record.version + 1,
            created_at=_parse_timestamp(created_at),
            updated_at=now,
        )

    async def load_workflow(self, workflow_id: str) -> WorkflowRecord:
        """One workflow record.

        Args:
            workflow_id: the workflow's id.

        Returns:
            The stored record.

        Raises:
            WorkflowNotFound: if no record has this id.
            StoreError: if the store is not open or SQLite fails.
        """
        return _workflow_from_row(await self._call(_op_load_workflow, workflow_id, write=False))

    async def list_workflows(
        self,
        *,
        status: Collection[str] | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[WorkflowRecord]:
        """Workflow records, oldest (by ``created_at``) first.

        Args:
            status: only records in one of these statuses (a single string is
                taken as one status).
            name: only records of this orchestrator.
            limit: at most this many records (all when None).

        Returns:
            The matching records.

        Raises:
            StoreError: if the store is not open or SQLite fails.
        """
        statuses: tuple[str, ...] | None
        if status is None:
            statuses = None
        elif isinstance(status, str):
            statuses = (status,)
        else:
            statuses = tuple(dict.fromkeys(status))
        rows = await self._call(
            _op_list_workflows,
            statuses,
            name,
            None if limit is None else max(limit, 0),
            write=False,
        )
        return [_workflow_from_row(row) for row in rows]

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the store (or add a user to an open one).

        Raises:
            StoreError: if the database cannot be opened, is not in WAL mode, or
                has a newer schema than this flowkit supports.
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
            writer = _Writer(self._path, self._synchronous, self._busy_timeout)
            opener = writer.start()
            self._writer, self._opener = writer, opener
        # Shielded: a cancelled enter must not leave a half-open database behind.
        with anyio.CancelScope(shield=True):
            await _wait(opener.done)
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
        stop = _Call(_op_stop, (), write=False)
        with anyio.CancelScope(shield=True):
            try:
                writer.submit(stop)
            except StoreError:
                pass  # the thread already stopped
            else:
                await _wait(stop.done)
            await anyio.to_thread.run_sync(writer.thread.join)
        if stop.error is not None:
            raise stop.error
