"""The outbox under faults: the transport down for a while, and the relay killed
(SIGKILL) mid-relay and started again, in another process.

After the restart every committed event is published at least once (the copies
are those in flight at the kill, which an inbox drops), in order per key, and
no event of a rolled-back transaction ever is.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from flowkit import Choreography
from flowkit.stores import SQLiteStore
from flowkit.transports import InMemoryTransport

from ._outbox_util import Numbered, first_seen_in_order, read_log
from .brokers import drop_schema
from .brokers import postgres_url as postgres_url
from .brokers import redis_url as redis_url
from .test_outbox import audit_bus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.abc import Process

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = str(Path(__file__).with_name("outbox_relay_worker.py"))
KEYS = 6


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _start_relay(
    store: str, transport: str, log: str, *, down: float, schema: str | None = None
) -> Process:
    command = [sys.executable, WORKER, store, transport, log, "--down", str(down)]
    command += ["--delay", "0.002", "--lease", "1.5"]
    if schema:
        command += ["--schema", schema]
    proc = await anyio.open_process(command)
    assert proc.stdout is not None
    with anyio.fail_after(20):
        line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 100)
    assert line == b"ready"
    return proc


def _kill(proc: Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)


class Writer:
    """Writes numbered events per key, committing some transactions and rolling others back."""

    def __init__(self, write: Callable[[list[Numbered], bool], Awaitable[None]]) -> None:
        self._write = write
        self.next = dict.fromkeys(range(KEYS), 0)
        self.committed: dict[str, list[int]] = {f"k{k}": [] for k in range(KEYS)}
        self.rolled_back = 0

    async def round(self, transactions: int) -> None:
        for t in range(transactions):
            commit = t % 4 != 3
            events = []
            for k in range(KEYS):
                for _ in range(5):
                    if commit:
                        events.append(Numbered(key=f"k{k}", n=self.next[k]))
                        self.committed[f"k{k}"].append(self.next[k])
                        self.next[k] += 1
                    else:
                        events.append(Numbered(key=f"k{k}", n=-1))
            await self._write(events, commit)
            if not commit:
                self.rolled_back += len(events)

    @property
    def total(self) -> int:
        return sum(map(len, self.committed.values()))


async def _wait_for(log: str, count: int, timeout: float) -> None:
    with anyio.fail_after(timeout):
        while len({m for m, _, _ in read_log(log)}) < count:
            await anyio.sleep(0.02)


async def _crash_and_restart(
    store: str, writer: Writer, log: str, schema: str | None = None, transport: str = "memory://"
) -> None:
    await writer.round(40)  # 30 committed transactions of 30 events, 10 rolled back
    first = await _start_relay(store, transport, log, down=1.0, schema=schema)
    try:
        with anyio.fail_after(30):
            while len(read_log(log)) < 200:
                await anyio.sleep(0.005)
        _kill(first)  # mid-relay: its lease is still held
    finally:
        _kill(first)
        await first.aclose()
    relayed_before = len(read_log(log))
    assert 200 <= relayed_before < writer.total
    await writer.round(20)
    second = await _start_relay(store, transport, log, down=0.5, schema=schema)
    try:
        await _wait_for(log, writer.total, timeout=60)
        await anyio.sleep(0.3)
    finally:
        _kill(second)
        await second.aclose()
    entries = read_log(log)
    assert all(n >= 0 for _, _, n in entries), "an event of a rolled-back transaction went out"
    assert first_seen_in_order(entries) == writer.committed
    duplicates = len(entries) - len({m for m, _, _ in entries})
    assert duplicates <= 256  # at most the batch in flight at the kill


async def test_sqlite_relay_killed_mid_relay_with_the_transport_down(tmp_path: Path) -> None:
    path = str(tmp_path / "shop.db")
    async with SQLiteStore(path):
        pass
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(path), outbox_relay=False)
    conn = sqlite3.connect(path, isolation_level=None)

    async def write(events: list[Numbered], commit: bool) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for event in events:
            await bus.outbox.publish(conn, event, key=event.key)
        conn.execute("COMMIT" if commit else "ROLLBACK")

    await _crash_and_restart(f"sqlite:///{path}", Writer(write), str(tmp_path / "log"))
    conn.close()


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    from flowkit.stores._postgres import PostgresStore

    name = f"flowkit_test_{uuid.uuid4().hex[:12]}"
    async with PostgresStore(postgres_url, schema=name):
        pass
    yield name
    await drop_schema(postgres_url, name)


async def _pg_writer(postgres_url: str, schema: str) -> tuple[Writer, Any]:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    from flowkit.stores._postgres import PostgresStore

    bus = Choreography(
        InMemoryTransport(), store=PostgresStore(postgres_url, schema=schema), outbox_relay=False
    )
    conn = await asyncpg.connect(postgres_url)

    async def write(events: list[Numbered], commit: bool) -> None:
        tx = conn.transaction()
        await tx.start()
        for event in events:
            await bus.outbox.publish(conn, event, key=event.key)
        await (tx.commit() if commit else tx.rollback())

    return Writer(write), conn


async def test_postgres_relay_killed_mid_relay_with_the_transport_down(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    writer, conn = await _pg_writer(postgres_url, pg_schema)
    try:
        await _crash_and_restart(postgres_url, writer, str(tmp_path / "log"), schema=pg_schema)
    finally:
        await conn.close()


async def test_on_redis_the_consumer_inbox_drops_the_copies(
    postgres_url: str, pg_schema: str, redis_url: str, tmp_path: Path
) -> None:
    """Killed mid-relay on real Redis: each committed event has its effect once."""
    transport = f"{redis_url}?prefix=outbox{uuid.uuid4().hex[:8]}"
    from flowkit.transports import from_url

    consumer, got = audit_bus(from_url(transport), SQLiteStore(tmp_path / "inbox.db"))
    writer, conn = await _pg_writer(postgres_url, pg_schema)
    try:
        async with consumer.run(services=["audit"]):
            await _crash_and_restart(
                postgres_url, writer, str(tmp_path / "log"), schema=pg_schema, transport=transport
            )
            with anyio.fail_after(30):
                while sum(map(len, got.values())) < writer.total:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.3)
            await consumer.wait_idle()
    finally:
        await conn.close()
    assert got == writer.committed  # once each, in order per key
