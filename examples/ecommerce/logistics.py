"""The logistics service: assigns a delivery partner to an order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowkit import Choreography, Context, Retry

from .events import AssignPartner, Done, OrderPlaced, PartnerAssigned, ReleasePartner

if TYPE_CHECKING:
    from .world import World

SERVICE = "logistics"
PARTNERS = ("RapidRoute", "ParcelPals", "SwiftShip")


async def assign_partner(world: World, order_id: str, key: str) -> str:
    """Book a delivery partner for the order (the partner API may be down, for
    every order or for this one)."""
    world.check("partner-api")
    world.check(f"partner-api:{order_id}")
    partner = PARTNERS[sum(map(ord, order_id)) % len(PARTNERS)]
    world.once(key, lambda: world.log(SERVICE, f"{partner} will deliver order {order_id}"))
    return partner


def register(bus: Choreography, world: World, *, orchestrated: bool = False) -> None:
    """Declare this service's handlers on ``bus``: it answers the saga's commands
    and, unless ``orchestrated`` (the saga asks for the partner), reacts to
    ``OrderPlaced`` on its own."""
    if not orchestrated:

        @bus.on(
            OrderPlaced,
            service=SERVICE,
            emits=[PartnerAssigned],
            retry=Retry(attempts=5, backoff=0.01),
            name="assign-partner",
        )
        async def on_order_placed(event: OrderPlaced, ctx: Context) -> None:
            if ctx.attempt > 1:
                world.log(SERVICE, f"attempt {ctx.attempt} for order {event.order_id}")
            partner = await assign_partner(world, event.order_id, ctx.idempotency_key)
            await ctx.publish(PartnerAssigned(order_id=event.order_id, partner=partner))

    @bus.handles(
        AssignPartner, service=SERVICE, retry=Retry(attempts=3, backoff=0.01), name="assign"
    )
    async def on_assign(command: AssignPartner, ctx: Context) -> Done:
        return Done(reference=await assign_partner(world, command.order_id, ctx.idempotency_key))

    @bus.handles(ReleasePartner, service=SERVICE, name="release")
    async def on_release(command: ReleasePartner, ctx: Context) -> Done:
        world.once(
            ctx.idempotency_key,
            lambda: world.log(SERVICE, f"released the partner of order {command.order_id}"),
        )
        return Done(reference=command.order_id)
