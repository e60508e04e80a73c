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

import argparse
import asyncio
import importlib
import json
import os
import statistics
import time
import uuid
from typing import TYPE_CHECKING, Any

from ._report import report
from .bench_redis import IN_FLIGHT, Latencies, N, payload, publish_all

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


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


# -- FastStream --------------------------------------------------------------------


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
    latencies = Latencies(n)

    async def handle(message: dict[str, Any]) -> None:
        latencies.record(message["sent"])

    broker.subscriber(queue, exchange)(handle)

    async with broker:
        await broker.start()
        start = time.perf_counter()

        async def publish(i: int) -> None:
            await broker.publish(
                {**payload(i), "sent": time.perf_counter()},
                exchange=exchange,
                routing_key="orders.placed",
                persist=True,
            )

        await publish_all(n, in_flight, publish)
        await latencies.done.wait()
        elapsed = time.perf_counter() - start
    await _delete(url, [f"bench-fs-{run}"], [f"bench-fs-{run}"])
    return n / elapsed, latencies


async def _delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    import aiormq

    async with aiormq.Connection(url) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


# -- flowkit -----------------------------------------------------------------------


async def flowkit_bus(url: str, n: int, in_flight: int, queue_type: str) -> tuple[float, Latencies]:
    from flowkit import Choreography, Event
    from flowkit.transports._rabbitmq import RabbitMQTransport

    class OrderPlaced(Event, type_name=f"bench.OrderPlaced.{uuid.uuid4().hex}"):
        order_id: str
        user_email: str
        total: float
        sent: float

    transport = RabbitMQTransport(
        url, prefix=f"bench-{uuid.uuid4().hex[:8]}", queue_type=queue_type
    )
    bus = Choreography(transport)
    latencies = Latencies(n)

    @bus.on(OrderPlaced, service="bench", name="handle")
    async def handle(event: OrderPlaced) -> None:
        latencies.record(event.sent)

    async with bus:
        start = time.perf_counter()

        async def publish(i: int) -> None:
            await bus.publish(OrderPlaced(**payload(i), sent=time.perf_counter()))

        await publish_all(n, in_flight, publish)
        await latencies.done.wait()
        elapsed = time.perf_counter() - start
        groups = list(transport._subscriptions)
    await _delete(
        url,
        [transport.queue_name(topic, group) for topic, group in groups],
        sorted({transport.exchange_name(topic) for topic, _ in groups}),
    )
    return n / elapsed, latencies


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int, queue_type: str) -> None:
    variants: dict[str, Callable[[], Awaitable[tuple[float, Latencies]]]] = {
        f"raw aio-pika, {IN_FLIGHT} confirms in flight, acks x{IN_FLIGHT}": lambda: raw(
            url, n, queue_type
        ),
        "FastStream 0.7, 1 publish at a time": lambda: faststream(url, n, 1, queue_type),
        f"FastStream 0.7, up to {IN_FLIGHT} in flight": lambda: faststream(
            url, n, IN_FLIGHT, queue_type
        ),
        "flowkit RabbitMQTransport, 1 publish at a time": lambda: flowkit_bus(
            url, n, 1, queue_type
        ),
        f"flowkit RabbitMQTransport, up to {IN_FLIGHT} in flight": lambda: flowkit_bus(
            url, n, IN_FLIGHT, queue_type
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    p50: dict[str, list[float]] = {name: [] for name in variants}
    p99: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, run in variants.items():
            measured, latencies = await run()
            rates[name].append(measured)
            p50[name].append(latencies.percentile(0.50))
            p99[name].append(latencies.percentile(0.99))
    rate = {name: statistics.median(values) for name, values in rates.items()}
    names = list(variants)
    raw_rate = rate[names[0]]
    fs_best = max(rate[names[1]], rate[names[2]])
    fk_best = max(rate[names[3]], rate[names[4]])
    report(
        f"rabbitmq_end_to_end_{queue_type}",
        [
            {
                "variant": name,
                "msgs_per_s": rate[name],
                "x_raw": rate[name] / raw_rate,
                "p50_ms": statistics.median(p50[name]),
                "p99_ms": statistics.median(p99[name]),
            }
            for name in names
        ],
        {
            "messages": n,
            "repeat": repeat,
            "queue_type": queue_type,
            "statistic": "median of the repetitions",
            "flowkit_best_vs_raw": fk_best / raw_rate,
            "flowkit_best_vs_faststream_best": fk_best / fs_best,
            "targets": {"vs_raw": 0.5, "vs_faststream_best": 4.0},
            "targets_met": {
                "vs_raw": fk_best / raw_rate >= 0.5,
                "vs_faststream_best": fk_best / fs_best >= 4.0,
            },
        },
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rabbitmq", default=os.environ.get("FLOWKIT_RABBITMQ_URL"))
    parser.add_argument("--messages", type=int, default=N)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum")
    args = parser.parse_args(argv)
    if not args.rabbitmq:
        parser.error("give --rabbitmq URL or set FLOWKIT_RABBITMQ_URL (make bench starts one)")
    asyncio.run(main(args.rabbitmq, args.messages, args.repeat, args.queue_type))


if __name__ == "__main__":
    cli()
