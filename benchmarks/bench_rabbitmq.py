"""End to end on RabbitMQ: 20,000 events published and handled, against raw aio-pika
and FastStream on the same server, in the same run.

Each variant publishes N small JSON messages to a topic exchange and consumes them in
the same process from a durable queue bound to it, and times the whole: from the first
publish to the last ack. Every publish is persistent and confirmed by the server
(publisher confirms). Each message carries its publish time, so the handler records
the end-to-end latency (p50, p99). Every variant uses the same queue type
(``--queue-type``, quorum by default, as flowkit's groups).

- **raw aio-pika**, with its best batching: 100 confirmed publishes in flight, a
  prefetch of 200, one ``basic.ack`` with ``multiple`` per 100 messages.
- **FastStream 0.7** (``RabbitBroker``, a durable queue on a topic exchange), one
  publish awaited at a time, then up to 100 publishes in flight.
- **flowkit**: a ``Choreography`` on ``RabbitMQTransport``, one publish awaited at a
  time, then up to 100 in flight.

Targets: flowkit >= 0.5 of raw and >= 4x FastStream's best, same run. Needs a RabbitMQ
server: ``--rabbitmq URL`` or ``FLOWKIT_RABBITMQ_URL`` (``make bench`` starts one).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
import uuid
from typing import Any

from ._e2e import (
    IN_FLIGHT,
    Latencies,
    compare,
    faststream_run,
    flowkit_run,
    in_flight_modes,
    parse_args,
    payload,
    publish_all,
)


def _arguments(queue_type: str) -> dict[str, Any]:
    return {"x-queue-type": queue_type}


# -- raw aio-pika ------------------------------------------------------------------


async def raw(url: str, n: int, queue_type: str) -> tuple[float, Latencies]:
    import aio_pika

    run = uuid.uuid4().hex
    connection = await aio_pika.connect(url)
    publisher = await connection.channel(publisher_confirms=True)
    consumer = await connection.channel()
    await consumer.set_qos(prefetch_count=2 * IN_FLIGHT)
    exchange = await publisher.declare_exchange(
        f"bench-raw-{run}", aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await consumer.declare_queue(
        f"bench-raw-{run}", durable=True, arguments=_arguments(queue_type)
    )
    await queue.bind(f"bench-raw-{run}", routing_key="orders.placed")
    latencies = Latencies(n)
    unacked = 0

    async def handle(message: Any) -> None:
        nonlocal unacked
        latencies.record(json.loads(message.body)["sent"])
        unacked += 1
        if unacked >= IN_FLIGHT or latencies.done.is_set():
            unacked = 0
            await message.ack(multiple=True)

    tag = await queue.consume(handle)
    start = time.perf_counter()

    async def publish(i: int) -> None:
        body = json.dumps({**payload(i), "sent": time.perf_counter()}).encode()
        await exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="orders.placed",
        )

    await publish_all(n, IN_FLIGHT, publish)
    await latencies.done.wait()
    elapsed = time.perf_counter() - start
    await queue.cancel(tag)
    await queue.delete(if_unused=False, if_empty=False)
    await exchange.delete()
    await connection.close()
    return n / elapsed, latencies


# -- FastStream and flowkit --------------------------------------------------------


async def faststream(url: str, n: int, in_flight: int, queue_type: str) -> tuple[float, Latencies]:
    # Installed in the benchmarks' environment only, never a flowkit dependency.
    rabbit: Any = importlib.import_module("faststream.rabbit")
    run = uuid.uuid4().hex
    broker = rabbit.RabbitBroker(url, log_level=0)
    exchange = rabbit.RabbitExchange(
        f"bench-fs-{run}", type=rabbit.ExchangeType.TOPIC, durable=True
    )
    queue = rabbit.RabbitQueue(
        f"bench-fs-{run}",
        durable=True,
        routing_key="orders.placed",
        queue_type=rabbit.QueueType(queue_type),
    )
    measured = await faststream_run(
        broker,
        broker.subscriber(queue, exchange),
        lambda message: broker.publish(
            message, exchange=exchange, routing_key="orders.placed", persist=True
        ),
        n,
        in_flight,
    )
    await _delete(url, [f"bench-fs-{run}"], [f"bench-fs-{run}"])
    return measured


async def _delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    import aiormq

    async with aiormq.Connection(url) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


async def flowkit_bus(url: str, n: int, in_flight: int, queue_type: str) -> tuple[float, Latencies]:
    from flowkit.transports._rabbitmq import RabbitMQTransport

    transport = RabbitMQTransport(
        url, prefix=f"bench-{uuid.uuid4().hex[:8]}", queue_type=queue_type
    )
    groups: list[tuple[str, str]] = []
    measured = await flowkit_run(
        transport, n, in_flight, before_close=lambda: groups.extend(transport._subscriptions)
    )
    await _delete(
        url,
        [transport.queue_name(topic, group) for topic, group in groups],
        sorted({transport.exchange_name(topic) for topic, _ in groups}),
    )
    return measured


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int, queue_type: str) -> None:
    await compare(
        f"rabbitmq_end_to_end_{queue_type}",
        raw=(
            f"raw aio-pika, {IN_FLIGHT} confirms in flight, acks x{IN_FLIGHT}",
            lambda: raw(url, n, queue_type),
        ),
        faststream=in_flight_modes("FastStream 0.7", lambda k: faststream(url, n, k, queue_type)),
        flowkit=in_flight_modes(
            "flowkit RabbitMQTransport", lambda k: flowkit_bus(url, n, k, queue_type)
        ),
        n=n,
        repeat=repeat,
        vs_raw=0.5,
        vs_faststream_best=4.0,
        notes={"queue_type": queue_type},
    )


def cli(argv: list[str] | None = None) -> None:
    args = parse_args(
        argv,
        __doc__,
        broker="rabbitmq",
        env="FLOWKIT_RABBITMQ_URL",
        start="make bench starts one",
        more=lambda parser: parser.add_argument(
            "--queue-type", choices=("quorum", "classic"), default="quorum"
        ),
    )
    asyncio.run(main(args.url, args.messages, args.repeat, args.queue_type))


if __name__ == "__main__":
    cli()
