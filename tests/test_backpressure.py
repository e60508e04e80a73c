"""Backpressure: a fast publisher and a slow consumer keep the consumer's memory bounded.

On each broker, a consumer process (``tests/backpressure_worker.py``) runs two slow
handlers of one event: ``slow1`` at concurrency 1 (one loop taking batches) and
``slow4`` at concurrency 4 (four loops, one message each), sleeping :data:`SLEEP`
seconds per event. This process floods them with up to :data:`EVENTS` events of
:data:`PAD` bytes, as fast as the broker takes them, for at most :data:`PUBLISH_FOR`
seconds: thousands of messages wait at the broker while the consumer works through
them at its handlers' pace. The consumer reports its resident set every 0.5 s; it must
stay within a bound of where it started (each subscription holds at most its prefetch),
each group must be handled at its handlers' rate, and once the consumer stops, what
it handled and what the broker still holds must add up to what was published.

The in-memory transport cannot reach another process: there the same bus runs in this
process, and its documented bound is checked: a group holds at most ``max_buffer``
undelivered messages, a publish waits for room (so the publisher goes at the slowest
group's pace), and fails with :class:`~flowkit.TransportError` after
``publish_timeout`` if no room comes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

from flowkit import Choreography, TransportError
from flowkit.transports import InMemoryTransport, from_url

from .backpressure_worker import Tick, flood, rss, slow_bus, worker
from .brokers import on_brokers, with_query
from .brokers import prefix as prefix
from .brokers import url as url

if TYPE_CHECKING:
    from pathlib import Path

    from .brokers import Broker

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
SLEEP = 0.004
"""Seconds each handler sleeps per event: at most 250 events/s per loop."""
CONCURRENCIES = (1, 4)
EVENTS = 20_000
"""The most events published."""
PAD = 2048
"""Bytes of padding per event: the backlog is tens of MB, which a consumer that pulled it
into memory would show."""
PUBLISH_FOR = 5.0
"""The longest the flood lasts, in seconds."""
WATCH_FOR = 8.0
"""How long the consumer runs after it is ready, in seconds."""
QUEUED = 5_000
"""How many messages each group must have had waiting at the broker at once."""
RSS_BOUND = {"kafka": 60 * MIB}
"""How much the consumer's resident set may grow, by broker; :data:`RSS_DEFAULT` for the
others. aiokafka's fetcher keeps whole fetch responses (up to ``max_partition_fetch_bytes``,
1 MiB, per partition of each group) on top of the transport's prefetch: measured, a Kafka
consumer grows by 20 to 30 MiB with these messages; the others by 1 or 2."""
RSS_DEFAULT = 24 * MIB
UNCOUNTED = {"kafka": 200}
"""How many messages the broker's backlog may leave out, by broker. Tansu, the Kafka
broker of the tests, answers a ListOffsets for the latest offset with less than the log's
end after a batch of several records (raw aiokafka shows it: 10 records at offsets 2 to
11, and it answers 10): after a flood, ``KafkaTransport.backlog`` counts some tens less
than are there (all of them are delivered)."""


def ceiling(service: str) -> float:
    """The most events/s the handler of ``service`` (``slow4``) can handle."""
    return int(service.removeprefix("slow")) / SLEEP


@on_brokers()
async def test_a_slow_consumer_keeps_its_memory_bounded(
    broker: Broker, url: str, prefix: str, tmp_path: Path
) -> None:
    full = with_query(url, prefix=prefix, **broker.options)
    bus = Choreography(from_url(full))
    backlog: dict[str, int] = {}
    with anyio.fail_after(WATCH_FOR + 3 * broker.wait + 20):
        async with (
            worker(
                full,
                sleep=SLEEP,
                concurrencies=CONCURRENCIES,
                stderr=tmp_path / "stderr",
                ready_within=broker.wait + 10,
            ) as consumer,
            bus,
        ):
            groups = consumer.groups
            assert sorted(groups) == ["slow1", "slow4"]
            start = time.monotonic()

            async def watch_backlog() -> None:
                while True:
                    for service, (topic, group) in groups.items():
                        now = await bus.transport.backlog(topic, group)
                        backlog[service] = max(backlog.get(service, 0), now)
                    await anyio.sleep(0.25)

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_backlog)
                published = await flood(bus, seconds=PUBLISH_FOR, events=EVENTS, pad=PAD)
                await anyio.sleep(WATCH_FOR - (time.monotonic() - start))
                tg.cancel_scope.cancel()
            final = await consumer.stop()
            left = {
                service: await bus.transport.backlog(topic, group)
                for service, (topic, group) in groups.items()
            }
    samples = consumer.samples
    growth = consumer.peak_rss - consumer.ready["rss"]
    bound = RSS_BOUND.get(broker.name, RSS_DEFAULT)
    trend = [round(s["rss"] / MIB, 1) for s in samples]
    assert growth < bound, f"the consumer grew by {growth / MIB:.1f} MiB: {trend}"
    for service in groups:
        # Thousands waited at the broker, and the consumer took them at its handlers' pace.
        assert backlog[service] >= QUEUED, (service, backlog, published)
        handled = final["handled"][service]
        slack = UNCOUNTED.get(broker.name, 0)
        counted = handled + left[service]
        assert published - slack <= counted <= published, (service, handled, left, published)
        first = next(s for s in samples if s["t"] >= 1.0)
        last = samples[-1]
        rate = (last["handled"][service] - first["handled"][service]) / (last["t"] - first["t"])
        assert 0.3 * ceiling(service) < rate < 1.1 * ceiling(service), (service, rate)
        assert left[service] > 0  # the backlog was still there: the rate is the handlers'


async def test_in_memory_the_publisher_waits_for_the_slowest_group() -> None:
    max_buffer = 1000
    transport = InMemoryTransport(max_buffer=max_buffer, publish_timeout=10.0)
    bus, handled = slow_bus(transport, SLEEP, CONCURRENCIES)
    groups = {spec.service: (spec.topic, spec.consumer) for spec in bus.handlers}
    peak: dict[str, int] = dict.fromkeys(groups, 0)
    start_rss = peak_rss = rss()

    async def watch() -> None:
        nonlocal peak_rss
        while True:
            for service, (topic, group) in groups.items():
                peak[service] = max(peak[service], await transport.backlog(topic, group))
            peak_rss = max(peak_rss, rss())
            await anyio.sleep(0.02)

    with anyio.fail_after(20):
        async with bus, anyio.create_task_group() as tg:
            tg.start_soon(watch)
            published = await flood(bus, seconds=3.0, events=EVENTS, pad=PAD)
            tg.cancel_scope.cancel()
            left = {s: await transport.backlog(t, g) for s, (t, g) in groups.items()}
            done = dict(handled)
    # The slowest group filled to max_buffer (plus the batch its loop holds), and no more.
    assert max_buffer <= peak["slow1"] <= max_buffer + 64
    assert peak["slow4"] <= max_buffer + 64
    # So the publisher went at slow1's pace: far fewer than it could have published.
    # (What was handled and is not acked yet, at most a batch, is counted in both.)
    assert published <= done["slow1"] + left["slow1"] <= published + 64
    assert published <= max_buffer + 64 + 3.0 * 1.1 * ceiling("slow1")
    assert published < EVENTS
    assert peak_rss - start_rss < RSS_DEFAULT


async def test_in_memory_a_publish_fails_when_no_room_comes() -> None:
    max_buffer, timeout = 100, 0.2
    transport = InMemoryTransport(max_buffer=max_buffer, publish_timeout=timeout)
    bus = Choreography(transport)
    release = anyio.Event()

    @bus.on(Tick, service="stuck")
    async def stuck(event: Tick) -> None:
        await release.wait()

    published = 0
    with anyio.fail_after(20):
        async with bus:
            with pytest.raises(TransportError, match="max_buffer") as full:
                while published < 10 * max_buffer:
                    began = time.monotonic()
                    await bus.publish(Tick(n=published))
                    published += 1
            waited = time.monotonic() - began
            ((topic, group),) = [(s.topic, s.consumer) for s in bus.handlers]
            held = await transport.backlog(topic, group)
            release.set()
    # The consumer took one batch (up to 64) and stalls on its first message; the group
    # then filled up to max_buffer, and the next publish waited publish_timeout for room.
    assert max_buffer < published <= max_buffer + 64
    assert held == published
    assert timeout <= waited < timeout + 2
    assert "stuck" in str(full.value)
