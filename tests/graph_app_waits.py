"""A flow whose saga waits: a timer, an event a service emits, a signal, and an
event nobody emits, for the flow graph, lint and AsyncAPI tests.

* ``seller:accept`` emits ``SellerAccepted``, which no handler consumes but the
  ``fulfil`` orchestrator waits for: not a finding;
* ``fulfil`` waits for ``Paid``, which nobody emits (event-not-emitted at its step);
* ``seller:accept`` handles ``OrderPlaced``, which nobody emits (event-not-emitted);
* ``Approved`` is a signal: sent to one workflow, not published on the bus.
"""

from __future__ import annotations

from datetime import timedelta

from flowkit import (
    Choreography,
    Event,
    Message,
    Orchestrator,
    Sleep,
    Step,
    StepContext,
    WaitForEvent,
    WaitForSignal,
)
from flowkit.transports import InMemoryTransport


class OrderPlaced(Event, correlate_by="order_id"):
    order_id: str


class SellerAccepted(Event, correlate_by="order_id"):
    order_id: str
    seller: str


class Paid(Event):
    ref: str


class Approved(Message):
    by: str


bus = Choreography(InMemoryTransport())


@bus.on(OrderPlaced, service="seller", emits=[SellerAccepted], name="accept")
async def accept(event: OrderPlaced) -> None:
    pass


async def reserve(ctx: StepContext, order: OrderPlaced) -> None:
    pass


class Fulfil(Orchestrator[OrderPlaced]):
    name = "fulfil"
    steps = (
        Step(reserve),
        WaitForEvent(SellerAccepted, timeout=timedelta(hours=4)),
        Sleep(timedelta(days=1), name="cooling_off"),
        WaitForSignal(Approved, timeout=600),
        WaitForEvent(Paid, match="ref", key=lambda ctx, order: order.order_id),
    )
