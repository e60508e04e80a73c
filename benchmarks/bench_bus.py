"""Fan-out throughput: 100,000 events to 3 services on the in-memory transport.

The baseline, measured in the same run, pushes the same payload objects through
three plain ``asyncio.Queue``s to three consumer tasks. flowkit's figure
includes JSON encoding on publish, decoding and pydantic validation on receipt,
the consumer loop and the acks. Target: flowkit >= 0.2 of the baseline.

Each repetition measures the baseline, flowkit and the codec back to back; the
ratios reported are the medians of the per-repetition ratios, which hold up
better than a ratio of medians on a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Any

from flowkit import Choreography, Event
from flowkit._events import decode, encode
from flowkit.transports import InMemoryTransport

from ._report import report

if TYPE_CHECKING:
    from collections.abc import Sequence

    from flowkit import BusObserver

SERVICES = ("notification", "seller", "logistics")


class OrderPlaced(Event):
    order_id: str
    user_email: str
    seller_id: str
    total: float


def payloads(n: int) -> list[OrderPlaced]:
    return [
        OrderPlaced(order_id=f"o-{i}", user_email="a@example.com", seller_id="s-9", total=12.5)
        for i in range(n)
    ]


async def baseline(events: list[OrderPlaced]) -> float:
    """Plain asyncio fan-out: one queue and one consumer task per service."""
    n = len(events)
    queues: list[asyncio.Queue[OrderPlaced]] = [asyncio.Queue(10_000) for _ in SERVICES]
    counts = [0, 0, 0]
    done = asyncio.Event()

    async def consume(i: int) -> None:
        q = queues[i]
        while True:
            await q.get()
            counts[i] += 1
            if counts[i] == n and all(c == n for c in counts):
                done.set()

    tasks = [asyncio.create_task(consume(i)) for i in range(len(SERVICES))]
    start = time.perf_counter()
    for event in events:
        for q in queues:
            await q.put(event)
    await done.wait()
    elapsed = time.perf_counter() - start
    for t in tasks:
        t.cancel()
    return n / elapsed


def codec_only(events: list[OrderPlaced]) -> float:
    """The JSON work alone: each event encoded once and decoded and validated once,
    as the bus does for a fan-out within one process. The ceiling of any bus figure."""
    start = time.perf_counter()
    for event in events:
        _, body = encode(event)
        decode(body, OrderPlaced)
    return len(events) / (time.perf_counter() - start)


def fanout_bus(n: int, **options: Any) -> tuple[Choreography, asyncio.Event]:
    """A bus on InMemoryTransport (``options`` go to Choreography) whose services
    each handle OrderPlaced, and the event set once each has handled ``n``."""
    bus = Choreography(InMemoryTransport(max_buffer=10_000), **options)
    counts = dict.fromkeys(SERVICES, 0)
    done = asyncio.Event()
    for service in SERVICES:

        @bus.on(OrderPlaced, service=service, name="handle")
        async def handle(event: OrderPlaced, service: str = service) -> None:
            counts[service] += 1
            if counts[service] == n and all(c == n for c in counts.values()):
                done.set()

    return bus, done


async def flowkit_fanout(events: list[OrderPlaced], observers: Sequence[BusObserver] = ()) -> float:
    """The same fan-out through the Choreography bus on InMemoryTransport."""
    n = len(events)
    bus, done = fanout_bus(n, observers=observers)
    async with bus:
        start = time.perf_counter()
        for event in events:
            await bus.publish(event)
        await done.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


TARGET = 0.2


async def main(n: int, repeat: int) -> None:
    events = payloads(n)
    base, flow, codec = [], [], []
    for _ in range(repeat):
        base.append(await baseline(events))
        flow.append(await flowkit_fanout(events))
        codec.append(codec_only(events))
    b, f, c = statistics.median(base), statistics.median(flow), statistics.median(codec)
    flow_ratio = statistics.median(x / y for x, y in zip(flow, base, strict=True))
    codec_ratio = statistics.median(x / y for x, y in zip(codec, base, strict=True))
    report(
        "bus_fanout",
        [
            {"variant": "asyncio.Queue x3 (baseline)", "events_per_s": b, "ratio": 1.0},
            {
                "variant": "flowkit Choreography, InMemoryTransport",
                "events_per_s": f,
                "ratio": flow_ratio,
            },
            {
                "variant": "JSON encode + decode/validate alone (the ceiling)",
                "events_per_s": c,
                "ratio": codec_ratio,
            },
        ],
        {
            "events": n,
            "services": len(SERVICES),
            "repeat": repeat,
            "statistic": "median events/s; median of the per-repetition ratios",
            "flowkit_ratios": [round(x / y, 3) for x, y in zip(flow, base, strict=True)],
            "target_ratio": TARGET,
            "target_met": flow_ratio >= TARGET,
        },
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(main(args.events, args.repeat))


if __name__ == "__main__":
    cli()
