"""The order history service, added later: it only subscribes.

Adding it changed no other service: that is choreography's promise. Events of
different types travel separately, so they may arrive in any order; the
history is kept in the order they happened (each envelope's ``occurred_at``,
then its time-ordered message id).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING

from .events import ConfirmationSent, OrderPlaced, PartnerAssigned, ShipmentPrepared

if TYPE_CHECKING:
    from datetime import datetime

    from flowkit import Choreography, Context, Event

    from .world import World

SERVICE = "order-history"


def register(bus: Choreography, world: World) -> dict[str, list[str]]:
    """Declare this service's handlers; returns the timelines it keeps per order."""
    timelines: dict[str, list[str]] = {}
    seen: dict[str, list[tuple[datetime, str, str]]] = {}

    async def record(event: Event, ctx: Context) -> None:
        order_id = str(getattr(event, "order_id", "?"))
        happened = seen.setdefault(order_id, [])
        envelope = ctx.envelope
        bisect.insort(happened, (envelope.occurred_at, envelope.message_id, type(event).__name__))
        timelines[order_id] = [name for _, _, name in happened]

    for event_type in (OrderPlaced, ConfirmationSent, ShipmentPrepared, PartnerAssigned):
        bus.on(event_type, service=SERVICE, name=f"record-{event_type.__name__}")(record)
    return timelines
