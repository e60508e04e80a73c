"""The order service's own steps: stock and payment, local to the orchestrator."""

from __future__ import annotations

from flowkit import NonRetryableError
from flowkit.orchestration import StepContext

from .events import OrderPlaced
from .world import World


class CardDeclined(NonRetryableError):
    """The payment provider refused the card: retrying will not help."""


def make_steps(world: World):  # type: ignore[no-untyped-def]
    """The local steps and compensations, bound to the world they act on."""

    async def reserve_stock(ctx: StepContext, order: OrderPlaced) -> str:
        return world.once(
            ctx.idempotency_key, lambda: world.log("order", f"reserved {order.items}")
        )

    async def release_stock(ctx: StepContext, order: OrderPlaced) -> None:
        world.once(ctx.idempotency_key, lambda: world.log("order", f"released {order.items}"))

    async def charge_payment(ctx: StepContext, order: OrderPlaced) -> str:
        world.check("payment-provider")
        if order.total > 1000:
            raise CardDeclined(f"card declined for {order.total:.2f}")
        return world.once(
            ctx.idempotency_key, lambda: world.log("order", f"charged {order.total:.2f}")
        )

    async def refund_payment(ctx: StepContext, order: OrderPlaced) -> None:
        world.once(
            ctx.idempotency_key, lambda: world.log("order", f"refunded {order.total:.2f}")
        )

    return reserve_stock, release_stock, charge_payment, refund_payment
