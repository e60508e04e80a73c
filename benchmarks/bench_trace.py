"""The flow trace's overhead: the in-memory fan-out of ``bench_bus`` (events to 3
services on the in-memory transport) with a store, tracing to it on and off, in
the same run.

With a store every handling claims the message in the inbox, so the bus with
tracing off is the bus with a store as it was; tracing on adds an entry per
publish and per handling, buffered and written in batches to the same store.
Two stores:

- ``MemoryStore``: the trace is kept in memory, the cost is the recording;
- ``SQLiteStore`` (a file, ``synchronous=NORMAL``): the trace's batches share
  the writer thread's transactions with the inbox claims.

Each repetition runs off then on, for each store; the figure is the median of
the per-repetition ratios of the on rate to the off rate, by the wall clock
(``ratio``) and by the CPU time of the process, its threads included
(``cpu_ratio``, which holds up better on a machine that others use too).
Target: >= 0.85 (overhead <= 15%). The recorder's counts say whether it kept
up (nothing dropped) and wrote every entry.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowkit.stores import MemoryStore, SQLiteStore

from ._report import report
from .bench_bus import SERVICES, OrderPlaced, fanout_bus, payloads

if TYPE_CHECKING:
    from collections.abc import Callable

    from flowkit.stores import StateStore

TARGET = 0.85


async def fanout(
    events: list[OrderPlaced], store: StateStore, *, trace: bool
) -> tuple[float, float, dict[str, int]]:
    """The fan-out through a bus with ``store``: events per second of the wall
    clock and of CPU time, and the recorder's counts (written, dropped,
    failed) when tracing."""
    n = len(events)
    bus, done = fanout_bus(n, store=store, trace=trace)
    async with bus:
        recorder = bus.trace_recorder
        start, cpu = time.perf_counter(), time.process_time()
        for event in events:
            await bus.publish(event)
        await done.wait()
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    stats: dict[str, int] = {}
    if recorder is not None:
        stats = {
            "written": recorder.written,
            "dropped": recorder.dropped,
            "failed": recorder.failed,
        }
    return n / elapsed, n / used, stats


async def main(n: int, repeat: int) -> None:
    events = payloads(n)
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        files = iter(range(1_000_000))
        stores: dict[str, Callable[[], StateStore]] = {
            "MemoryStore": MemoryStore,
            "SQLiteStore": lambda: SQLiteStore(Path(tmp) / f"trace-{next(files)}.db"),
        }
        rates: dict[tuple[str, bool], list[float]] = {
            (name, on): [] for name in stores for on in (False, True)
        }
        cpu: dict[tuple[str, bool], list[float]] = {key: [] for key in rates}
        kept: dict[str, dict[str, int]] = {}
        for _ in range(repeat):
            for name, make in stores.items():
                for on in (False, True):
                    rate, cpu_rate, stats = await fanout(events, make(), trace=on)
                    rates[name, on].append(rate)
                    cpu[name, on].append(cpu_rate)
                    if on:
                        kept[name] = {k: kept.get(name, {}).get(k, 0) + v for k, v in stats.items()}
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {
        "events": n,
        "services": len(SERVICES),
        "repeat": repeat,
        "entries_per_event": 1 + len(SERVICES),
        "statistic": "median events/s; median of the per-repetition on/off ratios",
        "target_ratio": TARGET,
    }
    for name in stores:
        untraced, traced = rates[name, False], rates[name, True]
        ratio = statistics.median(y / x for x, y in zip(untraced, traced, strict=True))
        cpu_off, cpu_on = cpu[name, False], cpu[name, True]
        cpu_ratio = statistics.median(y / x for x, y in zip(cpu_off, cpu_on, strict=True))
        rows.append(
            {
                "variant": f"{name}, trace off",
                "events_per_s": statistics.median(untraced),
                "ratio": 1.0,
                "cpu_ratio": 1.0,
            }
        )
        rows.append(
            {
                "variant": f"{name}, trace on",
                "events_per_s": statistics.median(traced),
                "ratio": ratio,
                "cpu_ratio": cpu_ratio,
            }
        )
        notes[f"{name}_ratios"] = [round(y / x, 3) for x, y in zip(untraced, traced, strict=True)]
        notes[f"{name}_cpu_ratios"] = [
            round(y / x, 3) for x, y in zip(cpu_off, cpu_on, strict=True)
        ]
        notes[f"{name}_target_met"] = ratio >= TARGET
        notes[f"{name}_cpu_target_met"] = cpu_ratio >= TARGET
        notes[f"{name}_recorder"] = kept[name]
    report("trace_overhead", rows, notes)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(main(args.events, args.repeat))


if __name__ == "__main__":
    cli()
