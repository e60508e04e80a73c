"""The order workflow as choreography: each service reacts to OrderPlaced on its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowkit import Choreography, DeadLetter
from flowkit.stores import SQLiteStore, StateStore
from flowkit.transports import InMemoryTransport

from . import logistics, notification, order_history, seller
from .events import OrderPlaced
from .order_service import Orders, SQLiteOrders
from .world import World


@dataclass
class ChoreographyResult:
    world: World
    timelines: dict[str, list[str]]
    dead_letters: list[DeadLetter]


def build_bus(world: World, store: StateStore | Path) -> tuple[Choreography, dict[str, list[str]]]:
    """One bus with every service registered; in production each service process
    builds its own bus on a broker transport and runs only its own service.

    ``store`` is a store, or the path of an SQLite file."""
    if isinstance(store, Path):
        store = SQLiteStore(store)
    bus = Choreography(InMemoryTransport(), store=store)
    for service in (notification, seller, logistics):
        service.register(bus, world)
    timelines = order_history.register(bus, world)
    return bus, timelines


async def run_choreography(
    store: StateStore | Path, *, echo: bool = False, orders: Orders | None = None
) -> ChoreographyResult:
    """Place two orders: o-1 goes through; o-2 has a bad email, and the partner
    API fails twice on it before logistics books a partner.

    The order service saves each order and puts ``OrderPlaced`` in the bus's
    outbox in one transaction (``orders``: the database it writes to; by
    default the SQLite file of ``store``); the bus's relay publishes it.
    """
    world = World(echo=echo)
    if orders is None:
        if isinstance(store, Path):
            orders = SQLiteOrders(str(store))
        elif isinstance(store, SQLiteStore):
            orders = SQLiteOrders(store.path)
        else:
            raise TypeError("pass orders=... for a store other than an SQLite file")
    bus, timelines = build_bus(world, store)
    transport = bus.transport
    assert isinstance(transport, InMemoryTransport)
    world.fail("partner-api:o-2", times=2)  # logistics retries o-2 with backoff
    async with bus:
        await orders.place(
            bus,
            OrderPlaced(
                order_id="o-1",
                user_email="ada@example.com",
                seller_id="seller-9",
                items=["book"],
                total=25.0,
            ),
        )
        await orders.place(
            bus,
            OrderPlaced(
                order_id="o-2",
                user_email="not-an-email",
                seller_id="seller-9",
                items=["lamp"],
                total=40.0,
            ),
        )
        await bus.wait_idle(10)
        dead = await bus.dead_letters()
    return ChoreographyResult(world, timelines, dead)
