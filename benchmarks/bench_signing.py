"""The cost of signing: publish + handle throughput on the in-memory transport,
with HMAC-SHA256 signing on and off, in the same run.

The workload is ``bench_bus``'s fan-out: events published to three services,
each handling every one. With signing on, each publish signs once and each of
the three handlers verifies before decoding. Each repetition measures both
back to back (the order alternating); the ratio reported is the median of the
per-repetition ratios (signed / unsigned).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from flowkit import Signing

from ._report import report
from .bench_bus import OrderPlaced, fanout_bus, payloads

SIGNING = Signing(
    keys={"2026-12": bytes(range(32)), "2026-06": bytes(range(1, 33))}, active="2026-12"
)


async def fanout(events: list[OrderPlaced], signing: Signing | None) -> float:
    """Events per second through the fan-out bus, signed or not."""
    n = len(events)
    bus, done = fanout_bus(n, signing=signing)
    async with bus:
        start = time.perf_counter()
        for event in events:
            await bus.publish(event)
        await done.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed


def sign_verify_only(n: int) -> float:
    """The HMAC work of one event alone: one signature and three checks, the last
    two answered by the cache of verified signatures as in the fan-out."""
    from flowkit._events import encode

    _, body = encode(payloads(1)[0])
    start = time.perf_counter()
    for _ in range(n):
        headers = {"flowkit-signature": SIGNING.sign("OrderPlaced", body)}
        for _ in range(3):
            SIGNING.verify("OrderPlaced", "g", body, headers)
    return n / (time.perf_counter() - start)


async def main(n: int, repeat: int) -> None:
    events = payloads(n)
    off: list[float] = []
    on: list[float] = []
    for i in range(repeat):
        if i % 2:
            on.append(await fanout(events, SIGNING))
            off.append(await fanout(events, None))
        else:
            off.append(await fanout(events, None))
            on.append(await fanout(events, SIGNING))
    ratios = [x / y for x, y in zip(on, off, strict=True)]
    ratio = statistics.median(ratios)
    hmac_only = sign_verify_only(n)
    report(
        "signing",
        [
            {
                "variant": "fan-out x3, signing off",
                "events_per_s": statistics.median(off),
                "ratio": 1.0,
            },
            {
                "variant": "fan-out x3, signing on",
                "events_per_s": statistics.median(on),
                "ratio": ratio,
            },
            {
                "variant": "1 sign + 3 verifies (2 cached), HMAC alone",
                "events_per_s": hmac_only,
                "ratio": hmac_only / statistics.median(off),
            },
        ],
        {
            "events": n,
            "services": 3,
            "repeat": repeat,
            "statistic": "median events/s; median of the per-repetition ratios (on / off)",
            "ratios": [round(r, 3) for r in ratios],
        },
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(main(args.events, args.repeat))


if __name__ == "__main__":
    cli()
