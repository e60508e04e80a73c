"""The seller service: accepts orders and prepares their shipment."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from .events import (
    CancelShipment,
    Done,
    OrderPlaced,
    PrepareShipment,
    SellerAccepted,
    ShipmentPrepared,
)

if TYPE_CHECKING:
    from flowkit import Choreography, Context

    from .world import World

SERVICE = "seller"

AWAY = frozenset({"seller-7"})
"""Sellers who never answer (on holiday, say): their orders wait in their inbox,
and the orchestrated saga gives up on them when its wait runs out."""

ANSWERS_AFTER = 0.2
"""Seconds a seller takes to accept an order: a person takes minutes or hours,
the demo's sellers are quick."""


async def prepare_shipment(world: World, order_id: str, seller_id: str, key: str) -> str:
    """Ask the seller's warehouse to pack the order; returns the parcel id."""
    world.check("warehouse")
    parcel = f"parcel-{order_id}"
    world.once(key, lambda: world.log(SERVICE, f"{seller_id} packs {parcel}"))
    return parcel


def register(bus: Choreography, world: World, *, orchestrated: bool = False) -> None:
    """Declare this service's handlers on ``bus``.

    The seller answers the saga's commands and reacts to ``OrderPlaced``: in the
    choreographed version (the default) by preparing the shipment on its own;
    ``orchestrated``, by accepting the order (``SellerAccepted``), the saga
    asking for the shipment once it has the seller's answer.
    """
    if orchestrated:

        @bus.on(OrderPlaced, service=SERVICE, emits=[SellerAccepted], name="accept-order")
        async def accept_order(event: OrderPlaced, ctx: Context) -> None:
            seller, order = event.seller_id, event.order_id
            if seller in AWAY:
                world.once(
                    ctx.idempotency_key,
                    lambda: world.log(
                        SERVICE, f"order {order} waits in {seller}'s inbox: {seller} is away"
                    ),
                )
                return
            await anyio.sleep(ANSWERS_AFTER)  # the seller reads the order, and accepts it
            world.once(
                ctx.idempotency_key, lambda: world.log(SERVICE, f"{seller} accepts order {order}")
            )
            await ctx.publish(SellerAccepted(order_id=order, seller_id=seller))

    else:

        @bus.on(OrderPlaced, service=SERVICE, emits=[ShipmentPrepared], name="prepare-shipment")
        async def on_order_placed(event: OrderPlaced, ctx: Context) -> None:
            parcel = await prepare_shipment(
                world, event.order_id, event.seller_id, ctx.idempotency_key
            )
            await ctx.publish(
                ShipmentPrepared(
                    order_id=event.order_id, seller_id=event.seller_id, parcel_id=parcel
                )
            )

    @bus.handles(PrepareShipment, service=SERVICE, name="prepare")
    async def on_prepare(command: PrepareShipment, ctx: Context) -> Done:
        parcel = await prepare_shipment(
            world, command.order_id, command.seller_id, ctx.idempotency_key
        )
        return Done(reference=parcel)

    @bus.handles(CancelShipment, service=SERVICE, name="cancel")
    async def on_cancel(command: CancelShipment, ctx: Context) -> Done:
        world.once(
            ctx.idempotency_key,
            lambda: world.log(SERVICE, f"{command.seller_id} unpacks parcel-{command.order_id}"),
        )
        return Done(reference=f"parcel-{command.order_id}")
