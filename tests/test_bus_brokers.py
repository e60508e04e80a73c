"""The bus on each broker, unchanged: events, request/reply through reply inboxes that
leave nothing behind, and dead letters, among them messages written by another program
that cannot be decoded, replayed to one group."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from flowkit import Choreography, Command, Context, Event, Message, Retry
from flowkit.stores import MemoryStore
from flowkit.transports import from_url

from .brokers import on_brokers, with_query
from .brokers import prefix as prefix
from .brokers import url as url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .brokers import Broker

pytestmark = pytest.mark.anyio


class Placed(Event):
    order_id: str


class Total(Message):
    cents: int


class PriceOf(Command[Total]):
    order_id: str


_REPLY_TOPIC = ("flowkit.reply.", "flowkit_2Ereply_2E")
"""How the name of a bus's reply topic starts, as is and in a NATS stream's name."""


def _bus(broker: Broker, url: str, prefix: str) -> Choreography:
    transport = from_url(with_query(url, prefix=prefix, **broker.options))
    return Choreography(transport, store=MemoryStore())


@on_brokers()
async def test_events_requests_and_reply_inboxes(broker: Broker, url: str, prefix: str) -> None:
    bus = _bus(broker, url, prefix)
    seen: list[str] = []

    @bus.on(Placed, service="shipping")
    async def ship(event: Placed) -> None:
        seen.append(event.order_id)

    @bus.handles(PriceOf, service="pricing")
    async def price(command: PriceOf) -> Total:
        return Total(cents=len(command.order_id) * 100)

    with anyio.fail_after(20 + broker.wait):
        async with bus:
            for i in range(20):
                await bus.publish(Placed(order_id=f"o-{i}"))
            total = await bus.request(PriceOf(order_id="o-123"), timeout=broker.wait)
            await bus.wait_idle(20)
    assert sorted(seen) == sorted(f"o-{i}" for i in range(20))
    assert total == Total(cents=500)
    # The reply inbox was a non-durable group: nothing of it is left on the server.
    left = await broker.names(url, prefix)
    assert not [name for name in left if any(reply in name for reply in _REPLY_TOPIC)]


# -- messages of another program that cannot be decoded ---------------------------


async def _write_bad_redis(url: str, prefix: str) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        # Not JSON, and no body at all.
        await client.xadd(f"{prefix}:Placed", {"body": b"\xff not json"})
        await client.xadd(f"{prefix}:Placed", {"something": "else"})
    finally:
        await client.aclose()
    return 2


async def _write_bad_rabbitmq(url: str, prefix: str) -> int:
    import aiormq

    async with aiormq.Connection(url.split("?", 1)[0]) as connection:
        channel = await connection.channel()
        # Not JSON.
        await channel.basic_publish(
            b"\xff not json", exchange=f"{prefix}:Placed", routing_key="Placed"
        )
    return 1


async def _write_bad_nats(url: str, prefix: str) -> int:
    import nats

    client = await nats.connect(url)
    try:
        # Not JSON, and headers that are not ours.
        js = client.jetstream()
        await js.publish(f"{prefix}.Placed", b"\xff not json")
        await js.publish(f"{prefix}.Placed", b"{}", headers={"Flowkit-Headers": "no"})
    finally:
        await client.close()
    return 2


async def _write_bad_kafka(url: str, prefix: str) -> int:
    from aiokafka import AIOKafkaProducer

    from .brokers import kafka_servers

    producer = AIOKafkaProducer(bootstrap_servers=kafka_servers(url))
    await producer.start()
    try:
        # Not JSON with a header that is not UTF-8, and a record with no value at all.
        topic = f"{prefix}..Placed"
        await producer.send_and_wait(topic, b"\xff not json", headers=[("h", b"\xff")])
        await producer.send_and_wait(topic, None, key=b"tombstone")
    finally:
        await producer.stop()
    return 2


_WRITE_BAD: dict[str, Callable[[str, str], Awaitable[int]]] = {
    "redis": _write_bad_redis,
    "rabbitmq": _write_bad_rabbitmq,
    "nats": _write_bad_nats,
    "kafka": _write_bad_kafka,
}
"""Per broker: writes messages flowkit cannot decode to topic ``Placed`` under a
prefix, as another program would, and returns how many."""


@on_brokers()
async def test_bad_messages_are_dead_lettered_and_replayed_to_one_group(
    broker: Broker, url: str, prefix: str
) -> None:
    bus = _bus(broker, url, prefix)
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

    with anyio.fail_after(20 + broker.wait):
        async with bus:
            bad = await _WRITE_BAD[broker.name](url, prefix)
            await bus.publish(Placed(order_id="o-1"))
            await bus.publish(Placed(order_id="o-2"))
            await bus.wait_idle(20)
            letters = await bus.dead_letters(limit=100)
            undecodable = [x for x in letters if x.error_type == "flowkit.DecodeError"]
            assert len(undecodable) == 2 * bad  # each bad message, for each of two handlers
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
