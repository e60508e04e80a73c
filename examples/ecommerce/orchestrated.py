"""The order workflow as orchestration: the order service is the brain.

It runs a saga: reserve the stock and charge the payment itself, then (in the
demo) wait for the seller to accept the order, then ask the seller and
logistics services (in parallel) and the notification service through remote
commands. The services are the same modules as in the choreographed version,
registered ``orchestrated``: they answer the saga's commands, and only the
seller reacts to ``OrderPlaced``, by accepting the order (``SellerAccepted``).
When a step fails, or the seller does not answer in time, the completed steps
are undone in reverse.
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
    WaitForEvent,
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
    SellerAccepted,
    SendConfirmation,
)
from .world import World


class CardDeclined(NonRetryableError):
    """The payment provider refused the card: retrying will not help."""


SELLER_ANSWERS_WITHIN = 1.5
"""Seconds the demo's saga waits for the seller to accept an order; a real shop
would give its sellers a day (``timedelta(days=1)``): the wait is durable, it
holds no process meanwhile."""


def order_saga(
    world: World, *, seller_answers_within: float | None = None
) -> type[Orchestrator[OrderPlaced]]:
    """The PlaceOrder saga, its local steps acting on ``world``.

    With ``seller_answers_within`` (seconds), the saga waits after the charge for
    the seller to accept the order (``SellerAccepted``), and turns back (refund,
    release the stock) when no answer comes in time. Without it, it goes straight
    on to the shipment (the multi-process version: its seller workers run the
    choreographed services, which accept no order).
    """

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

    # The seller's answer comes as an event from the bus, matched by order_id.
    # The workflow waits in the store, holding no process, and turns back if the
    # answer is late: a second or two in the demo, a day in real life.
    seller_accepts = (
        ()
        if seller_answers_within is None
        else (WaitForEvent(SellerAccepted, timeout=seller_answers_within, on_timeout="compensate"),)
    )

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
            *seller_accepts,
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

UNANSWERED = OrderPlaced(
    order_id="o-4", user_email="dee@example.com", seller_id="seller-7", items=["kettle"], total=60
)
"""The order of a seller who never answers (one of ``seller.AWAY``)."""


async def run_orchestration(
    store: StateStore | Path, *, echo: bool = False, wait_for_sellers: bool = False
) -> OrchestrationResult:
    """Three orders: one completes, one finds no delivery partner, one has its card
    declined. ``store`` is a store, or the path of an SQLite file.

    With ``wait_for_sellers`` (as ``make demo`` runs it), the order service also
    announces each order (``OrderPlaced``) to the seller, and the saga waits for
    the seller's ``SellerAccepted`` after the charge (for
    :data:`SELLER_ANSWERS_WITHIN`); a fourth order, o-4, goes to a seller who
    never answers: when the wait runs out, its payment is refunded and its stock
    released."""
    if isinstance(store, Path):
        store = SQLiteStore(store)
    world = World(echo=echo)
    transport = InMemoryTransport()
    # The other services, answering commands; they keep their dead letters and
    # their flow trace in the same store.
    services = Choreography(transport, store=store)
    for service in (notification, seller, logistics):
        service.register(services, world, orchestrated=True)
    place_order = order_saga(
        world, seller_answers_within=SELLER_ANSWERS_WITHIN if wait_for_sellers else None
    )
    orders = (*ORDERS, UNANSWERED) if wait_for_sellers else ORDERS
    outcomes: dict[str, Outcome] = {}
    infos: dict[str, WorkflowInfo] = {}
    async with (
        transport,
        services,
        place_order(store, transport=transport) as saga,
    ):
        for order in orders:
            if order.order_id == "o-2":
                world.fail("partner-api", times=100)  # no partner can be booked
            if wait_for_sellers:
                await services.publish(order)  # the seller hears of the order, and answers
            outcomes[order.order_id] = await saga.run(order, workflow_id=order.order_id)
            world.failures.clear()
            await services.wait_idle(10)  # the seller has answered (o-3's too: it was declined)
            infos[order.order_id] = await saga.get(order.order_id)
        # Running an order again returns the recorded outcome: nothing is done twice.
        again = await saga.run(ORDERS[0], workflow_id="o-1")
        assert again.status == outcomes["o-1"].status
    return OrchestrationResult(world, outcomes, infos)
