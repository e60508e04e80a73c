"""A state store in a PostgreSQL database, through asyncpg (asyncio only).

The package is laid out by job:

* ``_schema``: the tables, their version table and migrations, applied under
  an advisory lock;
* ``_rows``: database rows to records and back;
* ``_ops``: the SQL operations, each run on one pooled connection;
* ``_pool``: the connection pool, the event loop check, and asyncpg errors
  translated into :class:`~flowkit.StoreError`;
* ``_store``: the public :class:`PostgresStore`;
* ``_outbox``, ``_trace``, ``_waits``: the transactional outbox, the flow
  trace, and the waiting workflows with their mailbox, each with its own SQL.

Importing this package imports asyncpg.
"""

from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._store import PostgresStore as PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresStore"]
