"""End to end on NATS JetStream: 20,000 events published and handled, against raw
nats-py and FastStream on the same server, in the same run.

Each variant publishes N small JSON messages to a JetStream stream and consumes
them in the same process through a durable pull consumer, and times the whole:
from the first publish to the last ack. Each message carries its publish time,
so the handler records the end-to-end latency (p50, p99).

- **raw nats-py**, with its best batching: ``publish_async`` (every publish in
  flight, the acks awaited at the end) and ``fetch`` by 100 with acks sent
  without waiting.
- **FastStream 0.7**, with a JetStream pull subscriber (100 messages a request)
  and with a push subscriber, one publish awaited at a time, then up to 100
  publishes in flight; its best of the four is the one compared.
- **flowkit**: a ``Choreography`` on ``NATSTransport``, one publish awaited at a
  time, then up to 100 in flight.

Targets: flowkit >= 0.5 of raw and >= 2x FastStream's best, same run. Needs a
nats-server with JetStream: ``--nats URL`` or ``FLOWKIT_NATS_URL``.
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
import warnings
from typing import TYPE_CHECKING, Any

from ._report import report
from .bench_redis import IN_FLIGHT, Latencies, N, payload, publish_all

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def _delete_streams(url: str, prefix: str) -> None:
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix):
                await js.delete_stream(info.config.name)
    finally:
        await client.close()


# -- raw nats-py -------------------------------------------------------------------


async def raw(url: str, n: int) -> tuple[float, Latencies]:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

    client = await nats.connect(url)
    js = client.jetstream(publish_async_max_pending=n)
    name = f"bench-raw-{uuid.uuid4().hex}"
    subject = f"{name}.s"
    await js.add_stream(
        StreamConfig(name=name, subjects=[subject], retention=RetentionPolicy.INTEREST)
    )
    pull = await js.pull_subscribe(
        subject,
        durable="g",
        stream=name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1),
    )
    latencies = Latencies(n)

    async def consume() -> None:
        while not latencies.done.is_set():
            try:
                messages = await pull.fetch(100, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for message in messages:
                latencies.record(json.loads(message.data)["sent"])
                await message.ack()

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for i in range(n):
        body = json.dumps({**payload(i), "sent": time.perf_counter()}).encode()
        await js.publish_async(subject, body)
    await js.publish_async_completed()
    await latencies.done.wait()
    elapsed = time.perf_counter() - start
    await consumer
    await js.delete_stream(name)
    await client.close()
    return n / elapsed, latencies


# -- FastStream --------------------------------------------------------------------


async def faststream(url: str, n: int, in_flight: int, *, pull: bool) -> tuple[float, Latencies]:
    # Installed in the benchmarks' environment only, never a flowkit dependency.
    faststream_nats: Any = importlib.import_module("faststream.nats")
    NatsBroker, JStream, PullSub = (
        faststream_nats.NatsBroker,
        faststream_nats.JStream,
        faststream_nats.PullSub,
    )

    broker = NatsBroker(url, log_level=0)
    name = f"bench-fs-{uuid.uuid4().hex}"
    subject = f"{name}.s"
    stream = JStream(name, subjects=[subject])
    latencies = Latencies(n)

    async def handle(message: dict[str, Any]) -> None:
        latencies.record(message["sent"])

    if pull:
        subscriber = broker.subscriber(
            subject, stream=stream, durable="g", pull_sub=PullSub(batch_size=100)
        )
    else:
        # A push consumer: the faster of the two here (FastStream warns that a durable
        # push consumer does not scale across instances).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            subscriber = broker.subscriber(subject, stream=stream, durable="g")
    subscriber(handle)

    async with broker:
        await broker.start()
        start = time.perf_counter()

        async def publish(i: int) -> None:
            await broker.publish({**payload(i), "sent": time.perf_counter()}, subject, stream=name)

        await publish_all(n, in_flight, publish)
        await latencies.done.wait()
        elapsed = time.perf_counter() - start
    await _delete_streams(url, name)
    return n / elapsed, latencies


# -- flowkit -----------------------------------------------------------------------


async def flowkit_bus(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    from flowkit import Choreography, Event
    from flowkit.transports import from_url

    class OrderPlaced(Event, type_name=f"bench.OrderPlaced.{uuid.uuid4().hex}"):
        order_id: str
        user_email: str
        total: float
        sent: float

    prefix = f"bench-fk-{uuid.uuid4().hex[:12]}"
    bus = Choreography(from_url(f"{url}{'&' if '?' in url else '?'}prefix={prefix}"))
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
    await _delete_streams(url, f"{prefix}_")
    return n / elapsed, latencies


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int) -> None:
    variants: dict[str, Callable[[], Awaitable[tuple[float, Latencies]]]] = {
        "raw nats-py, publish_async, fetch/ack x100": lambda: raw(url, n),
        "FastStream 0.7 pull x100, 1 publish at a time": lambda: faststream(url, n, 1, pull=True),
        f"FastStream 0.7 pull x100, up to {IN_FLIGHT} in flight": lambda: faststream(
            url, n, IN_FLIGHT, pull=True
        ),
        "FastStream 0.7 push, 1 publish at a time": lambda: faststream(url, n, 1, pull=False),
        f"FastStream 0.7 push, up to {IN_FLIGHT} in flight": lambda: faststream(
            url, n, IN_FLIGHT, pull=False
        ),
        "flowkit NATSTransport, 1 publish at a time": lambda: flowkit_bus(url, n, 1),
        f"flowkit NATSTransport, up to {IN_FLIGHT} in flight": lambda: flowkit_bus(
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
    fs_best = max(rate[name] for name in names[1:5])
    fk_best = max(rate[names[5]], rate[names[6]])
    report(
        "nats_end_to_end",
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
    parser.add_argument("--nats", default=os.environ.get("FLOWKIT_NATS_URL"))
    parser.add_argument("--messages", type=int, default=N)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.nats:
        parser.error("give --nats URL or set FLOWKIT_NATS_URL (make bench starts a server)")
    asyncio.run(main(args.nats, args.messages, args.repeat))


if __name__ == "__main__":
    cli()
