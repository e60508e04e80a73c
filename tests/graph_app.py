"""Flows with one of each lint finding, for the flow graph, lint and AsyncAPI tests.

* ``shipping:ship`` emits ``Lost``, which nobody consumes (event-not-consumed);
* ``mail:mail-refund`` handles ``Refunded``, which nobody emits (event-not-emitted),
  and ``shipping:ship`` handles ``OrderPlaced``, which nobody emits either;
* the ``checkout`` orchestrator sends ``Charge`` and compensates by sending
  ``Release``, which nobody answers (command-not-handled at the steps);
* ``Audited`` and ``Forgotten`` are declared here and named by nobody
  (event-unused, command-not-handled), found when the module is the target.
"""

from __future__ import annotations

from flowkit import Choreography, Command, Event, Message, Orchestrator, Remote, Step, StepContext
from flowkit.transports import InMemoryTransport


class OrderPlaced(Event):
    """An order was placed."""

    order_id: str


class Shipped(Event):
    order_id: str


class Lost(Event):
    order_id: str


class Refunded(Event):
    order_id: str


class Audited(Event):
    order_id: str


class Ack(Message):
    ref: str


class Reserve(Command[Ack]):
    order_id: str


class Release(Command[Ack]):
    order_id: str


class Charge(Command[Ack]):
    order_id: str
    amount: float


class Forgotten(Command[Ack]):
    order_id: str


bus = Choreography(InMemoryTransport())


@bus.on(OrderPlaced, service="shipping", emits=[Shipped, Lost], name="ship")
async def ship(event: OrderPlaced) -> None:
    pass


@bus.on(Shipped, service="mail", name="mail-shipped")
async def mail_shipped(event: Shipped) -> None:
    pass


@bus.on(Refunded, service="mail", name="mail-refund")
async def mail_refund(event: Refunded) -> None:
    pass


@bus.handles(Reserve, service="stock", name="reserve")
async def reserve(command: Reserve) -> Ack:
    return Ack(ref=command.order_id)


async def log_order(ctx: StepContext, order: OrderPlaced) -> str:
    return order.order_id


async def forget_order(ctx: StepContext, order: OrderPlaced) -> None:
    pass


class Checkout(Orchestrator[OrderPlaced]):
    name = "checkout"
    steps = (
        Step(log_order, compensate=forget_order),
        Remote(
            Reserve,
            lambda ctx, o: Reserve(order_id=o.order_id),
            compensate=Remote(Release, lambda ctx, o: Release(order_id=o.order_id)),
        ),
        Remote(Charge, lambda ctx, o: Charge(order_id=o.order_id, amount=1.0), pivot=True),
    )


not_a_bus = 42
