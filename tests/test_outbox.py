"""The transactional outbox and the inbox in the handler's transaction, on SQLite."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

import anyio
import pytest

from flowkit import AlreadyHandled, Choreography, Context, Event, StoreError
from flowkit.stores import MemoryStore, SQLiteStore
from flowkit.transports import InMemoryTransport

from ._outbox_util import Numbered, RecordingTransport
from ._util import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from flowkit.stores import StateStore
    from flowkit.transports import Transport

pytestmark = pytest.mark.anyio


class OrderPlaced(Event):
    order_id: str


class Shipped(Event):
    order_id: str


def mail_bus(store: StateStore) -> tuple[Choreography, list[str]]:
    """A bus on ``store`` whose ``mail`` service records the order ids it gets."""
    bus = Choreography(InMemoryTransport(), store=store)
    got: list[str] = []

    @bus.on(OrderPlaced, service="mail")
    async def mail(event: OrderPlaced) -> None:
        got.append(event.order_id)

    return bus, got


def audit_bus(transport: Transport, store: StateStore) -> tuple[Choreography, dict[str, list[int]]]:
    """A bus whose ``audit`` service records the numbers it gets of each key, in order."""
    bus = Choreography(transport, store=store)
    got: dict[str, list[int]] = {}

    @bus.on(Numbered, service="audit")
    async def audit(event: Numbered) -> None:
        got.setdefault(event.key, []).append(event.n)

    return bus, got


async def check_two_relays(
    one: Choreography, two: Choreography, transport: RecordingTransport
) -> None:
    """``one`` and ``two`` relay the 400 events stored, ``two`` stopping after
    100: none is published twice, nor by both relays at once."""
    async with one.run(services=[]):
        async with two.run(services=[]):
            await wait_until(lambda: len(transport.published) >= 100, timeout=10)
        # the second stops cleanly (handing its lease over if it held it)...
        await wait_until(lambda: len({m for m, _, _ in transport.published}) == 400, timeout=20)
    assert transport.overlaps == 0
    ids = [m for m, _, _ in transport.published]
    assert len(ids) == len(set(ids)) == 400  # a clean hand-over publishes nothing twice


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "shop.db")


@pytest.fixture
def conn(db: str) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(db, isolation_level=None)
    yield connection
    connection.close()


async def _opened(db: str) -> None:
    """Create the store's tables (as any process opening the store does)."""
    async with SQLiteStore(db):
        pass


async def test_committed_events_are_delivered_and_rolled_back_ones_never(
    db: str, conn: sqlite3.Connection
) -> None:
    bus, got = mail_bus(SQLiteStore(db))
    async with bus:
        conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        for order_id, commit in (("a", True), ("b", False), ("c", True)):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO orders VALUES (?)", (order_id,))
            envelope = await bus.outbox.publish(conn, OrderPlaced(order_id=order_id), key=order_id)
            assert envelope.type == "OrderPlaced"
            conn.execute("COMMIT" if commit else "ROLLBACK")
        await wait_until(lambda: len(got) == 2)
        await anyio.sleep(0.1)
        await bus.wait_idle()
    assert sorted(got) == ["a", "c"]  # different keys: no order between them
    assert conn.execute("SELECT COUNT(*) FROM flowkit_outbox").fetchone()[0] == 0


async def test_wait_idle_waits_for_the_outbox_to_be_relayed(
    db: str, conn: sqlite3.Connection
) -> None:
    bus, got = mail_bus(SQLiteStore(db))
    async with bus:
        for i in range(50):
            conn.execute("BEGIN IMMEDIATE")
            await bus.outbox.publish(conn, OrderPlaced(order_id=f"o-{i}"))
            conn.execute("COMMIT")
        await bus.wait_idle(10)  # no polling: idle means the outbox was relayed too
        assert len(got) == 50


async def test_per_key_order_is_kept_over_1000_events_of_10_keys(
    db: str, conn: sqlite3.Connection
) -> None:
    bus, got = audit_bus(InMemoryTransport(), SQLiteStore(db))
    async with bus:
        for start in range(0, 100, 10):
            conn.execute("BEGIN IMMEDIATE")
            for n in range(start, start + 10):
                for k in range(10):
                    await bus.outbox.publish(conn, Numbered(key=f"k{k}", n=n), key=f"k{k}")
            conn.execute("COMMIT")
        await wait_until(lambda: sum(map(len, got.values())) == 1000, timeout=20)
    assert got == {f"k{k}": list(range(100)) for k in range(10)}


