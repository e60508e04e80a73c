"""The order service's own write: save the order and announce it, in one transaction.

The order row and the ``OrderPlaced`` event go into the same database
transaction, through the bus's transactional outbox: if the transaction rolls
back, nobody ever hears of the order; if it commits, the relay publishes the
event even when this process dies right after the commit.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flowkit import Choreography

    from .events import OrderPlaced

__all__ = ["Orders", "PostgresOrders", "SQLiteOrders"]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS orders ("
    "order_id TEXT PRIMARY KEY, user_email TEXT NOT NULL, total REAL NOT NULL)"
)


class Orders(Protocol):
    """Where the order service keeps its orders: the bus's store's database."""

    async def place(self, bus: Choreography, order: OrderPlaced) -> None:
        """Save ``order`` and put ``OrderPlaced`` in the outbox, in one transaction."""
        ...


class SQLiteOrders:
    """Orders in the SQLiteStore's file, written with the standard sqlite3 module."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def place(self, bus: Choreography, order: OrderPlaced) -> None:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            with conn:  # one transaction: committed on success, rolled back on error
                conn.execute(_TABLE)
                conn.execute(
                    "INSERT INTO orders (order_id, user_email, total) VALUES (?, ?, ?)",
                    (order.order_id, order.user_email, order.total),
                )
                await bus.outbox.publish(conn, order, key=order.order_id)
        finally:
            conn.close()


class PostgresOrders:
    """Orders in the PostgresStore's database, written with asyncpg."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    async def place(self, bus: Choreography, order: OrderPlaced) -> None:
        import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

        conn: Any = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute(_TABLE.replace("orders", f'"{self.schema}".orders', 1))
                await conn.execute(
                    f'INSERT INTO "{self.schema}".orders (order_id, user_email, total) '
                    "VALUES ($1, $2, $3)",
                    order.order_id,
                    order.user_email,
                    order.total,
                )
                await bus.outbox.publish(conn, order, key=order.order_id)
        finally:
            await conn.close()
