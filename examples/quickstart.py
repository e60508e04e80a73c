"""The README's quickstart: two services react to one event."""

import anyio

from flowkit import Choreography, Context, Event
from flowkit.transports import InMemoryTransport


class OrderPlaced(Event):
    order_id: str


bus = Choreography(InMemoryTransport())


@bus.on(OrderPlaced, service="notification")
async def send_confirmation(event: OrderPlaced, ctx: Context) -> None:
    print(f"[notification] confirmation sent for {event.order_id}")


@bus.on(OrderPlaced, service="seller")
async def prepare_shipment(event: OrderPlaced, ctx: Context) -> None:
    print(f"[seller] shipment prepared for {event.order_id}")


async def main() -> None:
    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_idle()  # let the services react


if __name__ == "__main__":
    anyio.run(main)
