"""The writer thread: it owns one connection and runs every operation on it.

Callers queue a :class:`Call` and wait on their own event loop (asyncio or
trio). The thread takes everything queued so far and runs it as one
transaction (a *group commit*: concurrent workflows share one commit, and with
``synchronous=FULL`` one ``fsync``), then wakes the callers with one callback
per event loop. A batch of reads runs without a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import sys
import threading
from typing import TYPE_CHECKING, Any, TypeAlias

from ..._errors import StoreError
from ._schema import connect, rollback

if TYPE_CHECKING:
    from collections.abc import Callable

    import trio

    from ._schema import Database

    #: Schedules ``callback(calls)`` on an event loop, from any thread.
    _Post: TypeAlias = Callable[[Callable[[list["Call"]], None], list["Call"]], object]
    #: What a caller waits on: set on its own event loop once its call is done.
    _Done: TypeAlias = asyncio.Future[None] | trio.Event

__all__ = ["Call", "Writer", "stop", "wait"]

#: The most operations the writer thread commits in one transaction.
_MAX_BATCH = 512


def _open(conn: sqlite3.Connection) -> None:
    """Marks the call that opens the database (never called)."""


def stop(conn: sqlite3.Connection) -> None:
    """Marks the call that stops the writer thread (never called)."""


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


async def wait(done: _Done) -> None:
    """Wait until the writer thread has finished a call."""
    if isinstance(done, asyncio.Future):
        await done
    else:
        await done.wait()


class Call:
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


def _set_done(calls: list[Call]) -> None:
    for call in calls:
        done = call.done
        if isinstance(done, asyncio.Future):
            if not done.done():  # not cancelled
                done.set_result(None)
        else:
            done.set()


def _wake(calls: list[Call]) -> None:
    """Wake the callers of ``calls``: one callback per event loop (runs on the writer)."""
    by_loop: dict[_Post, list[Call]] = {}
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


def _run_call(conn: sqlite3.Connection, call: Call) -> None:
    try:
        call.result = call.fn(conn, *call.args)
        call.error = None
    except Exception as exc:
        call.result = None
        call.error = _error_from(exc, f"SQLite {call.fn.__name__} failed")


class Writer:
    """The thread that owns one SQLite connection and runs every operation on it."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.queue: queue.SimpleQueue[Call] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.alive = True
        self.transactions = 0
        self.thread = threading.Thread(
            target=self._run,
            name=f"flowkit-sqlite {os.path.basename(database.path)}",
            daemon=True,
        )

    def start(self) -> Call:
        """Start the thread; the returned call is done once the database is open."""
        opener = Call(_open, (), write=False)
        self.queue.put(opener)
        self.thread.start()
        return opener

    def submit(self, call: Call) -> None:
        """Queue a call.

        Raises:
            StoreError: if the thread has stopped.
        """
        with self.lock:
            if not self.alive:
                raise self._closed()
            self.queue.put(call)

    def _closed(self) -> StoreError:
        return StoreError(f"the SQLite store {self.database.shown} is closed")

    # -- on the writer thread ---------------------------------------------------

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        stopper: Call | None = None
        try:
            opener = self.queue.get()
            try:
                conn = connect(self.database)
            except Exception as exc:
                opener.error = _error_from(
                    exc, f"cannot open the SQLite database {self.database.shown}"
                )
                return
            finally:
                _wake([opener])
            while stopper is None:
                batch = [self.queue.get()]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                for index, call in enumerate(batch):
                    if call.fn is stop:
                        stopper = call
                        for later in batch[index + 1 :]:
                            later.error = self._closed()
                        del batch[index]  # woken last, once the connection is closed
                        break
                else:
                    index = len(batch)
                live = [call for call in batch[:index] if not call.abandoned]
                try:
                    if live:
                        self._execute(conn, live)
                except Exception as exc:  # unexpected: fail this batch, keep serving
                    rollback(conn)
                    for call in live:
                        call.result = None
                        call.error = _error_from(exc, "the SQLite writer thread failed")
                finally:
                    _wake(batch)
        finally:
            self._shut_down(conn, stopper)

    def _shut_down(self, conn: sqlite3.Connection | None, stopper: Call | None) -> None:
        with self.lock:
            self.alive = False
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                if stopper is not None:
                    stopper.error = _error_from(exc, "cannot close the SQLite database")
        left: list[Call] = []
        while True:
            try:
                left.append(self.queue.get_nowait())
            except queue.Empty:
                break
        for call in left:
            call.error = self._closed()
        if stopper is not None:
            left.append(stopper)
        _wake(left)

    def _execute(self, conn: sqlite3.Connection, calls: list[Call]) -> None:
        if not any(call.write for call in calls):
            for call in calls:
                _run_call(conn, call)
            return
        if not self._transaction(conn, calls):
            # The shared transaction was lost (an I/O error, a failed commit):
            # nothing of it was kept, so run each call in a transaction of its own.
            for call in calls:
                self._transaction(conn, [call])

    def _transaction(self, conn: sqlite3.Connection, calls: list[Call]) -> bool:
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
                rollback(conn)
                if len(calls) > 1:
                    return False
                calls[0].result = None
                calls[0].error = _error_from(exc, "cannot commit an SQLite transaction")
                return True
            self.transactions += 1
            return True
        rollback(conn)
        return len(calls) == 1
