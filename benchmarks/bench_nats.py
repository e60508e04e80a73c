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

import asyncio
import importlib
import json
import time
import uuid
import warnings
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


# -- FastStream and flowkit --------------------------------------------------------


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

    def subscribe(handle: Any) -> None:
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

    measured = await faststream_run(
        broker,
        subscribe,
        lambda message: broker.publish(message, subject, stream=name),
        n,
        in_flight,
    )
    await _delete_streams(url, name)
    return measured


async def flowkit_bus(url: str, n: int, in_flight: int) -> tuple[float, Latencies]:
    from flowkit.transports import from_url

    prefix = f"bench-fk-{uuid.uuid4().hex[:12]}"
    transport = from_url(f"{url}{'&' if '?' in url else '?'}prefix={prefix}")
    measured = await flowkit_run(transport, n, in_flight)
    await _delete_streams(url, f"{prefix}_")
    return measured


# -- the run -----------------------------------------------------------------------


async def main(url: str, n: int, repeat: int) -> None:
    await compare(
        "nats_end_to_end",
        raw=("raw nats-py, publish_async, fetch/ack x100", lambda: raw(url, n)),
        faststream={
            **in_flight_modes(
                "FastStream 0.7 pull x100", lambda k: faststream(url, n, k, pull=True)
            ),
            **in_flight_modes("FastStream 0.7 push", lambda k: faststream(url, n, k, pull=False)),
        },
        flowkit=in_flight_modes("flowkit NATSTransport", lambda k: flowkit_bus(url, n, k)),
        n=n,
        repeat=repeat,
        vs_raw=0.5,
        vs_faststream_best=2.0,
    )


def cli(argv: list[str] | None = None) -> None:
    args = parse_args(
        argv, __doc__, broker="nats", env="FLOWKIT_NATS_URL", start="make bench starts a server"
    )
    asyncio.run(main(args.url, args.messages, args.repeat))


if __name__ == "__main__":
    cli()
