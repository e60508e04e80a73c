"""A worker for the command-line tests: one handler that naps, printing when it starts.

``SeededBroker`` stands in for a broker holding one message: it is an in-memory
transport that declares it crosses processes and, when the napper first
subscribes, publishes one ``Nap`` (of ``FLOWKIT_NAP`` seconds, 60 by default).
The bus's own stop grace is 60 s, so a test sees whether ``--grace`` overrides it.
"""

from __future__ import annotations

import os

import anyio

from flowkit import Choreography, Event
from flowkit.transports import Capabilities, InMemoryTransport, Subscription


class Nap(Event, type_name="cli_test.nap"):
    seconds: float


class SeededBroker(InMemoryTransport):
    """An in-memory transport that says it crosses processes, with one Nap waiting."""

    seeded = False

    @property
    def capabilities(self) -> Capabilities:
        """``crosses_processes`` is True."""
        return Capabilities(crosses_processes=True)

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Subscription:
        """Subscribe; the first subscriber to naps finds one waiting."""
        sub = await super().subscribe(topic, group, durable=durable)
        if topic == "cli_test.nap" and not self.seeded:
            self.seeded = True
            async with Choreography(self).run(services=[]) as publisher:
                await publisher.publish(Nap(seconds=float(os.environ.get("FLOWKIT_NAP", "60"))))
        return sub


bus = Choreography(SeededBroker(), stop_grace=60)


@bus.on(Nap, service="napper")
async def nap(event: Nap) -> None:
    print(f"napping {event.seconds:g}s", flush=True)
    await anyio.sleep(event.seconds)
