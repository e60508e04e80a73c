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

import asyncio
import importlib
import json
import time
import uuid
from typing import Any

from ._e2e import (
    WARM_UP,
    Latencies,
    compare,
    faststream_run,
    flowkit_run,
    in_flight_modes,
    parse_args,
    payload,
)

# Every variant's consumer groups join with this session timeout (Tansu makes a
# join wait about half of it); the clock starts once joined either way.
SESSION_MS = 3000


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
    latencies = Latencies(n)

    async def consume() -> None:
        while not latencies.done.is_set():
            got = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in got.values():
                for record in records:
                    latencies.record(json.loads(record.value)["sent"])
            if got:
                await consumer.commit()

    task = asyncio.create_task(consume())
    await producer.send_and_wait(topic, json.dumps({**payload(0), "sent": WARM_UP}).encode())
    await latencies.warm.wait()
    start = time.perf_counter()
    pending = []
    for i in range(n):
        body = json.dumps({**payload(i), "sent": time.perf_counter()}).encode()
        pending.append(await producer.send(topic, body))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await latencies.done.wait()
    await task
    elapsed = time.perf_counter() - start
    await consumer.stop()
    await producer.stop()
    await delete_topics(url, topic)
    return n / elapsed, latencies


# -- FastStream and flowkit --------------------------------------------------------


async def faststream(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    # Installed in the benchmarks' environment only, never a flowkit dependency.
    KafkaBroker: Any = importlib.import_module("faststream.kafka").KafkaBroker

    broker = KafkaBroker(servers(url), log_level=0)
    topic = f"bench-fs-{uuid.uuid4().hex}"
    measured = await faststream_run(
        broker,
        broker.subscriber(
            topic,
            group_id="g",
            auto_offset_reset="earliest",
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=SESSION_MS // 3,
        ),
        lambda message: broker.publish(message, topic=topic),
        n,
        in_flight,
        warm_up=True,
    )
    await delete_topics(url, topic)
    return measured


async def flowkit_bus(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    from flowkit.transports import from_url

    prefix = f"bench-fk-{uuid.uuid4().hex[:8]}"
    session = SESSION_MS / 1000
    transport = from_url(f"{url}?prefix={prefix}&session_timeout={session}")
    measured = await flowkit_run(transport, n, in_flight, warm_up=True)
    await delete_topics(url, prefix)
    return measured


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int) -> None:
    await compare(
        "kafka_end_to_end",
        raw=("raw aiokafka, sends batched (linger 5 ms), getmany x500", lambda: raw(url, n)),
        faststream=in_flight_modes("FastStream 0.7", lambda k: faststream(url, n, k)),
        flowkit=in_flight_modes("flowkit KafkaTransport", lambda k: flowkit_bus(url, n, k)),
        n=n,
        repeat=repeat,
        vs_raw=0.5,
        vs_faststream_best=2.0,
        notes={"broker": "Tansu 0.6 (Kafka protocol), in-memory storage"},
    )


def cli(argv: list[str] | None = None) -> None:
    args = parse_args(
        argv,
        __doc__,
        broker="kafka",
        env="FLOWKIT_KAFKA_URL",
        start="scripts/brokers.sh start kafka",
    )
    asyncio.run(main(args.url, args.messages, args.repeat))


if __name__ == "__main__":
    cli()
