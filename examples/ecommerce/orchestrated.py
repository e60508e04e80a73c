"""The order workflow as orchestration: the order service is the brain.

It runs a saga: reserve the stock and charge the payment itself, then ask the
seller and logistics services (in parallel) and the notification service
through remote commands. The services are the same modules as in the
choreographed version: each answers commands as well as reacting to events.
When a step fails, the completed steps are undone in reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowkit import Choreography, NonRetryableError, Retry
from flowkit.orchestration import (
    Orchestrator,
    Outcome,
    Parallel,
    Remote,
    Step,
    StepContext,
    WorkflowInfo,
)
from flowkit.stores import SQLiteStore, StateStore
from flowkit.transports import InMemoryTransport

from . import logistics, notification, seller
from .events import (
    AssignPartner,
    CancelShipment,
    OrderPlaced,
    PrepareShipment,
    ReleasePartner,
    SendConfirmation,
)
from .world import World


class CardDeclined(NonRetryableError):
    """The payment provider refused the card: retrying will not help."""


def order_saga(world: World) -> type[Orchestrator[OrderPlaced]]:
    """The PlaceOrder saga, its local steps acting on ``world``."""

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
        world.once(ctx.idempotency_key, lambda: world.log("order", f"refunded {order.total:.2f}"))

    class PlaceOrder(Orchestrator[OrderPlaced]):
        name = "place-order"
        steps = (
            Step(reserve_stock, compensate=release_stock),
            Step(
                charge_payment,
                compensate=refund_payment,
                retry=Retry(attempts=3, backoff=0.01),
                timeout=5,
            ),
            Parallel(
                Remote(
                    PrepareShipment,
                    lambda ctx, o: PrepareShipment(
                        order_id=o.order_id, seller_id=o.seller_id, items=o.items
                    ),
                    compensate=Remote(
                        CancelShipment,
                        lambda ctx, o: CancelShipment(order_id=o.order_id, seller_id=o.seller_id),
                    ),
                    timeout=5,
                ),
                Remote(
                    AssignPartner,
                    lambda ctx, o: AssignPartner(order_id=o.order_id),
                    compensate=Remote(
                        ReleasePartner, lambda ctx, o: ReleasePartner(order_id=o.order_id)
                    ),
                    timeout=5,
                ),
            ),
            # The email cannot be unsent: once it is out, the order is confirmed.
            Remote(
                SendConfirmation,
                lambda ctx, o: SendConfirmation(order_id=o.order_id, user_email=o.user_email),
                pivot=True,
                timeout=5,
            ),
        )

    return PlaceOrder


@dataclass
class OrchestrationResult:
    world: World
    outcomes: dict[str, Outcome]
    infos: dict[str, WorkflowInfo]


ORDERS = (
    OrderPlaced(
        order_id="o-1", user_email="ada@example.com", seller_id="seller-9", items=["book"], total=25
    ),
    OrderPlaced(
        order_id="o-2", user_email="bob@example.com", seller_id="seller-9", items=["lamp"], total=40
    ),
    OrderPlaced(
        order_id="o-3", user_email="cy@example.com", seller_id="seller-9", items=["car"], total=9e3
    ),
)


async def run_orchestration(store: StateStore | Path, *, echo: bool = False) -> OrchestrationResult:
    """Three orders: one completes, one finds no delivery partner, one has its card
    declined. ``store`` is a store, or the path of an SQLite file."""
    if isinstance(store, Path):
        store = SQLiteStore(store)
    world = World(echo=echo)
    transport = InMemoryTransport()
    # The other services, answering commands; they keep their dead letters and
    # their flow trace in the same store.
    services = Choreography(transport, store=store)
    for service in (notification, seller, logistics):
        service.register(services, world)
    place_order = order_saga(world)
    outcomes: dict[str, Outcome] = {}
    infos: dict[str, WorkflowInfo] = {}
    async with (
        transport,
        services,
        place_order(store, transport=transport) as orders,
    ):
        for order in ORDERS:
            if order.order_id == "o-2":
                world.fail("partner-api", times=100)  # no partner can be booked
            outcomes[order.order_id] = await orders.run(order, workflow_id=order.order_id)
            world.failures.clear()
            infos[order.order_id] = await orders.get(order.order_id)
        # Running an order again returns the recorded outcome: nothing is done twice.
        again = await orders.run(ORDERS[0], workflow_id="o-1")
        assert again.status == outcomes["o-1"].status
    return OrchestrationResult(world, outcomes, infos)
