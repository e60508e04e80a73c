"""OpenTelemetry's overhead: the in-memory fan-out of ``bench_bus`` and the Redis
end-to-end run of ``bench_redis``, each without and with the OpenTelemetry
observer, in the same run.

Variants, each repetition running them back to back:

- **off**: no OpenTelemetry observer (the bus as ``bench_bus`` and
  ``bench_redis`` measure it);
- **API, no SDK**: ``OpenTelemetry()`` with OpenTelemetry installed and no
  provider set, what a service gets when nothing exports;
- **SDK, no processor**: an SDK ``TracerProvider`` with no span processor and a
  ``MeterProvider`` with no reader: spans and measurements are made, then dropped;
- **SDK, in-memory exporter**: every span kept (tracing fully on), for scale.

Two ratios to **off** are reported: ``best_vs_off``, the best run of a variant
over the best run of **off** (other processes only ever slow a run down, so the
best runs are the least disturbed: as ``timeit`` advises), and ``median_vs_off``,
the median of the per-repetition ratios. Target: the "API, no SDK" variant's
``best_vs_off`` >= 0.97 (overhead <= 3%) on both. The Redis part needs a
server: ``--redis URL`` or ``FLOWKIT_REDIS_URL``; without one it is left out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from typing import TYPE_CHECKING, Any

from ._e2e import IN_FLIGHT, flowkit_run
from ._report import report
from .bench_bus import SERVICES, flowkit_fanout, payloads

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from flowkit import BusObserver

TARGET = 0.97


def observer_sets() -> dict[str, Callable[[], list[BusObserver]]]:
    """The variants' observers, made anew for each run."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flowkit.observability.otel import OpenTelemetry

    def exporting() -> list[BusObserver]:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        return [OpenTelemetry(tracer_provider=provider, meter_provider=MeterProvider())]

    return {
        "off": list,
        "API, no SDK": lambda: [OpenTelemetry()],
        "SDK, no processor": lambda: [
            OpenTelemetry(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
        ],
        "SDK, in-memory exporter": exporting,
    }


async def measure(
    title: str,
    run: Callable[[list[BusObserver]], Awaitable[float]],
    repeat: int,
    unit: str,
) -> tuple[list[dict[str, Any]], float]:
    """Run every variant ``repeat`` times; the rows, and the no-SDK variant's best ratio."""
    variants = observer_sets()
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeat):
        for name, make in variants.items():
            rates[name].append(await run(make()))
    off = rates["off"]
    rows = []
    for name, values in rates.items():
        rows.append(
            {
                "variant": f"{title}: {name}",
                f"best_{unit}": max(values),
                "best_vs_off": max(values) / max(off),
                "median_vs_off": statistics.median(x / y for x, y in zip(values, off, strict=True)),
                "per_run": ", ".join(f"{x / y:.3f}" for x, y in zip(values, off, strict=True)),
            }
        )
    return rows, max(rates["API, no SDK"]) / max(off)


async def main(events: int, messages: int, repeat: int, redis: str | None) -> None:
    fanout = payloads(events)

    async def in_memory(observers: list[BusObserver]) -> float:
        return await flowkit_fanout(fanout, observers)

    rows, memory_ratio = await measure("in-memory fan-out", in_memory, repeat, "per_s")
    notes: dict[str, Any] = {
        "events": events,
        "services": len(SERVICES),
        "repeat": repeat,
        "statistic": "best run of each variant; best over best, and median per-run ratio",
        "target_vs_off": TARGET,
        "in_memory_target_met": memory_ratio >= TARGET,
    }
    if redis:
        from flowkit.transports import from_url

        async def end_to_end(observers: list[BusObserver]) -> float:
            rate, _ = await flowkit_run(from_url(redis), messages, IN_FLIGHT, observers=observers)
            return rate

        redis_rows, redis_ratio = await measure(
            f"Redis end to end, {IN_FLIGHT} in flight", end_to_end, repeat, "per_s"
        )
        rows += redis_rows
        notes["messages"] = messages
        notes["redis_target_met"] = redis_ratio >= TARGET
    else:
        notes["redis"] = "left out: no --redis URL and no FLOWKIT_REDIS_URL"
    report("otel_overhead", rows, notes)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--redis", metavar="URL", default=os.environ.get("FLOWKIT_REDIS_URL"))
    args = parser.parse_args(argv)
    asyncio.run(main(args.events, args.messages, args.repeat, args.redis))


if __name__ == "__main__":
    cli()
