"""The seller service: prepares the shipment of an order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .events import CancelShipment, Done, OrderPlaced, PrepareShipment, ShipmentPrepared

if TYPE_CHECKING:
    from flowkit import Choreography, Context

    from .world import World

SERVICE = "seller"


async def prepare_shipment(world: World, order_id: str, seller_id: str, key: str) -> str:
    """Ask the seller's warehouse to pack the order; returns the parcel id."""
    world.check("warehouse")
    parcel = f"parcel-{order_id}"
    world.once(key, lambda: world.log(SERVICE, f"{seller_id} packs {parcel}"))
    return parcel


def register(bus: Choreography, world: World) -> None:
    """Declare this service's handlers on ``bus``."""

    @bus.on(OrderPlaced, service=SERVICE, emits=[ShipmentPrepared], name="prepare-shipment")
    async def on_order_placed(event: OrderPlaced, ctx: Context) -> None:
        parcel = await prepare_shipment(world, event.order_id, event.seller_id, ctx.idempotency_key)
        await ctx.publish(
            ShipmentPrepared(order_id=event.order_id, seller_id=event.seller_id, parcel_id=parcel)
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
