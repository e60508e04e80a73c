"""The README's saga quickstart: a failed payment releases the reserved stock."""

import anyio

from flowkit import Event, NonRetryableError, Orchestrator, Step, StepContext
from flowkit.stores import MemoryStore


class OrderPlaced(Event):
    order_id: str
    total: float


async def reserve_stock(ctx: StepContext, order: OrderPlaced) -> str:
    print(f"reserved stock for {order.order_id}")
    return "reservation-1"


async def release_stock(ctx: StepContext, order: OrderPlaced) -> None:
    print(f"released stock for {order.order_id}")


async def charge_payment(ctx: StepContext, order: OrderPlaced) -> str:
    if order.total > 100:
        raise NonRetryableError("card declined")
    return "payment-1"


class PlaceOrder(Orchestrator[OrderPlaced]):
    steps = (Step(reserve_stock, compensate=release_stock), Step(charge_payment))


async def main() -> None:
    async with PlaceOrder(store=MemoryStore()) as orders:
        for order in (
            OrderPlaced(order_id="o-1", total=20),
            OrderPlaced(order_id="o-2", total=500),
        ):
            outcome = await orders.run(order, workflow_id=order.order_id)
            print(f"{order.order_id}: {outcome.status.value}")


if __name__ == "__main__":
    anyio.run(main)