async def test_the_relay_runs_with_no_service_and_can_be_turned_off(
    db: str, conn: sqlite3.Connection
) -> None:
    await _opened(db)
    inner = InMemoryTransport()
    off = Choreography(RecordingTransport(inner), store=SQLiteStore(db), outbox_relay=False)
    conn.execute("BEGIN IMMEDIATE")
    await off.outbox.publish(conn, OrderPlaced(order_id="x"))  # the bus need not run
    conn.execute("COMMIT")
    async with off.run(services=[]):
        await anyio.sleep(0.2)
    assert off.transport.published == []  # type: ignore[attr-defined]
    on = Choreography(RecordingTransport(inner), store=SQLiteStore(db))
    async with on.run(services=[]):
        await wait_until(lambda: len(on.transport.published) == 1)  # type: ignore[attr-defined]


async def test_the_relay_keeps_the_rows_while_the_transport_is_down(
    db: str, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    transport = RecordingTransport(InMemoryTransport())
    bus = Choreography(transport, store=SQLiteStore(db))
    got: list[tuple[str, int]] = []

    @bus.on(Numbered, service="audit")
    async def audit(event: Numbered) -> None:
        got.append((event.key, event.n))

    async with bus:
        transport.go_down(0.5)
        conn.execute("BEGIN IMMEDIATE")
        for n in range(50):
            await bus.outbox.publish(conn, Numbered(key=f"k{n % 3}", n=n), key=f"k{n % 3}")
        conn.execute("COMMIT")
        await wait_until(lambda: len(got) == 50, timeout=10)
    assert transport.failed > 0
    for k in range(3):
        assert [n for key, n in got if key == f"k{k}"] == list(range(k, 50, 3))
    warnings = [r for r in caplog.records if "could not publish" in r.getMessage()]
    assert warnings
    assert all("Numbered" not in r.getMessage() for r in warnings)  # no payloads


async def test_two_relays_never_publish_one_event_twice_at_once(
    db: str, conn: sqlite3.Connection
) -> None:
    await _opened(db)
    transport = RecordingTransport(InMemoryTransport(), delay=0.002)
    one = Choreography(transport, store=SQLiteStore(db), outbox_lease=1.0)
    two = Choreography(transport, store=SQLiteStore(db), outbox_lease=1.0)
    conn.execute("BEGIN IMMEDIATE")
    for n in range(400):
        await one.outbox.publish(conn, Numbered(key=f"k{n % 7}", n=n), key=f"k{n % 7}")
    conn.execute("COMMIT")
    await check_two_relays(one, two, transport)


async def test_a_standby_relay_takes_over_when_the_holder_stops(
    db: str, conn: sqlite3.Connection
) -> None:
    await _opened(db)
    transport = RecordingTransport(InMemoryTransport())
    first = Choreography(transport, store=SQLiteStore(db))
    second = Choreography(transport, store=SQLiteStore(db))
    async with second.run(services=[]):
        async with first.run(services=[]):
            await anyio.sleep(0.2)
        conn.execute("BEGIN IMMEDIATE")
        await first.outbox.publish(conn, OrderPlaced(order_id="after"))
        conn.execute("COMMIT")
        with anyio.fail_after(5):  # well before first's 10 s lease would run out
            while not transport.published:
                await anyio.sleep(0.01)


async def test_a_handler_publishes_through_the_outbox_with_its_flow(
    db: str, conn: sqlite3.Connection
) -> None:
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(db))
    shipped: list[Context] = []

    @bus.on(OrderPlaced, service="shipping", emits=[Shipped])
    async def ship(event: OrderPlaced, ctx: Context) -> None:
        conn.execute("BEGIN IMMEDIATE")
        await ctx.outbox_publish(conn, Shipped(order_id=event.order_id), key=event.order_id)
        await ctx.record_handled(conn)
        conn.execute("COMMIT")

    @bus.on(Shipped, service="mail")
    async def mail(event: Shipped, ctx: Context) -> None:
        shipped.append(ctx)

    async with bus:
        sent = await bus.publish(OrderPlaced(order_id="o1"))
        await wait_until(lambda: len(shipped) == 1)
    assert shipped[0].envelope.correlation_id == sent.correlation_id
    assert shipped[0].envelope.causation_id == sent.message_id


