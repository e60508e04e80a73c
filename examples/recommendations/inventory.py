"""The inventory service: answers LookupItems from its catalogue."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from flowkit import Choreography, Context, NonRetryableError, Retry

from .messages import Item, Items, LookupItems

SERVICE = "inventory"

CATALOGUE = {
    "i-1": ("Lamp", True),
    "i-2": ("Desk", False),
    "i-3": ("Chair", True),
    "i-4": ("Rug", True),
}


@dataclass
class InventoryBehaviour:
    """How the inventory service misbehaves, for the example and its tests."""

    latency: float = 0.0
    broken: bool = False
    calls: list[list[str]] = field(default_factory=list)


def register(bus: Choreography, behaviour: InventoryBehaviour) -> None:
    """Declare the inventory service's handler on ``bus``."""

    @bus.handles(LookupItems, service=SERVICE, retry=Retry.never(), concurrency=4)
    async def lookup(command: LookupItems, ctx: Context) -> Items:
        behaviour.calls.append(command.ids)
        if behaviour.latency:
            await anyio.sleep(behaviour.latency)
        if behaviour.broken:
            raise NonRetryableError("inventory database is unavailable")
        return Items(
            items=[
                Item(id=i, name=CATALOGUE[i][0], in_stock=CATALOGUE[i][1])
                for i in command.ids
                if i in CATALOGUE
            ]
        )
