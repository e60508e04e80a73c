"""The bus on NATS JetStream, unchanged: events, request/reply, dead letters and
their replay, bad messages written by another program, and nothing left behind."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from flowkit import Choreography, Command, Context, Event, Message, Retry
from flowkit.stores import MemoryStore
from flowkit.transports import from_url

from .brokers import nats_url as nats_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """nats-py runs on asyncio only."""
    return str(request.param)


async def streams_under(nats_url: str, prefix: str) -> list[str]:
    import nats

    client: Any = await nats.connect(nats_url)
    try:
        infos = await client.jetstream().streams_info()
        return sorted(i.config.name for i in infos if i.config.name.startswith(f"{prefix}_"))
    finally:
        await client.close()


@pytest.fixture
async def prefix(nats_url: str) -> AsyncIterator[str]:
    """A name prefix of the test's own; its streams are deleted afterwards."""
    import nats

    name = f"bus-test-{uuid.uuid4().hex[:8]}"
    yield name
    client: Any = await nats.connect(nats_url)
    try:
        for stream in await streams_under(nats_url, name):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


class Placed(Event):
    order_id: str


class Total(Message):
    cents: int


class PriceOf(Command[Total]):
    order_id: str


async def test_events_requests_and_reply_inboxes_on_nats(nats_url: str, prefix: str) -> None:
    bus = Choreography(from_url(f"{nats_url}?prefix={prefix}"), store=MemoryStore())
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
                await bus.publish(Placed(order_id=f"o-{i}"))
            total = await bus.request(PriceOf(order_id="o-123"), timeout=10)
            await bus.wait_idle(20)
    assert sorted(seen) == sorted(f"o-{i}" for i in range(20))
    assert total == Total(cents=500)
    # The reply inbox was a non-durable group: nothing of it is left on the server.
    assert not [s for s in await streams_under(nats_url, prefix) if "reply" in s]


async def test_bad_messages_are_dead_lettered_and_replayed_to_one_group(
    nats_url: str, prefix: str
) -> None:
    import nats

    bus = Choreography(from_url(f"{nats_url}?prefix={prefix}"), store=MemoryStore())
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

    client: Any = await nats.connect(nats_url)
    try:
        with anyio.fail_after(30):
            async with bus:
                # Written by another program: not JSON, and headers that are not ours.
                js = client.jetstream()
                await js.publish(f"{prefix}.Placed", b"\xff not json")
                await js.publish(f"{prefix}.Placed", b"{}", headers={"Flowkit-Headers": "no"})
                await bus.publish(Placed(order_id="o-1"))
                await bus.publish(Placed(order_id="o-2"))
                await bus.wait_idle(20)
                letters = await bus.dead_letters(limit=100)
                undecodable = [x for x in letters if x.error_type == "flowkit.DecodeError"]
                assert len(undecodable) == 4  # two bad messages, for each of two handlers
                (failed,) = [
                    x
                    for x in letters
                    if x.consumer.startswith("billing:") and x.error_type == "RuntimeError"
                ]
                await bus.replay(failed.id)
                await bus.wait_idle(20)
    finally:
        await client.close()
    # The replay reached billing only: audit handled o-2 once, before.
    assert sorted(handled) == [
        ("audit", "o-1"),
        ("audit", "o-2"),
        ("billing", "o-1"),
        ("billing", "o-2"),
    ]
