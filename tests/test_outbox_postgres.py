"""The transactional outbox and the inbox in the handler's transaction, on PostgreSQL."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from flowkit import AlreadyHandled, Choreography, Context, StoreError
from flowkit.stores import SQLiteStore
from flowkit.stores._outbox import outbox_of
from flowkit.stores._postgres import PostgresStore
from flowkit.transports import InMemoryTransport

from ._outbox_util import Numbered, RecordingTransport
from ._util import wait_until
from .brokers import drop_schema
from .brokers import postgres_url as postgres_url
from .brokers import redis_url as redis_url
from .test_outbox import OrderPlaced, audit_bus, check_two_relays, mail_bus
from .test_store_postgres import anyio_backend as anyio_backend

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio


@pytest.fixture
async def schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema of its own for one test, dropped afterwards."""
    name = f"flowkit_test_{uuid.uuid4().hex[:12]}"
    async with PostgresStore(postgres_url, schema=name):
        pass
    yield name
    await drop_schema(postgres_url, name)


@pytest.fixture
async def conn(postgres_url: str) -> AsyncIterator[Any]:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    connection = await asyncpg.connect(postgres_url)
    yield connection
    await connection.close()


async def test_committed_events_are_delivered_and_rolled_back_ones_never(
    postgres_url: str, schema: str, conn: Any
) -> None:
    bus, got = mail_bus(PostgresStore(postgres_url, schema=schema))
    async with bus:
        await conn.execute(f'CREATE TABLE "{schema}".orders (id text PRIMARY KEY)')
        for order_id, commit in (("a", True), ("b", False), ("c", True)):
            tx = conn.transaction()
            await tx.start()
            await conn.execute(f'INSERT INTO "{schema}".orders VALUES ($1)', order_id)
            await bus.outbox.publish(conn, OrderPlaced(order_id=order_id), key=order_id)
            await (tx.commit() if commit else tx.rollback())
        await wait_until(lambda: len(got) == 2)
        await anyio.sleep(0.1)
        await bus.wait_idle()
    assert sorted(got) == ["a", "c"]
    assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".flowkit_outbox') == 0


async def test_a_notification_wakes_the_idle_relay_at_once(
    postgres_url: str, schema: str, conn: Any
) -> None:
    transport = RecordingTransport(InMemoryTransport())
    bus = Choreography(transport, store=PostgresStore(postgres_url, schema=schema))
    async with bus.run(services=[]):
        await anyio.sleep(2.5)  # the relay's polling has backed off to 1 s
        # Written from another bus object: no in-process wake-up, only NOTIFY.
        writer = Choreography(InMemoryTransport(), store=PostgresStore(postgres_url, schema=schema))
        async with conn.transaction():
            await writer.outbox.publish(conn, OrderPlaced(order_id="now"))
        committed = time.monotonic()
        await wait_until(lambda: bool(transport.published))
        assert time.monotonic() - committed < 0.5


async def test_per_key_order_is_kept_over_1000_events_of_10_keys(
    postgres_url: str, schema: str, conn: Any
) -> None:
    bus, got = audit_bus(InMemoryTransport(), PostgresStore(postgres_url, schema=schema))
    async with bus:
        for start in range(0, 100, 10):
            async with conn.transaction():
                for n in range(start, start + 10):
                    for k in range(10):
                        await bus.outbox.publish(conn, Numbered(key=f"k{k}", n=n), key=f"k{k}")
        await wait_until(lambda: sum(map(len, got.values())) == 1000, timeout=20)
    assert got == {f"k{k}": list(range(100)) for k in range(10)}


class _RollBack(Exception):
    pass


async def test_on_redis_too(postgres_url: str, schema: str, conn: Any, redis_url: str) -> None:
    from flowkit.transports import RedisTransport

    transport = RedisTransport(redis_url, prefix=f"outbox{uuid.uuid4().hex[:8]}")
    bus, got = audit_bus(transport, PostgresStore(postgres_url, schema=schema))
    async with bus:
        async with conn.transaction():
            for n in range(200):
                await bus.outbox.publish(conn, Numbered(key=f"k{n % 4}", n=n), key=f"k{n % 4}")
        with pytest.raises(_RollBack):
            async with conn.transaction():
                await bus.outbox.publish(conn, Numbered(key="k0", n=-1), key="k0")
                raise _RollBack
        await wait_until(lambda: sum(map(len, got.values())) == 200, timeout=20)
        await anyio.sleep(0.2)
    assert got == {f"k{k}": list(range(k, 200, 4)) for k in range(4)}


async def test_two_relays_never_publish_one_event_twice_at_once(
    postgres_url: str, schema: str, conn: Any
) -> None:
    transport = RecordingTransport(InMemoryTransport(), delay=0.002)
    one = Choreography(transport, store=PostgresStore(postgres_url, schema=schema))
    two = Choreography(transport, store=PostgresStore(postgres_url, schema=schema))
    async with conn.transaction():
        for n in range(400):
            await one.outbox.publish(conn, Numbered(key=f"k{n % 7}", n=n), key=f"k{n % 7}")
    await check_two_relays(one, two, transport)


