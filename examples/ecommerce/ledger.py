"""The outside world of the example shared by several processes: one SQLite file.

:class:`SharedWorld` has the methods of :class:`~examples.ecommerce.world.World`
(``log``, ``once``, ``fail``, ``check``), so the services register on it
unchanged, but what it records is seen by every process that opens the same
file:

* ``effects``: one row per idempotency key, the first time an effect is
  applied with it. Applying the same key again does not act again (the outside
  systems honour idempotency keys) but is counted in ``repeats``, with the
  process that repeated it: a test sees every duplicate handling, not only the
  duplicate effects.
* ``outages``: the outside systems that are down, and for how many more calls,
  set by ``fail`` and used up by ``check`` in whichever process calls them.

Each call is one short write transaction; SQLite in WAL mode serializes the
writers of all processes.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .world import World

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["LEDGER_ENV", "PROCESS_ENV", "Effect", "SharedWorld"]

LEDGER_ENV = "ECOMMERCE_LEDGER"
"""The environment variable naming the ledger file of the service processes."""

PROCESS_ENV = "ECOMMERCE_PROCESS"
"""The environment variable naming the process in the ledger (``logistics-2``)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    line TEXT NOT NULL,
    service TEXT NOT NULL,
    process TEXT NOT NULL,
    applied_at REAL NOT NULL,
    repeats INTEGER NOT NULL DEFAULT 0,
    repeated_by TEXT
);
CREATE TABLE IF NOT EXISTS outages (
    what TEXT PRIMARY KEY,
    remaining INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Effect:
    """One effect in the ledger.

    Attributes:
        key: the idempotency key it was applied with.
        line: what happened, ``[service] text``.
        service: the service that applied it.
        process: the process that applied it.
        applied_at: when, in seconds since the epoch.
        repeats: how many times the same key was applied again (not acted upon).
        repeated_by: the process that repeated it last, if any.
    """

    key: str
    line: str
    service: str
    process: str
    applied_at: float
    repeats: int
    repeated_by: str | None


class SharedWorld(World):
    """A :class:`World` whose effects and outages are kept in a SQLite file.

    Args:
        path: the ledger file; created when first used.
        process: this process's name in the ledger (default: ``$ECOMMERCE_PROCESS``,
            else ``pid N``).
        echo: print each line as it is logged.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, process: str | None = None, echo: bool = False
    ) -> None:
        super().__init__(echo=echo)
        self.path = os.fspath(path)
        self.process = process or os.environ.get(PROCESS_ENV) or f"pid {os.getpid()}"
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def from_env(cls, default: str = "ecommerce-ledger.db") -> SharedWorld:
        """The world of the ledger named by ``$ECOMMERCE_LEDGER`` (else ``default``)."""
        return cls(os.environ.get(LEDGER_ENV) or default)

    # -- the World interface -----------------------------------------------------

    def once(self, key: str, effect: Callable[[], str]) -> str:
        """Apply ``effect`` once per ``key`` across every process; a repeat is
        counted and returns the first result."""
        with self._write() as conn:
            row = conn.execute("SELECT line FROM effects WHERE key = ?", (key,)).fetchone()
            if row is not None:
                conn.execute(
                    "UPDATE effects SET repeats = repeats + 1, repeated_by = ? WHERE key = ?",
                    (self.process, key),
                )
                return str(row[0])
            line = effect()
            service = line[1 : line.index("]")] if line.startswith("[") and "]" in line else ""
            conn.execute(
                "INSERT INTO effects (key, line, service, process, applied_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, line, service, self.process, time.time()),
            )
            return line

    def fail(self, what: str, times: int = 1) -> None:
        """Make the next ``times`` calls of ``what``, in any process, fail."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO outages (what, remaining) VALUES (?, ?) "
                "ON CONFLICT (what) DO UPDATE SET remaining = excluded.remaining",
                (what, times),
            )

    def check(self, what: str) -> None:
        """Raise ``ConnectionError`` if ``what`` is set to fail (using up one failure)."""
        with self._write() as conn:
            row = conn.execute("SELECT remaining FROM outages WHERE what = ?", (what,)).fetchone()
            if row is None or row[0] <= 0:
                return
            conn.execute("UPDATE outages SET remaining = remaining - 1 WHERE what = ?", (what,))
        raise ConnectionError(f"{what} is unavailable")

    # -- more -------------------------------------------------------------------

    def repair(self, what: str) -> None:
        """``what`` works again, in every process."""
        with self._write() as conn:
            conn.execute("DELETE FROM outages WHERE what = ?", (what,))

    def applied(self) -> list[Effect]:
        """Every effect applied so far, in the order they were applied."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT key, line, service, process, applied_at, repeats, repeated_by "
                "FROM effects ORDER BY applied_at, rowid"
            ).fetchall()
        return [Effect(*row) for row in rows]

    def close(self) -> None:
        """Close this process's connection to the ledger (it reopens when used)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once so that a read and the write that
        depends on it are one atomic step across processes."""
        conn = self._conn
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
