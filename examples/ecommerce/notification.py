"""The notification service: emails the user a confirmation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowkit import Choreography, Context, NonRetryableError

from .events import ConfirmationSent, Done, OrderPlaced, SendConfirmation

if TYPE_CHECKING:
    from .world import World

SERVICE = "notification"


async def send_email(world: World, order_id: str, email: str, key: str) -> str:
    """Send the confirmation email; the key makes a re-send a no-op."""
    if "@" not in email:
        # The error names the problem, not the address: errors end up in logs.
        raise NonRetryableError(f"cannot email the customer of order {order_id}: not an address")
    return world.once(key, lambda: world.log(SERVICE, f"emailed {email} about order {order_id}"))


def register(bus: Choreography, world: World, *, orchestrated: bool = False) -> None:
    """Declare this service's handlers on ``bus``: it answers the saga's command
    and, unless ``orchestrated`` (the saga asks for the email), reacts to
    ``OrderPlaced`` on its own."""
    if not orchestrated:

        @bus.on(OrderPlaced, service=SERVICE, emits=[ConfirmationSent], name="confirm-order")
        async def confirm_order(event: OrderPlaced, ctx: Context) -> None:
            await send_email(world, event.order_id, event.user_email, ctx.idempotency_key)
            await ctx.publish(ConfirmationSent(order_id=event.order_id, email=event.user_email))

    @bus.handles(SendConfirmation, service=SERVICE, name="send-confirmation")
    async def send_confirmation(command: SendConfirmation, ctx: Context) -> Done:
        ref = await send_email(world, command.order_id, command.user_email, ctx.idempotency_key)
        return Done(reference=ref)