async def test_record_handled_concurrent_duplicates_commit_once(
    postgres_url: str, schema: str
) -> None:
    import asyncpg

    store = PostgresStore(postgres_url, schema=schema)
    ops = outbox_of(store)
    first = await asyncpg.connect(postgres_url)
    second = await asyncpg.connect(postgres_url)
    try:
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        assert await ops.record_handled(first, "billing:bill", "m1")
        results: list[bool] = []

        async def duplicate() -> None:
            results.append(await ops.record_handled(second, "billing:bill", "m1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(duplicate)
            await anyio.sleep(0.2)
            assert results == []  # waits on the first transaction's row lock
            await tx1.commit()
        assert results == [False]  # then sees it done
        await tx2.rollback()
    finally:
        await first.close()
        await second.close()


async def test_record_handled_in_a_handler_effects_once(
    postgres_url: str, schema: str, conn: Any
) -> None:
    """A copy handled meanwhile elsewhere (its claim ran out): effects once."""
    import asyncpg

    pool = await asyncpg.create_pool(postgres_url, min_size=2, max_size=4)
    bus = Choreography(InMemoryTransport(), store=PostgresStore(postgres_url, schema=schema))
    await conn.execute(f'CREATE TABLE "{schema}".effects (message_id text)')
    insert = f'INSERT INTO "{schema}".effects VALUES ($1)'
    runs: list[int] = []

    @bus.on(OrderPlaced, service="billing")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        runs.append(ctx.attempt)
        async with pool.acquire() as other, other.transaction():  # the other copy, first
            await other.execute(insert, ctx.envelope.message_id)
            await ctx.record_handled(other)
        async with pool.acquire() as db, db.transaction():
            await db.execute(insert, ctx.envelope.message_id)
            await ctx.record_handled(db)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o1"))
        await wait_until(lambda: len(runs) == 1)
        await bus.wait_idle()
        assert await bus.dead_letters() == []
    await pool.close()
    assert runs == [1]
    assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".effects') == 1


async def test_already_handled_acks_without_a_dead_letter(postgres_url: str, schema: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=2)
    bus = Choreography(InMemoryTransport(), store=PostgresStore(postgres_url, schema=schema))
    runs = 0
    raised: list[BaseException] = []

    @bus.on(OrderPlaced, service="billing")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        async with pool.acquire() as db:
            async with db.transaction():
                await ctx.record_handled(db)
            try:
                async with db.transaction():
                    await ctx.record_handled(db)
            except AlreadyHandled as exc:
                raised.append(exc)
                raise

    async with bus:
        await bus.publish(OrderPlaced(order_id="o1"))
        await wait_until(lambda: runs == 1)
        await bus.wait_idle()
        assert await bus.dead_letters() == []
    await pool.close()
    assert runs == 1 and len(raised) == 1


async def test_clear_errors(postgres_url: str, schema: str, conn: Any, tmp_path: Any) -> None:
    import sqlite3

    bus = Choreography(InMemoryTransport(), store=PostgresStore(postgres_url, schema=schema))
    with pytest.raises(StoreError, match=r"conn\.transaction"):
        await bus.outbox.publish(conn, OrderPlaced(order_id="x"))
    with pytest.raises(TypeError, match="asyncpg connection"):
        await bus.outbox.publish(sqlite3.connect(":memory:"), OrderPlaced(order_id="x"))
    sqlite_bus = Choreography(InMemoryTransport(), store=SQLiteStore(tmp_path / "x.db"))
    async with conn.transaction():
        with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
            await sqlite_bus.outbox.publish(conn, OrderPlaced(order_id="x"))


async def test_the_relay_outlasts_its_connections_being_killed(
    postgres_url: str, schema: str, conn: Any
) -> None:
    transport = RecordingTransport(InMemoryTransport())
    name = f"flowkit-test-{schema}"  # only this store's connections are killed
    store = PostgresStore(postgres_url, schema=schema, server_settings={"application_name": name})
    bus = Choreography(transport, store=store)
    async with bus.run(services=[]):
        async with conn.transaction():
            await bus.outbox.publish(conn, OrderPlaced(order_id="before"))
        await wait_until(lambda: len(transport.published) == 1)
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = $1",
            name,
        )
        assert killed >= 1
        async with conn.transaction():
            await bus.outbox.publish(conn, OrderPlaced(order_id="after"))
        with anyio.move_on_after(15):
            while len({m for m, _, _ in transport.published}) < 2:
                await anyio.sleep(0.01)
        assert len({m for m, _, _ in transport.published}) == 2, transport.published
