"""The outbox relay's throughput against raw publishing on the same transport, same run.

Run with ``python -m benchmarks bench_outbox`` or ``python -m benchmarks.bench_outbox
[--events 20000] [--keys 16] [--repeat 3] [--postgres URL] [--redis URL]``.

For each store (SQLite always; PostgreSQL with ``--postgres`` or
``$FLOWKIT_POSTGRES_URL``) and each transport (in-memory always; Redis with
``--redis`` or ``$FLOWKIT_REDIS_URL``) it reports:

* **raw**: events/s of ``transport.publish`` itself, the same pre-encoded
  bodies, one task per key publishing its events in order (as the relay does);
* **relay**: events/s from the commit of one transaction holding all the
  events to the transport having taken the last of them, with a relay
  already running (``bus.run(services=[])``);
* **ratio**: relay / raw, taken within the run;
* **write**: events/s of ``bus.outbox.publish`` into that transaction, its
  commit included (the cost on the user's side; one awaited INSERT per event).

With no subscriber, the in-memory transport takes a publish and drops it: its
raw figure is the ceiling of a publish call, and the ratio the relay's whole
overhead (reading, encoding nothing, deleting, the lease).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from flowkit import Choreography, Event
from flowkit._events import encode
from flowkit.stores import SQLiteStore
from flowkit.transports import InMemoryTransport
from flowkit.transports import from_url as transport_from_url

from ._report import report

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from flowkit.stores import StateStore
    from flowkit.transports import Transport


class OrderPlaced(Event):
    order_id: str
    amount: int
    key: str


def _event(n: int, keys: int) -> OrderPlaced:
    return OrderPlaced(order_id=f"o-{n}", amount=4200 + n, key=f"k{n % keys}")


class Counting:
    """Passes publishes to ``inner`` and tells when ``target`` of them were taken."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.count = 0
        self.target = -1
        self.done: anyio.Event | None = None

    def expect(self, target: int) -> anyio.Event:
        self.count, self.target, self.done = 0, target, anyio.Event()
        return self.done

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    async def publish(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> None:
        await self.inner.publish(topic, body, headers, key=key, group=group)
        self.count += 1
        if self.count == self.target and self.done is not None:
            self.done.set()

    async def subscribe(self, topic: str, group: str, *, durable: bool = True) -> Any:
        return await self.inner.subscribe(topic, group, durable=durable)

    async def backlog(self, topic: str, group: str) -> int:
        return await self.inner.backlog(topic, group)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> Counting:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.inner.__aexit__(*exc)  # type: ignore[arg-type]


async def raw_rate(transport: Counting, events: int, keys: int) -> float:
    """Events/s of publishing the encoded bodies straight to the transport."""
    lanes: dict[str, list[bytes]] = {}
    for n in range(events):
        event = _event(n, keys)
        lanes.setdefault(event.key, []).append(encode(event)[1])
    done = transport.expect(events)
    start = time.perf_counter()

    async def lane(key: str, bodies: list[bytes]) -> None:
        for body in bodies:
            await transport.publish("OrderPlaced", body, key=key)

    async with anyio.create_task_group() as group:
        for key, bodies in lanes.items():
            group.start_soon(lane, key, bodies)
    await done.wait()
    return events / (time.perf_counter() - start)


async def relay_rate(
    transport: Counting,
    store: StateStore,
    write: Callable[[Choreography, list[OrderPlaced]], Any],
    events: int,
    keys: int,
) -> tuple[float, float]:
    """(relay events/s from commit to transport, outbox.publish events/s)."""
    bus = Choreography(transport, store=store)
    batch = [_event(n, keys) for n in range(events)]
    async with bus.run(services=[]):
        await anyio.sleep(0.2)  # the relay holds its lease
        done = transport.expect(events)
        writing = time.perf_counter()
        committed = await write(bus, batch)
        written = events / (committed - writing)
        await done.wait()
        relayed = events / (time.perf_counter() - committed)
    return relayed, written


def sqlite_writer(path: str) -> Callable[[Choreography, list[OrderPlaced]], Any]:
    async def write(bus: Choreography, batch: list[OrderPlaced]) -> float:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for event in batch:
                await bus.outbox.publish(conn, event, key=event.key)
            conn.execute("COMMIT")
            return time.perf_counter()
        finally:
            conn.close()

    return write


def postgres_writer(url: str) -> Callable[[Choreography, list[OrderPlaced]], Any]:
    async def write(bus: Choreography, batch: list[OrderPlaced]) -> float:
        import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                for event in batch:
                    await bus.outbox.publish(conn, event, key=event.key)
            return time.perf_counter()
        finally:
            await conn.close()

    return write


async def _clean_redis(url: str, prefix: str) -> None:
    import redis.asyncio as redis  # type: ignore[import-untyped,import-not-found,unused-ignore]

    client = redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def measure(args: argparse.Namespace, tmp: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    transports: list[str] = ["memory"] + (["redis"] if args.redis else [])
    stores: list[str] = ["sqlite"] + (["postgresql"] if args.postgres else [])
    for store_kind in stores:
        for transport_kind in transports:
            raws, relays, writes = [], [], []
            for run in range(args.repeat):
                prefix = f"bench-outbox-{uuid.uuid4().hex[:8]}"
                inner: Transport = (
                    InMemoryTransport(max_buffer=args.events + 1)
                    if transport_kind == "memory"
                    else transport_from_url(f"{args.redis}?prefix={prefix}")
                )
                transport = Counting(inner)
                store: StateStore
                if store_kind == "sqlite":
                    path = os.path.join(tmp, f"outbox-{run}-{transport_kind}.db")
                    store = SQLiteStore(path)
                    write = sqlite_writer(path)
                else:
                    from flowkit.stores._postgres import PostgresStore

                    schema = f"bench_outbox_{uuid.uuid4().hex[:8]}"
                    store = PostgresStore(args.postgres, schema=schema)
                    write = postgres_writer(args.postgres)
                try:
                    async with transport:
                        raws.append(await raw_rate(transport, args.events, args.keys))
                    relayed, written = await relay_rate(
                        transport, store, write, args.events, args.keys
                    )
                    relays.append(relayed)
                    writes.append(written)
                finally:
                    if transport_kind == "redis":
                        await _clean_redis(args.redis, prefix)
                    if store_kind == "postgresql":
                        await _drop_schema(args.postgres, schema)
            raw, relay = statistics.median(raws), statistics.median(relays)
            rows.append(
                {
                    "store": store_kind,
                    "transport": transport_kind,
                    "events": args.events,
                    "raw_per_s": raw,
                    "relay_per_s": relay,
                    "ratio": statistics.median(r / w for r, w in zip(relays, raws, strict=True)),
                    "write_per_s": statistics.median(writes),
                }
            )
    return rows


async def _drop_schema(url: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per measure")
    parser.add_argument("--keys", type=int, default=16, help="ordering keys")
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("FLOWKIT_POSTGRES_URL"),
        help="postgresql:// URL (default: $FLOWKIT_POSTGRES_URL; skipped without)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("FLOWKIT_REDIS_URL"),
        help="redis:// URL (default: $FLOWKIT_REDIS_URL; skipped without)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(measure(args, tmp))
    report(
        "outbox",
        rows,
        {
            "backend": "asyncio",
            "keys": args.keys,
            "statistic": f"median of {args.repeat}; ratio = median of per-run relay/raw",
            "write": "outbox.publish of every event into one transaction, commit included",
            "sqlite": "WAL, synchronous=NORMAL",
        },
    )


if __name__ == "__main__":
    cli()
