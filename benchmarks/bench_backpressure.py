"""Backpressure: a fast publisher and a slow consumer on every transport, and what the
consumer's memory does meanwhile.

For each transport, a consumer process (``tests/backpressure_worker.py``) runs a bus
with two handlers of one event, each in a service of its own: one at concurrency 1
(its loop takes batches of up to 64), one at concurrency 4 (four loops, one message
at a time each), both sleeping ``--sleep`` seconds per event, so that they handle at
most 1/sleep and 4/sleep events/s. This process publishes as fast as the transport
takes them (16 publishes in flight) for ``--seconds`` or until ``--events`` are
published, while it samples the backlog of both groups at the broker every second.

Reported per transport: the consumer's resident set (RSS, from ``/proc/self/statm``,
every 0.5 s) at start (subscribed, nothing received yet), after 10, 30 and 60 s, and
its peak; what was published and how fast; the backlog of each group at its peak and
at the end; and the rate each group handled. A consumer that pulled the backlog into
memory would show an RSS growing with it; a bounded one stays flat, whatever the
backlog.

The in-memory transport cannot cross processes: its row runs the same bus in this
process (the RSS is this process's, publisher included), and its publisher waits
whenever a group holds ``max_buffer`` (10,000) undelivered messages, so the backlog
stays bounded and the publish rate falls to the slowest group's handling rate.

Needs the servers of ``scripts/brokers.sh`` (``FLOWKIT_REDIS_URL``, ``FLOWKIT_RABBITMQ_URL``,
``FLOWKIT_NATS_URL``, ``FLOWKIT_KAFKA_URL``); a transport without its URL is left out.
What a run leaves on a server (under a prefix of its own) is deleted afterwards. Quick
check: ``.venv-bench/bin/python -m benchmarks.bench_backpressure --seconds 10 memory redis``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio

from flowkit import Choreography
from flowkit.transports import InMemoryTransport, from_url
from tests.backpressure_worker import Worker, flood, rss, slow_bus, worker

from ._report import report
from .bench_kafka import delete_topics

MIB = 1024 * 1024
CONCURRENCIES = (1, 4)
# The broker transports: their URL's environment variable, and the options of the run.
BROKERS: dict[str, tuple[str, dict[str, Any]]] = {
    "redis": ("FLOWKIT_REDIS_URL", {}),
    "rabbitmq": ("FLOWKIT_RABBITMQ_URL", {}),
    "nats": ("FLOWKIT_NATS_URL", {}),
    # A short session: a group's first join on Tansu takes about half of it.
    "kafka": ("FLOWKIT_KAFKA_URL", {"session_timeout": 1.5}),
}
# The times (seconds after the consumer was ready) at which its RSS is reported.
MARKS = (10, 30, 60)


def with_query(url: str, **options: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def forget(name: str, url: str, prefix: str, groups: list[tuple[str, str]]) -> None:
    """Delete what the run left on the server, under ``prefix``."""
    if name == "redis":
        from redis.asyncio import Redis

        client = Redis.from_url(url)
        try:
            keys = [k async for k in client.scan_iter(f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    elif name == "rabbitmq":
        import aiormq

        from flowkit.transports import RabbitMQTransport

        names = RabbitMQTransport(url, prefix=prefix)
        async with aiormq.Connection(url) as connection:
            channel = await connection.channel()
            for topic, group in groups:
                await channel.queue_delete(names.queue_name(topic, group))
            for topic in sorted({topic for topic, _ in groups}):
                await channel.exchange_delete(names.exchange_name(topic))
    elif name == "nats":
        from .bench_nats import _delete_streams

        await _delete_streams(url, f"{prefix}_")
    elif name == "kafka":
        await delete_topics(url, f"{prefix}..")


class Backlogs:
    """The backlog of each group at the broker, sampled every second."""

    def __init__(self, groups: dict[str, tuple[str, str]]) -> None:
        self.groups = groups
        self.samples: list[tuple[float, dict[str, int]]] = []

    async def sample(self, bus: Choreography, start: float) -> None:
        while True:
            now = {
                service: await bus.transport.backlog(topic, group)
                for service, (topic, group) in self.groups.items()
            }
            self.samples.append((time.monotonic() - start, now))
            await anyio.sleep(1.0)

    def peak(self, service: str) -> int:
        return max((s[service] for _, s in self.samples), default=0)

    def last(self, service: str) -> int:
        return self.samples[-1][1][service] if self.samples else 0


def row(
    transport: str,
    *,
    start_rss: int,
    rss_at: dict[int, int | None],
    peak_rss: int,
    published: int,
    publish_s: float,
    backlogs: Backlogs,
    handled: dict[str, int],
    seconds: float,
) -> dict[str, Any]:
    """One line of the report."""
    line: dict[str, Any] = {
        "transport": transport,
        "rss_start_mib": start_rss / MIB,
        **{
            f"rss_{mark}s_mib": (value / MIB if value is not None else None)
            for mark, value in rss_at.items()
        },
        "rss_peak_mib": peak_rss / MIB,
        "rss_growth_mib": (peak_rss - start_rss) / MIB,
        "published": published,
        "publish_per_s": published / publish_s if publish_s else 0.0,
    }
    for service in handled:
        line[f"backlog_peak_{service}"] = backlogs.peak(service)
        line[f"backlog_end_{service}"] = backlogs.last(service)
    for service, n in handled.items():
        line[f"handled_per_s_{service}"] = n / seconds
    return line


async def flood_timed(
    bus: Choreography, *, seconds: float, events: int, pad: int
) -> tuple[int, float]:
    began = time.monotonic()
    published = await flood(bus, seconds=seconds, events=events, pad=pad)
    return published, time.monotonic() - began


async def broker_run(
    name: str, url: str, *, seconds: float, events: int, pad: int, sleep: float, prefetch: int
) -> dict[str, Any]:
    """The scenario on one broker, the consumer in a process of its own."""
    _, options = BROKERS[name]
    prefix = f"bench-bp-{uuid.uuid4().hex[:8]}"
    full = with_query(url, prefix=prefix, **options, **({"prefetch": prefetch} if prefetch else {}))
    groups: list[tuple[str, str]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with worker(
                full, sleep=sleep, concurrencies=CONCURRENCIES, stderr=Path(tmp) / "stderr"
            ) as consumer:
                groups = list(consumer.groups.values())
                start = time.monotonic()
                backlogs = Backlogs(consumer.groups)
                bus = Choreography(from_url(with_query(url, prefix=prefix, **options)))
                async with bus, anyio.create_task_group() as tg:
                    tg.start_soon(backlogs.sample, bus, start)
                    published, publish_s = await flood_timed(
                        bus, seconds=seconds, events=events, pad=pad
                    )
                    await anyio.sleep(max(0.0, seconds - (time.monotonic() - start)))
                    tg.cancel_scope.cancel()
                final = await consumer.stop()
                return broker_row(name, consumer, final, published, publish_s, backlogs, seconds)
    finally:
        await forget(name, url, prefix, groups)


def broker_row(
    name: str,
    consumer: Worker,
    final: dict[str, Any],
    published: int,
    publish_s: float,
    backlogs: Backlogs,
    seconds: float,
) -> dict[str, Any]:
    return row(
        name,
        start_rss=consumer.ready["rss"],
        rss_at={mark: consumer.rss_at(mark) for mark in MARKS},
        peak_rss=consumer.peak_rss,
        published=published,
        publish_s=publish_s,
        backlogs=backlogs,
        handled=final["handled"],
        seconds=seconds,
    )


async def memory_run(*, seconds: float, events: int, pad: int, sleep: float) -> dict[str, Any]:
    """The scenario on the in-memory transport: publisher and consumer in this process."""
    transport = InMemoryTransport()
    bus, handled = slow_bus(transport, sleep, CONCURRENCIES)
    groups = {spec.service: (spec.topic, spec.consumer) for spec in bus.handlers}
    backlogs = Backlogs(groups)
    samples: list[tuple[float, int]] = []

    async def watch_rss(start: float) -> None:
        while True:
            samples.append((time.monotonic() - start, rss()))
            await anyio.sleep(0.5)

    async with bus:
        start = time.monotonic()
        start_rss = rss()
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_rss, start)
            tg.start_soon(backlogs.sample, bus, start)
            published, publish_s = await flood_timed(bus, seconds=seconds, events=events, pad=pad)
            await anyio.sleep(max(0.0, seconds - (time.monotonic() - start)))
            tg.cancel_scope.cancel()
        done = dict(handled)
    return row(
        f"memory (max_buffer={transport.max_buffer}, one process)",
        start_rss=start_rss,
        rss_at={mark: next((r for t, r in samples if t >= mark - 0.6), None) for mark in MARKS},
        peak_rss=max([start_rss, *(r for _, r in samples)]),
        published=published,
        publish_s=publish_s,
        backlogs=backlogs,
        handled=done,
        seconds=seconds,
    )


async def main(
    names: list[str], *, seconds: float, events: int, pad: int, sleep: float, prefetch: int
) -> None:
    rows: list[dict[str, Any]] = []
    left_out: dict[str, str] = {}
    for name in names:
        if name == "memory":
            rows.append(await memory_run(seconds=seconds, events=events, pad=pad, sleep=sleep))
            continue
        env, _ = BROKERS[name]
        url = os.environ.get(env, "").strip()
        if not url:
            left_out[name] = f"set {env}"
            continue
        rows.append(
            await broker_run(
                name,
                url,
                seconds=seconds,
                events=events,
                pad=pad,
                sleep=sleep,
                prefetch=prefetch,
            )
        )
    notes: dict[str, Any] = {
        "seconds": seconds,
        "max_events": events,
        "pad_bytes": pad,
        "handler_sleep_s": sleep,
        "handlers": {
            f"slow{c}": f"concurrency {c}, at most {c / sleep:.0f} events/s" for c in CONCURRENCIES
        },
        "prefetch": prefetch or "the transport's default",
    }
    if left_out:
        notes["left_out"] = left_out
    report("backpressure", rows, notes)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "transports",
        nargs="*",
        default=["memory", *BROKERS],
        help=f"the transports to run, of {', '.join(['memory', *BROKERS])} (all by default)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="per transport")
    parser.add_argument("--events", type=int, default=60_000, help="the most published")
    parser.add_argument("--pad", type=int, default=512, help="bytes of padding per event")
    parser.add_argument("--sleep", type=float, default=0.004, help="handler seconds per event")
    parser.add_argument(
        "--prefetch", type=int, default=0, help="the broker transports' prefetch (0: default)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.transports) - {"memory", *BROKERS})
    if unknown:
        parser.error(f"unknown transports: {', '.join(unknown)}")
    asyncio.run(
        main(
            args.transports,
            seconds=args.seconds,
            events=args.events,
            pad=args.pad,
            sleep=args.sleep,
            prefetch=args.prefetch,
        )
    )


if __name__ == "__main__":
    cli()
