"""The end-to-end harness of the broker benchmarks (``bench_redis``, ``bench_rabbitmq``,
``bench_nats``, ``bench_kafka``).

Each of them measures, in one run and against one server, the broker's raw client with
its best batching, FastStream and flowkit: every variant publishes N small JSON
messages (an ``OrderPlaced``), consumes them in the same process and is timed from the
first publish to the last message handled. Each message carries its publish time
(``sent``), so the handler records the end-to-end latency (p50, p99). A benchmark
module keeps only what is its broker's own: the raw client, FastStream's broker and
subscriber, the transport's URL, the targets; this module runs the rest and prints the
results (JSON, then a table).

Every broker benchmark takes ``--messages`` (20,000 by default) and ``--repeat`` (3);
a quick check of one, with the servers of ``scripts/brokers.sh``::

    eval "$(bash scripts/brokers.sh env)"
    .venv-bench/bin/python -m benchmarks.bench_redis --messages 1000 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import TYPE_CHECKING, Any

from ._report import report

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from flowkit import BusObserver
    from flowkit.transports import Transport

    # One variant's run: (messages/s, its latencies).
    Variant = Callable[[], Awaitable[tuple[float, "Latencies"]]]

N = 20_000
IN_FLIGHT = 100
# The "sent" time of a message a variant waits for before it starts the clock (a Kafka
# consumer group's join takes seconds); it is no measure.
WARM_UP = -1.0


class Latencies:
    """End-to-end latencies, when the last message arrived, and the warm-up's arrival."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: list[float] = []
        self.done = asyncio.Event()
        self.warm = asyncio.Event()

    def record(self, sent: float) -> None:
        if sent == WARM_UP:
            self.warm.set()
            return
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


# -- FastStream --------------------------------------------------------------------


async def faststream_run(
    broker: Any,
    subscribe: Callable[[Callable[[dict[str, Any]], Awaitable[None]]], object],
    publish: Callable[[dict[str, Any]], Awaitable[object]],
    n: int,
    in_flight: int,
    *,
    warm_up: bool = False,
) -> tuple[float, Latencies]:
    """Publish ``n`` messages through a FastStream ``broker`` and handle them.

    Args:
        broker: FastStream's broker, not started.
        subscribe: registers the handler it is given as the broker's subscriber.
        publish: publishes one message (a dict) with the broker.
        n: how many messages.
        in_flight: at most this many publishes awaited at once.
        warm_up: first send one message through and wait for it (the clock starts after).

    Returns:
        Messages/s from the first publish to the last message handled, and the latencies.
    """
    latencies = Latencies(n)

    async def handle(message: dict[str, Any]) -> None:
        latencies.record(message["sent"])

    subscribe(handle)

    async with broker:
        await broker.start()
        if warm_up:
            await publish({**payload(0), "sent": WARM_UP})
            await latencies.warm.wait()
        start = time.perf_counter()

        async def one(i: int) -> None:
            await publish({**payload(i), "sent": time.perf_counter()})

        await publish_all(n, in_flight, one)
        await latencies.done.wait()
        elapsed = time.perf_counter() - start
    return n / elapsed, latencies


# -- flowkit -----------------------------------------------------------------------


async def flowkit_run(
    transport: Transport,
    n: int,
    in_flight: int,
    *,
    warm_up: bool = False,
    before_close: Callable[[], object] | None = None,
    observers: Sequence[BusObserver] = (),
) -> tuple[float, Latencies]:
    """Publish ``n`` events with a ``Choreography`` on ``transport`` and handle them.

    Args:
        transport: the transport, not open.
        n: how many events.
        in_flight: at most this many publishes awaited at once.
        warm_up: first send one event through and wait for it (the clock starts after).
        before_close: called once the last event is handled, before the bus closes.
        observers: the bus's observers.

    Returns:
        Events/s from the first publish to the last event handled, and the latencies.
    """
    from flowkit import Choreography, Event

    class OrderPlaced(Event, type_name=f"bench.OrderPlaced.{uuid.uuid4().hex}"):
        order_id: str
        user_email: str
        total: float
        sent: float

    bus = Choreography(transport, observers=observers)
    latencies = Latencies(n)

    @bus.on(OrderPlaced, service="bench", name="handle")
    async def handle(event: OrderPlaced) -> None:
        latencies.record(event.sent)

    async with bus:
        if warm_up:
            await bus.publish(OrderPlaced(**payload(0), sent=WARM_UP))
            await latencies.warm.wait()
        start = time.perf_counter()

        async def publish(i: int) -> None:
            await bus.publish(OrderPlaced(**payload(i), sent=time.perf_counter()))

        await publish_all(n, in_flight, publish)
        await latencies.done.wait()
        elapsed = time.perf_counter() - start
        if before_close is not None:
            before_close()
    return n / elapsed, latencies


