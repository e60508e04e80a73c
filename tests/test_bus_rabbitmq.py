"""The bus on RabbitMQ, unchanged: events, request/reply through reply inboxes, dead
letters and their replay, and no reply inbox left behind."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from flowkit import Choreography, Command, Context, Event, Message, Retry
from flowkit.stores import MemoryStore
from flowkit.transports import from_url

from .brokers import rabbitmq_url as rabbitmq_url
from .rabbitmq_server import forget_rabbitmq

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """aiormq runs on asyncio only."""
    return str(request.param)


@pytest.fixture
async def prefix(rabbitmq_url: str) -> AsyncIterator[str]:
    """Names of the test's own; its queues and exchanges are deleted afterwards."""
    name = f"bus-test-{uuid.uuid4().hex[:8]}"
    yield name
    await forget_rabbitmq(rabbitmq_url, name)


class Placed(Event):
    order_id: str


class Total(Message):
    cents: int


class PriceOf(Command[Total]):
    order_id: str


async def test_events_and_requests_on_rabbitmq(rabbitmq_url: str, prefix: str) -> None:
    sep = "&" if "?" in rabbitmq_url else "?"
    bus = Choreography(from_url(f"{rabbitmq_url}{sep}prefix={prefix}"), store=MemoryStore())
    seen: list[str] = []

    @bus.on(Placed, service="shipping")
    async def ship(event: Placed) -> None:
        seen.append(event.order_id)

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf) -> Total:
        return Total(cents=len(command.order_id) * 100)

    with anyio.fail_after(30):
        async with bus:
            for i in range(20):
                await bus.publish(Placed(order_id=f"o{i}"))
            total = await bus.request(PriceOf(order_id="abc"), timeout=10)
            await bus.wait_idle(20)
    assert total == Total(cents=300)
    assert sorted(seen) == sorted(f"o{i}" for i in range(20))
    # The reply inbox was a non-durable group: its queue is gone from the server.
    assert not [q for q in await queues_under(rabbitmq_url, prefix) if "reply" in q]


async def queues_under(url: str, prefix: str) -> list[str]:
    from .rabbitmq_server import _scripts_node, ctl

    directory = _scripts_node(url)
    if directory is None:
        return []
    names = ctl(directory, "list_queues", "name", "--quiet", "--no-table-headers").split()
    return [name for name in names if name.startswith(f"{prefix}:")]


async def test_bad_messages_are_dead_lettered_and_replayed_to_one_group(
    rabbitmq_url: str, prefix: str
) -> None:
    import aiormq

    sep = "&" if "?" in rabbitmq_url else "?"
    bus = Choreography(from_url(f"{rabbitmq_url}{sep}prefix={prefix}"), store=MemoryStore())
    fails = {"o-2": 1}
    handled: list[tuple[str, str]] = []

    @bus.on(Placed, service="billing", retry=Retry(attempts=1))
    async def bill(event: Placed, ctx: Context) -> None:
        if fails.get(event.order_id):
            fails[event.order_id] -= 1
            raise RuntimeError("billing is down")
        handled.append(("billing", event.order_id))

    @bus.on(Placed, service="audit")
    async def audit(event: Placed) -> None:
        handled.append(("audit", event.order_id))

    with anyio.fail_after(30):
        async with bus, aiormq.Connection(rabbitmq_url.split("?", 1)[0]) as connection:
            channel = await connection.channel()
            # Published by another program: not JSON.
            await channel.basic_publish(
                b"\xff not json", exchange=f"{prefix}:Placed", routing_key="Placed"
            )
            await bus.publish(Placed(order_id="o-1"))
            await bus.publish(Placed(order_id="o-2"))
            await bus.wait_idle(20)
            letters = await bus.dead_letters(limit=100)
            undecodable = [x for x in letters if x.error_type == "flowkit.DecodeError"]
            assert len(undecodable) == 2  # one bad message, for each of two handlers
            (failed,) = [
                x
                for x in letters
                if x.consumer.startswith("billing:") and x.error_type == "RuntimeError"
            ]
            await bus.replay(failed.id)
            await bus.wait_idle(20)
    # The replay reached billing only: audit handled o-2 once, before.
    assert sorted(handled) == [
        ("audit", "o-1"),
        ("audit", "o-2"),
        ("billing", "o-1"),
        ("billing", "o-2"),
    ]
