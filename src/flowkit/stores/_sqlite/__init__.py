"""A state store in one SQLite database file (standard library :mod:`sqlite3` only).

The package is laid out by job:

* ``_schema``: the schema, its version table and migrations, and opening a
  connection ready for use (read-write and migrated, or read-only and checked);
* ``_rows``: records to rows and back, timestamps, and the checks that find an
  unreadable row;
* ``_ops``: the SQL operations, run on the writer thread's connection;
* ``_writer``: the writer thread that runs them, batching writes into one
  transaction (group commit), and the bridge to asyncio and trio callers;
* ``_store``: the public :class:`SQLiteStore`;
* ``_trace``, ``_outbox``, ``_waits``: the flow trace, the transactional
  outbox, and the waits (due workflows, the mailbox) kept in the database.
"""

from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._schema import SynchronousLevel as SynchronousLevel
from ._store import SQLiteStore as SQLiteStore

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "SynchronousLevel"]
