"""Run the recommendation example: a healthy, a slow and a failing inventory."""

from __future__ import annotations

import anyio

from flowkit import Choreography
from flowkit.transports import InMemoryTransport

from . import inventory, recommendation
from .inventory import InventoryBehaviour
from .messages import Recommend, Recommendations


async def ask_three_times() -> list[Recommendations]:
    """One client request per inventory condition: healthy, slow, failing."""
    transport = InMemoryTransport()
    behaviour = InventoryBehaviour()
    services = Choreography(transport)
    inventory.register(services, behaviour)
    recommendation.register(services)
    client = Choreography(transport)
    answers = []
    async with services, client.run(services=[]):
        for latency, broken in ((0.0, False), (1.0, False), (0.0, True)):
            behaviour.latency, behaviour.broken = latency, broken
            answers.append(await client.request(Recommend(user_id="ada"), timeout=2.0))
    return answers


async def main() -> None:
    for answer in await ask_three_times():
        names = ", ".join(f"{i.id} {i.name or '?'}" for i in answer.items)
        status = f"degraded ({answer.reason})" if answer.degraded else "complete"
        print(f"recommendations for {answer.user_id}: {names} [{status}]")


if __name__ == "__main__":
    anyio.run(main)
