"""The bus on Redis, unchanged: events, request/reply, dead letters and their
replay, bad entries written by another program, and nothing left behind."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from flowkit import Choreography, Command, Context, Event, Message, Retry
from flowkit.stores import MemoryStore
from flowkit.transports import from_url

from .brokers import redis_url as redis_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """redis-py's client runs on asyncio only."""
    return str(request.param)


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    import redis.asyncio as redis

    name = f"bus-test-{uuid.uuid4().hex[:8]}"
    yield name
    client: Any = redis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def keys_under(redis_url: str, prefix: str) -> list[bytes]:
    import redis.asyncio as redis

    client: Any = redis.Redis.from_url(redis_url)
    try:
        return sorted([key async for key in client.scan_iter(match=f"{prefix}:*")])
    finally:
        await client.aclose()


class Placed(Event):
    order_id: str


class Total(Message):
    cents: int


class PriceOf(Command[Total]):
    order_id: str


async def test_events_requests_and_reply_inboxes_on_redis(redis_url: str, prefix: str) -> None:
    bus = Choreography(from_url(f"{redis_url}?prefix={prefix}"), store=MemoryStore())
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
    assert not [key for key in await keys_under(redis_url, prefix) if b"flowkit.reply" in key]


async def test_bad_entries_are_dead_lettered_and_replayed_to_one_group(
    redis_url: str, prefix: str
) -> None:
    import redis.asyncio as redis

    bus = Choreography(
        from_url(f"{redis_url}?prefix={prefix}"),
        store=MemoryStore(),
    )
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

    client: Any = redis.Redis.from_url(redis_url)
    try:
        with anyio.fail_after(30):
            async with bus:
                # Written by another program: not JSON, and no body at all.
                await client.xadd(f"{prefix}:Placed", {"body": b"\xff not json"})
                await client.xadd(f"{prefix}:Placed", {"something": "else"})
                await bus.publish(Placed(order_id="o-1"))
                await bus.publish(Placed(order_id="o-2"))
                await bus.wait_idle(20)
                letters = await bus.dead_letters(limit=100)
                undecodable = [x for x in letters if x.error_type == "flowkit.DecodeError"]
                assert len(undecodable) == 4  # two bad entries, for each of two handlers
                (failed,) = [
                    x
                    for x in letters
                    if x.consumer.startswith("billing:") and x.error_type == "RuntimeError"
                ]
                await bus.replay(failed.id)
                await bus.wait_idle(20)
    finally:
        await client.aclose()
    # The replay reached billing only: audit handled o-2 once, before.
    assert sorted(handled) == [
        ("audit", "o-1"),
        ("audit", "o-2"),
        ("billing", "o-1"),
        ("billing", "o-2"),
    ]