async def test_record_handled_lets_a_duplicate_commit_no_effect(
    db: str, conn: sqlite3.Connection
) -> None:
    """A copy handled meanwhile elsewhere (its claim ran out): effects once."""
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(db))
    other = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE effects (message_id TEXT)")
    runs: list[int] = []

    @bus.on(OrderPlaced, service="billing")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        runs.append(ctx.attempt)
        # Another process handles a copy of the message and commits first.
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO effects VALUES (?)", (ctx.envelope.message_id,))
        await ctx.record_handled(other)
        other.execute("COMMIT")
        # This delivery's transaction then finds it done, and rolls back.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO effects VALUES (?)", (ctx.envelope.message_id,))
            await ctx.record_handled(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async with bus:
        await bus.publish(OrderPlaced(order_id="o1"))
        await wait_until(lambda: len(runs) == 1)
        await bus.wait_idle()
        assert await bus.dead_letters() == []
    other.close()
    assert runs == [1]  # acked: not retried
    assert conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0] == 1


async def test_already_handled_escaping_a_handler_acks_without_a_dead_letter(
    db: str, conn: sqlite3.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(db))
    runs = 0

    @bus.on(OrderPlaced, service="billing")
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        nonlocal runs
        runs += 1
        conn.execute("BEGIN IMMEDIATE")
        await ctx.record_handled(conn)
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        try:
            await ctx.record_handled(conn)
        finally:
            conn.execute("ROLLBACK")

    caplog.set_level(logging.INFO, "flowkit.bus")
    async with bus:
        sent = await bus.publish(OrderPlaced(order_id="o1"))
        await wait_until(lambda: runs == 1)
        await bus.wait_idle()
        assert await bus.dead_letters() == []
        await bus.publish(OrderPlaced(order_id="o1"), message_id=sent.message_id)
        await anyio.sleep(0.05)
        await bus.wait_idle()
    assert runs == 1
    assert any("already handled" in r.getMessage() for r in caplog.records)


async def test_the_outbox_refuses_a_store_without_one(conn: sqlite3.Connection) -> None:
    for store in (MemoryStore(), None, SQLiteStore(":memory:")):
        bus = Choreography(InMemoryTransport(), store=store)
        with pytest.raises(StoreError, match="SQLiteStore"):
            await bus.outbox.publish(conn, OrderPlaced(order_id="x"))


async def test_the_outbox_refuses_a_wrong_connection(db: str, tmp_path: Path) -> None:
    await _opened(db)
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(db))
    with pytest.raises(TypeError, match=r"sqlite3\.Connection"):
        await bus.outbox.publish(object(), OrderPlaced(order_id="x"))
    autocommit = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(StoreError, match="BEGIN"):
        await bus.outbox.publish(autocommit, OrderPlaced(order_id="x"))
    autocommit.close()
    elsewhere = sqlite3.connect(str(tmp_path / "other.db"), isolation_level=None)
    elsewhere.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreError, match="another database"):
        await bus.outbox.publish(elsewhere, OrderPlaced(order_id="x"))
    elsewhere.close()
    with pytest.raises(TypeError, match="Event"):
        await bus.outbox.publish(sqlite3.connect(db), "not an event")  # type: ignore[arg-type]


async def test_sqlite3_default_mode_opens_the_transaction_itself(db: str) -> None:
    """In sqlite3's default mode the INSERT begins the transaction: commit decides."""
    await _opened(db)
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(db), outbox_relay=False)
    legacy = sqlite3.connect(db)
    await bus.outbox.publish(legacy, OrderPlaced(order_id="x"))
    legacy.rollback()
    await bus.outbox.publish(legacy, OrderPlaced(order_id="y"))
    legacy.commit()
    assert legacy.execute("SELECT COUNT(*) FROM flowkit_outbox").fetchone()[0] == 1
    legacy.close()


async def test_record_handled_refuses_a_store_without_an_inbox_table(
    conn: sqlite3.Connection,
) -> None:
    bus = Choreography(InMemoryTransport(), store=MemoryStore())
    errors: list[BaseException] = []

    @bus.on(OrderPlaced, service="billing", retry=None)
    async def bill(event: OrderPlaced, ctx: Context) -> None:
        try:
            await ctx.record_handled(conn)
        except StoreError as exc:
            errors.append(exc)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o1"))
        await wait_until(lambda: len(errors) == 1)
    assert "SQLiteStore or PostgresStore" in str(errors[0])
    assert not isinstance(errors[0], AlreadyHandled)
