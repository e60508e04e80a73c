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

import asyncio
import importlib
import json
import time
import uuid
from typing import Any

from ._e2e import (
    Latencies,
    compare,
    faststream_run,
    flowkit_run,
    in_flight_modes,
    parse_args,
    payload,
)

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


# -- FastStream and flowkit --------------------------------------------------------


async def faststream(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    # Installed in the benchmarks' environment only, never a flowkit dependency.
    faststream_redis: Any = importlib.import_module("faststream.redis")
    RedisBroker, StreamSub = faststream_redis.RedisBroker, faststream_redis.StreamSub

    broker = RedisBroker(url, log_level=0, max_connections=in_flight + 10)
    stream = f"bench:fs:{uuid.uuid4().hex}"
    return await faststream_run(
        broker,
        broker.subscriber(stream=StreamSub(stream, group="g", consumer="c")),
        lambda message: broker.publish(message, stream=stream),
        n,
        in_flight,
    )


async def flowkit_bus(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    from flowkit.transports import from_url

    return await flowkit_run(from_url(url), n, in_flight)


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int) -> None:
    await compare(
        "redis_end_to_end",
        raw=("raw redis-py, XADD pipelined x100, XREADGROUP/XACK x100", lambda: raw(url, n)),
        faststream=in_flight_modes("FastStream 0.7", lambda k: faststream(url, n, k)),
        flowkit=in_flight_modes("flowkit RedisTransport", lambda k: flowkit_bus(url, n, k)),
        n=n,
        repeat=repeat,
        vs_raw=0.5,
        vs_faststream_best=4.0,
    )


def cli(argv: list[str] | None = None) -> None:
    args = parse_args(
        argv, __doc__, broker="redis", env="FLOWKIT_REDIS_URL", start="make bench starts a server"
    )
    asyncio.run(main(args.url, args.messages, args.repeat))


if __name__ == "__main__":
    cli()
