"""The bus on a Kafka-protocol broker (Tansu here), unchanged: events, request/reply,
dead letters and their replay, bad records written by another program, and nothing
left behind by a reply inbox."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from flowkit import Choreography, Command, Context, Event, Message, Retry
from flowkit.stores import MemoryStore
from flowkit.transports import from_url

from .brokers import kafka_url as kafka_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

# Tansu makes a group's join wait about half the session timeout: keep it short here.
_OPTIONS = "session_timeout=1.5"


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """aiokafka runs on asyncio only."""
    return str(request.param)


def _servers(url: str) -> str:
    return url.removeprefix("kafka://").split("?")[0]


async def topics_under(kafka_url: str, prefix: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=_servers(kafka_url))
    await admin.start()
    try:
        return sorted(t for t in await admin.list_topics() if t.startswith(f"{prefix}.."))
    finally:
        await admin.close()


@pytest.fixture
async def prefix(kafka_url: str) -> AsyncIterator[str]:
    """A topic prefix of the test's own; its topics are deleted afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient

    name = f"bus-test-{uuid.uuid4().hex[:8]}"
    yield name
    names = await topics_under(kafka_url, name)
    if names:
        admin = AIOKafkaAdminClient(bootstrap_servers=_servers(kafka_url))
        await admin.start()
        try:
            await admin.delete_topics(names)
        finally:
            await admin.close()


class Placed(Event):
    order_id: str


class Total(Message):
    cents: int


class PriceOf(Command[Total]):
    order_id: str


async def test_events_requests_and_reply_inboxes_on_kafka(kafka_url: str, prefix: str) -> None:
    bus = Choreography(from_url(f"{kafka_url}?prefix={prefix}&{_OPTIONS}"), store=MemoryStore())
    seen: list[str] = []

    @bus.on(Placed, service="shipping")
    async def ship(event: Placed) -> None:
        seen.append(event.order_id)

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf) -> Total:
        return Total(cents=len(command.order_id) * 100)

    with anyio.fail_after(40):
        async with bus:
            for i in range(20):
                await bus.publish(Placed(order_id=f"o-{i}"))
            total = await bus.request(PriceOf(order_id="o-123"), timeout=20)
            await bus.wait_idle(20)
    assert sorted(seen) == sorted(f"o-{i}" for i in range(20))
    assert total == Total(cents=500)
    # The reply inbox was a non-durable group: none of its topics is left on the broker.
    assert not [name for name in await topics_under(kafka_url, prefix) if "flowkit.reply" in name]


async def test_bad_records_are_dead_lettered_and_replayed_to_one_group(
    kafka_url: str, prefix: str
) -> None:
    from aiokafka import AIOKafkaProducer

    bus = Choreography(from_url(f"{kafka_url}?prefix={prefix}&{_OPTIONS}"), store=MemoryStore())
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

    producer = AIOKafkaProducer(bootstrap_servers=_servers(kafka_url))
    await producer.start()
    try:
        with anyio.fail_after(40):
            async with bus:
                # Written by another program: not JSON with a header that is not
                # UTF-8, and a record with no value at all.
                topic = f"{prefix}..Placed"
                await producer.send_and_wait(topic, b"\xff not json", headers=[("h", b"\xff")])
                await producer.send_and_wait(topic, None, key=b"tombstone")
                await bus.publish(Placed(order_id="o-1"))
                await bus.publish(Placed(order_id="o-2"))
                await bus.wait_idle(20)
                letters = await bus.dead_letters(limit=100)
                undecodable = [x for x in letters if x.error_type == "flowkit.DecodeError"]
                assert len(undecodable) == 4  # two bad records, for each of two handlers
                (failed,) = [
                    x
                    for x in letters
                    if x.consumer.startswith("billing:") and x.error_type == "RuntimeError"
                ]
                await bus.replay(failed.id)
                await bus.wait_idle(20)
    finally:
        await producer.stop()
    # The replay reached billing only: audit handled o-2 once, before.
    assert sorted(handled) == [
        ("audit", "o-1"),
        ("audit", "o-2"),
        ("billing", "o-1"),
        ("billing", "o-2"),
    ]
