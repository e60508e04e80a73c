"""The order history service, added later: it only subscribes.

Adding it changed no other service: that is choreography's promise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import ConfirmationSent, OrderPlaced, PartnerAssigned, ShipmentPrepared

if TYPE_CHECKING:
    from flowkit import Choreography, Context, Event

    from .world import World

SERVICE = "order-history"


def register(bus: Choreography, world: World) -> dict[str, list[str]]:
    """Declare this service's handlers; returns the timelines it keeps per order."""
    timelines: dict[str, list[str]] = {}

    async def record(event: Event, ctx: Context) -> None:
        order_id = str(getattr(event, "order_id", "?"))
        timelines.setdefault(order_id, []).append(type(event).__name__)

    for event_type in (OrderPlaced, ConfirmationSent, ShipmentPrepared, PartnerAssigned):
        bus.on(event_type, service=SERVICE, name=f"record-{event_type.__name__}")(record)
    return timelines
