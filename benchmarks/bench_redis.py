"""End to end on Redis: 20,000 events published and handled, against raw redis-py
and FastStream on the same server, in the same run.

Each variant publishes N small JSON messages and consumes them in the same
process through a consumer group, and times the whole: from the first publish to
the last ack. Each message carries its publish time, so the handler records the
end-to-end latency (p50, p99).

- **raw redis-py**, with its best batching: XADD pipelined by 100, XREADGROUP
  and XACK by 100.
- **FastStream 0.7** (Redis streams, a consumer group), one publish awaited at a
  time, then up to 100 publishes in flight.
- **flowkit**: a ``Choreography`` on ``RedisTransport``, one publish awaited at a
  time, then up to 100 in flight.

Targets: flowkit >= 0.5 of raw and >= 4x FastStream's best, same run. Needs a
Redis server: ``--redis URL`` or ``FLOWKIT_REDIS_URL`` (``make bench`` starts one).
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

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

N = 20_000
IN_FLIGHT = 100


class Latencies:
    """End-to-end latencies, and when the last message arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: list[float] = []
        self.done = asyncio.Event()

    def record(self, sent: float) -> None:
        self.values.append(time.perf_counter() - sent)
        if len(self.values) >= self.n:
            self.done.set()

    def percentile(self, q: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def payload(i: int) -> dict[str, Any]:
    return {"order_id": f"o-{i}", "user_email": "a@example.com", "total": 12.5}


async def publish_all(n: int, in_flight: int, publish: Callable[[int], Awaitable[None]]) -> None:
    """Publish ``n`` messages, at most ``in_flight`` awaited at once."""
    if in_flight == 1:
        for i in range(n):
            await publish(i)
        return
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        try:
            await publish(i)
        finally:
            gate.release()

    tasks = set()
    for i in range(n):
        await gate.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


# -- raw redis-py ------------------------------------------------------------------


async def raw(url: str, n: int) -> tuple[float, Latencies]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    reader = redis.Redis.from_url(url)
    stream, group = f"bench:raw:{uuid.uuid4().hex}", "g"
    await client.xgroup_create(stream, group, id="$", mkstream=True)
    latencies = Latencies(n)

    async def consume() -> None:
        while not latencies.done.is_set():
            got: Any = await reader.xreadgroup(group, "c", {stream: ">"}, count=100, block=100)
            for _, entries in got or []:
                ids = []
                for entry_id, fields in entries:
                    latencies.record(json.loads(fields[b"body"])["sent"])
                    ids.append(entry_id)
                if ids:
                    await reader.xack(stream, group, *ids)

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for first in range(0, n, 100):
        pipe = client.pipeline(transaction=False)
        for i in range(first, min(first + 100, n)):
            body = json.dumps({**payload(i), "sent": time.perf_counter()})
            pipe.xadd(stream, {"body": body})
        await pipe.execute()
    await latencies.done.wait()
    elapsed = time.perf_counter() - start
    await consumer
    await client.delete(stream)
    await client.aclose()
    await reader.aclose()
    return n / elapsed, latencies


# -- FastStream --------------------------------------------------------------------


async def faststream(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    # Installed in the benchmarks' environment only, never a flowkit dependency.
    faststream_redis: Any = importlib.import_module("faststream.redis")
    RedisBroker, StreamSub = faststream_redis.RedisBroker, faststream_redis.StreamSub

    broker = RedisBroker(url, log_level=0, max_connections=in_flight + 10)
    stream = f"bench:fs:{uuid.uuid4().hex}"
    latencies = Latencies(n)

    async def handle(message: dict[str, Any]) -> None:
        latencies.record(message["sent"])

    broker.subscriber(stream=StreamSub(stream, group="g", consumer="c"))(handle)

    async with broker:
        await broker.start()
        start = time.perf_counter()

        async def publish(i: int) -> None:
            await broker.publish({**payload(i), "sent": time.perf_counter()}, stream=stream)

        await publish_all(n, in_flight, publish)
        await latencies.done.wait()
        elapsed = time.perf_counter() - start
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

    bus = Choreography(from_url(url))
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
    return n / elapsed, latencies


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int) -> None:
    variants: dict[str, Callable[[], Awaitable[tuple[float, Latencies]]]] = {
        "raw redis-py, XADD pipelined x100, XREADGROUP/XACK x100": lambda: raw(url, n),
        "FastStream 0.7, 1 publish at a time": lambda: faststream(url, n, 1),
        f"FastStream 0.7, up to {IN_FLIGHT} in flight": lambda: faststream(url, n, IN_FLIGHT),
        "flowkit RedisTransport, 1 publish at a time": lambda: flowkit_bus(url, n, 1),
        f"flowkit RedisTransport, up to {IN_FLIGHT} in flight": lambda: flowkit_bus(
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
        "redis_end_to_end",
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
            "targets": {"vs_raw": 0.5, "vs_faststream_best": 4.0},
            "targets_met": {
                "vs_raw": fk_best / raw_rate >= 0.5,
                "vs_faststream_best": fk_best / fs_best >= 4.0,
            },
        },
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", default=os.environ.get("FLOWKIT_REDIS_URL"))
    parser.add_argument("--messages", type=int, default=N)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.redis:
        parser.error("give --redis URL or set FLOWKIT_REDIS_URL (make bench starts a server)")
    asyncio.run(main(args.redis, args.messages, args.repeat))


if __name__ == "__main__":
    cli()
