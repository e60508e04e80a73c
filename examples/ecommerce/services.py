"""Every service of the example on one bus, for ``flowkit worker``: one process per service.

::

    ECOMMERCE_LEDGER=/tmp/shop/ledger.db flowkit worker examples.ecommerce.services:bus \\
        --services logistics --transport redis://127.0.0.1:6379/0 \\
        --store sqlite:////tmp/shop/flowkit.db

The bus runs on ``$FLOWKIT_TRANSPORT`` with the store ``$FLOWKIT_STORE``
(``--transport`` and ``--store`` replace them); the services act on the shared
ledger ``$ECOMMERCE_LEDGER`` (:class:`~examples.ecommerce.ledger.SharedWorld`).
The bus records every flow in the store's trace (``flowkit trace o-2 --store
URL``) and expects each order to be confirmed to its customer within
:data:`CONFIRMATION_WITHIN` (``flowkit stalled examples.ecommerce.services:bus``).
The notification, seller and logistics services are the modules of the
single-process demo, unchanged; the order history keeps its timelines in the
ledger, where every process can read them.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING

from flowkit import Choreography
from flowkit.stores import from_url as store_from_url
from flowkit.transports import from_url as transport_from_url

from . import logistics, notification, order_history, seller
from .events import ConfirmationSent, OrderPlaced, PartnerAssigned, ShipmentPrepared
from .ledger import SharedWorld

if TYPE_CHECKING:
    from flowkit import Context, Event

    from .world import World

__all__ = ["CONFIRMATION_WITHIN", "HISTORY", "bus", "history_line", "register_history", "world"]

HISTORY = (OrderPlaced, ConfirmationSent, ShipmentPrepared, PartnerAssigned)
"""The events the order history records."""

CONFIRMATION_WITHIN = timedelta(seconds=2)
"""How soon a placed order must be confirmed to its customer (a demo's
deadline: the services answer in milliseconds)."""


def history_line(order_id: str, event_type: str) -> str:
    """The ledger line of one event in the order history of ``order_id``."""
    return f"[{order_history.SERVICE}] order {order_id}: {event_type}"


def register_history(bus: Choreography, world: World) -> None:
    """Declare the order history, recording each event of an order in ``world``."""

    async def record(event: Event, ctx: Context) -> None:
        order_id = str(getattr(event, "order_id", "?"))
        event_type = type(event).__name__
        world.once(
            ctx.idempotency_key,
            lambda: world.log(order_history.SERVICE, f"order {order_id}: {event_type}"),
        )

    for event_type in HISTORY:
        bus.on(event_type, service=order_history.SERVICE, name=f"record-{event_type.__name__}")(
            record
        )


world = SharedWorld.from_env()
bus = Choreography(
    transport_from_url(os.environ.get("FLOWKIT_TRANSPORT") or "memory://"),
    store=store_from_url(os.environ.get("FLOWKIT_STORE") or "sqlite:///ecommerce.db"),
    # The handlers take milliseconds: the messages a killed process was handling
    # are taken over after 5 seconds, not the default five minutes.
    claim_lease=5.0,
)
for _service in (notification, seller, logistics):
    _service.register(bus, world)
register_history(bus, world)
bus.expect(
    OrderPlaced, leads_to=[ConfirmationSent], within=CONFIRMATION_WITHIN, name="order confirmed"
)
