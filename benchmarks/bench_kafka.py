"""End to end on a Kafka-protocol broker (Tansu here): 20,000 events published and
handled, against raw aiokafka and FastStream on the same server, in the same run.

Each variant publishes N small JSON messages and consumes them in the same
process through a consumer group, and times the whole: from the first publish to
the last message handled (and, for flowkit and raw aiokafka, its offset
committed). Each message carries its publish time, so the handler records the
end-to-end latency (p50, p99). A consumer group's join takes seconds on Tansu:
each variant first sends one message through and waits for it, so the clock
starts with the group joined.

- **raw aiokafka**, with its best batching: sends not awaited one by one
  (the producer batches them, ``linger_ms=5``), ``getmany`` by up to 500,
  one commit per batch.
- **FastStream 0.7** (a subscriber in a consumer group), one publish awaited at
  a time, then up to 100 publishes in flight.
- **flowkit**: a ``Choreography`` on ``KafkaTransport``, one publish awaited at
  a time, then up to 100 in flight.

Targets: flowkit >= 0.5 of raw and >= 2x FastStream's best, same run. Needs a
broker: ``--kafka URL`` or ``FLOWKIT_KAFKA_URL`` (``scripts/brokers.sh start kafka``).
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

# Every variant's consumer groups join with this session timeout (Tansu makes a
# join wait about half of it); the clock starts once joined either way.
SESSION_MS = 3000
WARM_UP = -1.0  # the "sent" time of the message each variant waits for before the clock


def servers(url: str) -> str:
    return url.removeprefix("kafka://").split("?")[0]


async def delete_topics(url: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=servers(url))
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


class Run:
    """Latencies, and the wait for the warm-up message."""

    def __init__(self, n: int) -> None:
        self.latencies = Latencies(n)
        self.warm = asyncio.Event()

    def record(self, sent: float) -> None:
        if sent == WARM_UP:
            self.warm.set()
        else:
            self.latencies.record(sent)


# -- raw aiokafka ------------------------------------------------------------------


async def raw(url: str, n: int) -> tuple[float, Latencies]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-raw-{uuid.uuid4().hex}"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers(url))
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=servers(url), linger_ms=5)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers(url),
        group_id="g",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=SESSION_MS // 3,
        fetch_max_wait_ms=100,
    )
    await producer.start()
    await consumer.start()
    run = Run(n)

    async def consume() -> None:
        while not run.latencies.done.is_set():
            got = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in got.values():
                for record in records:
                    run.record(json.loads(record.value)["sent"])
            if got:
                await consumer.commit()

    task = asyncio.create_task(consume())
    await producer.send_and_wait(topic, json.dumps({**payload(0), "sent": WARM_UP}).encode())
    await run.warm.wait()
    start = time.perf_counter()
    pending = []
    for i in range(n):
        body = json.dumps({**payload(i), "sent": time.perf_counter()}).encode()
        pending.append(await producer.send(topic, body))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await run.latencies.done.wait()
    await task
    elapsed = time.perf_counter() - start
    await consumer.stop()
    await producer.stop()
    await delete_topics(url, topic)
    return n / elapsed, run.latencies


# -- FastStream --------------------------------------------------------------------


async def faststream(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    # Installed in the benchmarks' environment only, never a flowkit dependency.
    KafkaBroker: Any = importlib.import_module("faststream.kafka").KafkaBroker

    broker = KafkaBroker(servers(url), log_level=0)
    topic = f"bench-fs-{uuid.uuid4().hex}"
    run = Run(n)

    async def handle(message: dict[str, Any]) -> None:
        run.record(message["sent"])

    broker.subscriber(
        topic,
        group_id="g",
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=SESSION_MS // 3,
    )(handle)

    async with broker:
        await broker.start()
        await broker.publish({**payload(0), "sent": WARM_UP}, topic=topic)
        await run.warm.wait()
        start = time.perf_counter()

        async def publish(i: int) -> None:
            await broker.publish({**payload(i), "sent": time.perf_counter()}, topic=topic)

        await publish_all(n, in_flight, publish)
        await run.latencies.done.wait()
        elapsed = time.perf_counter() - start
    await delete_topics(url, topic)
    return n / elapsed, run.latencies


# -- flowkit -----------------------------------------------------------------------


async def flowkit_bus(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    from flowkit import Choreography, Event
    from flowkit.transports import from_url

    class OrderPlaced(Event, type_name=f"bench.OrderPlaced.{uuid.uuid4().hex}"):
        order_id: str
        user_email: str
        total: float
        sent: float

    prefix = f"bench-fk-{uuid.uuid4().hex[:8]}"
    session = SESSION_MS / 1000
    bus = Choreography(from_url(f"{url}?prefix={prefix}&session_timeout={session}"))
    run = Run(n)

    @bus.on(OrderPlaced, service="bench", name="handle")
    async def handle(event: OrderPlaced) -> None:
        run.record(event.sent)

    async with bus:
        await bus.publish(OrderPlaced(**payload(0), sent=WARM_UP))
        await run.warm.wait()
        start = time.perf_counter()

        async def publish(i: int) -> None:
            await bus.publish(OrderPlaced(**payload(i), sent=time.perf_counter()))

        await publish_all(n, in_flight, publish)
        await run.latencies.done.wait()
        elapsed = time.perf_counter() - start
    await delete_topics(url, prefix)
    return n / elapsed, run.latencies


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int) -> None:
    variants: dict[str, Callable[[], Awaitable[tuple[float, Latencies]]]] = {
        "raw aiokafka, sends batched (linger 5 ms), getmany x500": lambda: raw(url, n),
        "FastStream 0.7, 1 publish at a time": lambda: faststream(url, n, 1),
        f"FastStream 0.7, up to {IN_FLIGHT} in flight": lambda: faststream(url, n, IN_FLIGHT),
        "flowkit KafkaTransport, 1 publish at a time": lambda: flowkit_bus(url, n, 1),
        f"flowkit KafkaTransport, up to {IN_FLIGHT} in flight": lambda: flowkit_bus(
            url, n, IN_FLIGHT
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
        "kafka_end_to_end",
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
            "broker": "Tansu 0.6 (Kafka protocol), in-memory storage",
            "statistic": "median of the repetitions",
            "flowkit_best_vs_raw": fk_best / raw_rate,
            "flowkit_best_vs_faststream_best": fk_best / fs_best,
            "targets": {"vs_raw": 0.5, "vs_faststream_best": 2.0},
            "targets_met": {
                "vs_raw": fk_best / raw_rate >= 0.5,
                "vs_faststream_best": fk_best / fs_best >= 2.0,
            },
        },
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kafka", default=os.environ.get("FLOWKIT_KAFKA_URL"))
    parser.add_argument("--messages", type=int, default=N)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.kafka:
        parser.error("give --kafka URL or set FLOWKIT_KAFKA_URL (scripts/brokers.sh start kafka)")
    asyncio.run(main(args.kafka, args.messages, args.repeat))


if __name__ == "__main__":
    cli()