# -- the run -----------------------------------------------------------------------


def in_flight_modes(
    label: str, run: Callable[[int], Awaitable[tuple[float, Latencies]]]
) -> dict[str, Variant]:
    """Two variants of ``run``: one publish awaited at a time, then up to 100 in flight."""
    return {
        f"{label}, 1 publish at a time": lambda: run(1),
        f"{label}, up to {IN_FLIGHT} in flight": lambda: run(IN_FLIGHT),
    }


async def compare(
    benchmark: str,
    *,
    raw: tuple[str, Variant],
    faststream: dict[str, Variant],
    flowkit: dict[str, Variant],
    n: int,
    repeat: int,
    vs_raw: float,
    vs_faststream_best: float,
    notes: dict[str, Any] | None = None,
) -> None:
    """Run every variant ``repeat`` times, in turn, and report the medians.

    Args:
        benchmark: the report's name.
        raw: the raw client's variant, with its label; the ``x_raw`` column's base.
        faststream: FastStream's variants; the best of them is the one compared.
        flowkit: flowkit's variants; the best of them is the one compared.
        n: messages per variant (a note of the report).
        repeat: how many times each variant runs.
        vs_raw: the target of flowkit's best against raw.
        vs_faststream_best: the target of flowkit's best against FastStream's best.
        notes: more notes of the report, after ``messages`` and ``repeat``.
    """
    variants = {raw[0]: raw[1], **faststream, **flowkit}
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
    raw_rate = rate[raw[0]]
    fs_best = max(rate[name] for name in faststream)
    fk_best = max(rate[name] for name in flowkit)
    report(
        benchmark,
        [
            {
                "variant": name,
                "msgs_per_s": rate[name],
                "x_raw": rate[name] / raw_rate,
                "p50_ms": statistics.median(p50[name]),
                "p99_ms": statistics.median(p99[name]),
            }
            for name in variants
        ],
        {
            "messages": n,
            "repeat": repeat,
            **(notes or {}),
            "statistic": "median of the repetitions",
            "flowkit_best_vs_raw": fk_best / raw_rate,
            "flowkit_best_vs_faststream_best": fk_best / fs_best,
            "targets": {"vs_raw": vs_raw, "vs_faststream_best": vs_faststream_best},
            "targets_met": {
                "vs_raw": fk_best / raw_rate >= vs_raw,
                "vs_faststream_best": fk_best / fs_best >= vs_faststream_best,
            },
        },
    )


def parse_args(
    argv: list[str] | None,
    description: str | None,
    *,
    broker: str,
    env: str,
    start: str,
    more: Callable[[argparse.ArgumentParser], object] | None = None,
) -> argparse.Namespace:
    """The command line of a broker benchmark: ``--<broker> URL``, ``--messages``, ``--repeat``.

    Args:
        argv: the arguments (``None``: the process's).
        description: the help's description (the module's docstring).
        broker: the URL option's name; its default is the environment variable ``env``.
        env: the environment variable of the server's URL.
        start: how to get a server, said when there is no URL.
        more: adds the benchmark's own options to the parser.

    Returns:
        The arguments; the server's URL is ``url``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(f"--{broker}", dest="url", metavar="URL", default=os.environ.get(env))
    parser.add_argument("--messages", type=int, default=N)
    parser.add_argument("--repeat", type=int, default=3)
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(f"give --{broker} URL or set {env} ({start})")
    return args
