"""The e-commerce services for ``flowkit worker``, acting on a world with chaos switches.

::

    flowkit worker tests.chaos.services:bus --services seller

The same services as :mod:`examples.ecommerce.services` (the example's modules,
unchanged), on a :class:`ChaosWorld`: the example's shared ledger, plus a
switch the chaos runner sets to make the calls to an outside system slow for a
while (``World.check`` sleeps), in whichever process makes them.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from examples.ecommerce import logistics, notification, seller
from examples.ecommerce.ledger import SharedWorld
from examples.ecommerce.services import register_history
from flowkit import Choreography
from flowkit.stores import from_url as store_from_url
from flowkit.transports import from_url as transport_from_url

if TYPE_CHECKING:
    import sqlite3

__all__ = ["ChaosWorld", "bus", "world"]

_SLOW_SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_slow (
    what TEXT PRIMARY KEY,
    until REAL NOT NULL,
    delay REAL NOT NULL
);
"""


class ChaosWorld(SharedWorld):
    """A :class:`SharedWorld` whose outside systems can also be made slow.

    ``slow(what, seconds, delay)``: for the next ``seconds``, every ``check(what)``,
    in any process, takes ``delay`` seconds more (a blocking sleep: the handler
    holds its worker's event loop, as a CPU-bound or badly written one would).
    """

    _slow_cache: tuple[float, dict[str, tuple[float, float]]] = (0.0, {})

    def slow(self, what: str, seconds: float, delay: float) -> None:
        with self._write() as conn:
            self._slow_table(conn)
            conn.execute(
                "INSERT INTO chaos_slow (what, until, delay) VALUES (?, ?, ?) "
                "ON CONFLICT (what) DO UPDATE SET until = excluded.until, delay = excluded.delay",
                (what, time.time() + seconds, delay),
            )

    def check(self, what: str) -> None:
        now = time.time()
        read_at, slow = self._slow_cache
        if now - read_at > 0.1:  # read the switches at most ten times a second
            with self._write() as conn:
                self._slow_table(conn)
                rows = conn.execute("SELECT what, until, delay FROM chaos_slow").fetchall()
            slow = {row[0]: (row[1], row[2]) for row in rows}
            self._slow_cache = (now, slow)
        until, delay = slow.get(what, (0.0, 0.0))
        if now < until:
            time.sleep(delay)
        super().check(what)

    @staticmethod
    def _slow_table(conn: sqlite3.Connection) -> None:
        conn.execute(_SLOW_SCHEMA)


world = ChaosWorld(os.environ.get("ECOMMERCE_LEDGER") or "chaos-ledger.db")
bus = Choreography(
    transport_from_url(os.environ.get("FLOWKIT_TRANSPORT") or "memory://"),
    store=store_from_url(os.environ.get("FLOWKIT_STORE") or "sqlite:///chaos.db"),
    claim_lease=5.0,  # as the example: a killed worker's messages are taken over soon
)
for _service in (notification, seller, logistics):
    _service.register(bus, world)
register_history(bus, world)
