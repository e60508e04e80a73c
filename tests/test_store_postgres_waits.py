"""PostgresStore's waits beyond the conformance checks: the migration that added
them, a delivery racing a wait on one channel and key, cancel and checkpoint
rules, and the indexes their statements read (``FLOWKIT_POSTGRES_URL``)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from flowkit._errors import StoreError
from flowkit.stores import WorkflowRecord
from flowkit.stores._postgres import PostgresStore
from flowkit.stores._postgres import _ops as ops
from flowkit.stores._postgres import _schema as schema_module
from flowkit.stores._postgres import _waits as waits_module
from flowkit.stores._waits import WAITING, Delivery

from .brokers import postgres_url as postgres_url
from .test_store_postgres import anyio_backend as anyio_backend
from .test_store_postgres import fetch
from .test_store_postgres import schema as schema

pytestmark = pytest.mark.anyio

_LEASE = 30.0
_FAR = datetime(2999, 1, 1, tzinfo=UTC)


def _waiting(record: WorkflowRecord, **wait: Any) -> WorkflowRecord:
    return dataclasses.replace(record, status=WAITING, state={"waiting": True}, **wait)


async def _running(store: PostgresStore, workflow_id: str, name: str = "Order") -> WorkflowRecord:
    stored, _ = await store.create_workflow(
        WorkflowRecord(id=workflow_id, name=name, status="RUNNING", state={})
    )
    return stored


# -- migration ---------------------------------------------------------------------------


async def test_a_version_5_schema_gains_the_waits(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    tables = schema_module.Tables.of(schema)
    with monkeypatch.context() as patched:
        patched.setattr(schema_module, "SCHEMA_VERSION", 5)
        conn = await asyncpg.connect(postgres_url)
        try:
            assert await schema_module.migrate(conn, tables) == 5
            await conn.execute(
                f"INSERT INTO {tables.workflows} "
                "(id, name, status, version, state, created_at, updated_at) "
                "VALUES ('old', 'Order', 'RUNNING', 4, '{}'::jsonb, now(), now())"
            )
        finally:
            await conn.close()
    async with PostgresStore(postgres_url, schema=schema) as store:
        old = await store.load_workflow("old")
        assert (old.version, old.wake_at, old.wait_for, old.wait_key) == (4, None, None, None)
        parked = await store.save_workflow(
            _waiting(old, wake_at=_FAR, wait_for="signal:Go", wait_key="k")
        )
        assert (parked.wake_at, parked.wait_for, parked.wait_key) == (_FAR, "signal:Go", "k")
        delivery = await store.wait_ops().deliver("Order", "signal:Go", "k", "m1", {"go": 1})
        assert delivery == Delivery(stored=True, woken=("old",))
    versions = await fetch(postgres_url, f"SELECT version FROM {tables.versions} ORDER BY 1")
    assert [row["version"] for row in versions] == list(range(1, schema_module.SCHEMA_VERSION + 1))
    indexes = await fetch(
        postgres_url,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1",
        schema,
    )
    defs = {row["indexname"]: row["indexdef"] for row in indexes}
    assert "(name, wake_at) WHERE (status = 'WAITING'::text)" in defs["flowkit_workflows_wake"]
    assert (
        "(name, wait_for, wait_key) WHERE (status = 'WAITING'::text)"
        in (defs["flowkit_workflows_wait"])
    )
    assert (
        "(name, channel, key, message_id)"
        in defs["flowkit_mailbox_name_channel_key_message_id_key"]
    )
    assert "(name, channel, key, seq)" in defs["flowkit_mailbox_take"]
    assert "(created_at, seq)" in defs["flowkit_mailbox_created_at"]
    assert "(name, consumer) WHERE (consumer IS NOT NULL)" in defs["flowkit_mailbox_consumer"]


# -- the wait rules of the workflow operations ---------------------------------------------


async def test_waits_are_written_for_waiting_records_only(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        waits = store.wait_ops()
        created, _ = await store.create_workflow(
            WorkflowRecord(
                id="born-waiting",
                name="Order",
                status=WAITING,
                state={},
                wake_at=_FAR,
                wait_for="signal:Go",
                wait_key="k0",
            )
        )
        assert (created.wake_at, created.wait_for, created.wait_key) == (_FAR, "signal:Go", "k0")
        await waits.deliver("Order", "signal:Go", "k1", "m1", {})
        early, _ = await store.create_workflow(
            WorkflowRecord(
                id="early",
                name="Order",
                status=WAITING,
                state={},
                wake_at=_FAR,
                wait_for="signal:Go",
                wait_key="k1",
            )
        )
        assert early.wake_at is not None and early.wake_at < _FAR  # the message was there
        plain, _ = await store.create_workflow(
            WorkflowRecord(
                id="plain", name="Order", status="RUNNING", state={}, wake_at=_FAR, wait_for="x"
            )
        )
        assert (plain.wake_at, plain.wait_for, plain.wait_key) == (None, None, None)
        with pytest.raises(StoreError, match="wake_at must be a timezone-aware"):
            await store.create_workflow(
                WorkflowRecord("naive", "Order", WAITING, {}, wake_at=datetime(2030, 1, 1))
            )
        taken = await waits.take("Order", "signal:Go", "k1", "early:wait")
        assert taken is not None and taken.id == "m1"
        later = await store.save_workflow(
            _waiting(early, wake_at=None, wait_for="signal:Go", wait_key="k1")
        )
        assert later.wake_at is None  # the only message there is taken: no timer, not due
        rows = await fetch(
            postgres_url,
            f'SELECT id, wake_at, wait_for, wait_key FROM "{schema}".flowkit_workflows ORDER BY id',
        )
        assert [tuple(row) for row in rows] == [
            ("born-waiting", _FAR, "signal:Go", "k0"),
            ("early", None, "signal:Go", "k1"),
            ("plain", None, None, None),
        ]


async def test_cancel_requests_through_waiting_saves(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        record = await _running(store, "w")
        asked = await store.request_cancel("w")
        assert asked.cancel_requested and asked.wake_at is None  # RUNNING: not made due
        parked = await store.save_workflow(_waiting(asked, wake_at=_FAR))
        assert parked.cancel_requested  # a WAITING save keeps the request ...
        assert parked.wake_at is not None and parked.wake_at < _FAR  # ... and is due now
        [claimed] = await store.wait_ops().claim_due("Order", "p1", lease=_LEASE)
        assert claimed.cancel_requested
        assert await store.renew_leases("p1", ["w"], lease=_LEASE) == {"w": True}
        assert await store.claim_workflows("Order", "p2", lease=_LEASE) == []
        done = await store.save_workflow(
            dataclasses.replace(claimed, status="COMPENSATING", owner="p1"), lease=_LEASE
        )
        assert not done.cancel_requested  # any other status drops it
        assert record.version + 3 == done.version


async def test_next_wake_counts_by_the_server_clock(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        waits = store.wait_ops()
        record = await _running(store, "w")
        [row] = await fetch(postgres_url, "SELECT now() + interval '90 seconds' AS at")
        await store.save_workflow(_waiting(record, wake_at=row["at"]))
        wake = await waits.next_wake("Order")
        assert wake is not None and 85 < wake <= 90
        assert isinstance(wake, float)


# -- a delivery racing a wait -----------------------------------------------------------


async def test_a_delivery_and_a_wait_saved_at_once_never_miss_each_other(
    postgres_url: str, schema: str
) -> None:
    rounds = 60
    async with PostgresStore(postgres_url, schema=schema, max_size=4) as store:
        waits = store.wait_ops()
        records = [await _running(store, f"w{n:02}") for n in range(rounds)]
        for n, record in enumerate(records):
            parked = _waiting(record, wake_at=_FAR, wait_for="signal:Go", wait_key=f"k{n}")
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.save_workflow, parked)
                tg.start_soon(waits.deliver, "Order", "signal:Go", f"k{n}", "m", {"n": n})
        due = await waits.claim_due("Order", "p", lease=_LEASE, limit=rounds + 1)
        # Each wait found its message, or was woken by it: every one is due.
        assert sorted(r.id for r in due) == [r.id for r in records]


# -- the indexes the statements read --------------------------------------------------------


class _Explaining:
    """A connection that explains each statement instead of running it."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.plans: list[str] = []

    async def _explain(self, sql: str, *args: Any) -> None:
        rows = await self.conn.fetch(f"EXPLAIN {sql}", *args)
        self.plans.append("\n".join(row[0] for row in rows))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        await self._explain(sql, *args)
        return []

    async def fetchrow(self, sql: str, *args: Any) -> None:
        await self._explain(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> int:
        await self._explain(sql, *args)
        return 0


async def test_the_waits_read_their_indexes(postgres_url: str, schema: str) -> None:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    async with PostgresStore(postgres_url, schema=schema):
        pass
    tables = schema_module.Tables.of(schema)
    conn = await asyncpg.connect(postgres_url)
    try:
        # Many orchestrators, a third of their workflows waiting, most with a
        # timer; as many messages, half of them taken.
        await conn.execute(
            f"INSERT INTO {tables.workflows} (id, name, status, version, state, created_at, "
            "updated_at, wake_at, wait_for, wait_key) "
            "SELECT 'w' || g, 'N' || g % 50, CASE WHEN g % 3 = 0 THEN 'WAITING' "
            "ELSE 'COMPLETED' END, 1, '{}', now(), now(), "
            "CASE WHEN g % 3 = 0 THEN now() + g * interval '1 second' END, "
            "CASE WHEN g % 3 = 0 THEN 'signal:Go' END, CASE WHEN g % 3 = 0 THEN 'k' || g END "
            "FROM generate_series(1, 30000) AS g"
        )
        await conn.execute(
            f"INSERT INTO {tables.mailbox} (name, channel, key, message_id, body, consumer) "
            "SELECT 'N' || g % 50, 'signal:Go', 'k' || g, 'm' || g, '{}', "
            "CASE WHEN g % 2 = 0 THEN 'c' || g END FROM generate_series(1, 30000) AS g"
        )
        await conn.execute(f"ANALYZE {tables.workflows}")
        await conn.execute(f"ANALYZE {tables.mailbox}")
        explaining = _Explaining(conn)
        await waits_module.wait_next_wake(explaining, tables, "N3")
        await waits_module.wait_claim_due(explaining, tables, "N3", "p", _LEASE, 10, [])
        await waits_module.wait_take(explaining, tables, "N3", "signal:Go", "k3", "c")
        await waits_module.wait_drop(explaining, tables, "N3", "c6")
        await waits_module.wait_prune(explaining, tables, datetime.now(UTC), 10)
        next_wake, claim_due, take, drop, prune = explaining.plans
        assert "flowkit_workflows_wake" in next_wake and "Limit" in next_wake, next_wake
        assert "flowkit_workflows_wake" in claim_due, claim_due
        assert "flowkit_mailbox_take" in take, take
        assert "flowkit_mailbox_consumer" in drop, drop
        assert "flowkit_mailbox_created_at" in prune, prune
        woken = await conn.fetch(
            f"EXPLAIN UPDATE {tables.workflows} SET wake_at = now() WHERE name = $1 "
            f"AND status = '{WAITING}' AND wait_for = $2 AND wait_key = $3",
            "N3",
            "signal:Go",
            "k3",
        )
        assert "flowkit_workflows_wait" in "\n".join(row[0] for row in woken)
    finally:
        await conn.close()


async def test_a_plain_checkpoint_is_one_statement(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema, max_size=1) as store:
        record = await _running(store, "w")
        statements: list[str] = []
        pool: Any = store._pool

        def log(query: Any) -> None:
            statements.append(query.query)

        async with pool.acquire() as conn:
            conn.add_query_logger(log)
            try:
                tables = schema_module.Tables.of(schema)
                await ops.save_workflow(
                    conn, tables, "w", "RUNNING", "{}", record.version, None, None, []
                )
                await anyio.sleep(0.01)  # the loggers are called soon after
                assert len(statements) == 1, statements
                assert "flowkit_mailbox" not in statements[0]
                statements.clear()
                await ops.save_workflow(
                    conn,
                    tables,
                    "w",
                    WAITING,
                    "{}",
                    record.version + 1,
                    None,
                    None,
                    [],
                    None,
                    "signal:Go",
                    "k",
                )
                await anyio.sleep(0.01)
                assert [s.split()[0].rstrip(";") for s in statements] == [
                    "BEGIN",
                    "SELECT",
                    "UPDATE",
                    "COMMIT",
                ]
                assert "pg_advisory_xact_lock" in statements[1]
                assert "ISOLATION LEVEL READ COMMITTED" in statements[0]
            finally:
                conn.remove_query_logger(log)
        stored = await store.load_workflow("w")
        assert (stored.status, stored.wait_for, stored.version) == (WAITING, "signal:Go", 3)


async def test_waiting_rows_the_workflow_table_keeps(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        record = await _running(store, "w")
        await store.save_workflow(_waiting(record, wake_at=_FAR + timedelta(days=1)))
        listed = await store.list_workflows(status=[WAITING])
        assert [(r.id, r.wake_at) for r in listed] == [("w", _FAR + timedelta(days=1))]
        assert (await store.count_workflows()) == {("Order", WAITING): 1}


# -- hearing of deliveries by other processes ----------------------------------------------


async def _park(store: PostgresStore, workflow_id: str, key: str, name: str = "Order") -> None:
    record = await _running(store, workflow_id, name)
    await store.save_workflow(_waiting(record, wake_at=_FAR, wait_for="signal:Go", wait_key=key))


async def _slept(waits: Any, name: str, seconds: float) -> float:
    started = anyio.current_time()
    await waits.sleep(name, seconds)
    return anyio.current_time() - started


async def test_a_delivery_in_another_store_ends_a_sleep_at_once(
    postgres_url: str, schema: str
) -> None:
    with anyio.fail_after(30):  # each store closes: its listening connection is given back
        async with (
            PostgresStore(postgres_url, schema=schema) as sleeper,
            PostgresStore(postgres_url, schema=schema) as sender,
        ):
            waits = sleeper.wait_ops()
            assert waits is sleeper.wait_ops()  # one per store: one listening connection
            assert waits.channel == f"flowkit_waits_{schema}"
            await _park(sender, "w1", "k1")
            await _park(sender, "w2", "k2", name="Other")
            assert await _slept(waits, "Order", 0.05) < 0.5  # listening from now on
            assert await _slept(waits, "Other", 0.01) < 0.5  # heard of from now on
            elapsed: list[float] = []

            async def sleep() -> None:
                elapsed.append(await _slept(waits, "Order", 10))

            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep)
                await anyio.sleep(0.1)
                # Neither a delivery that woke nobody nor one for another name ends it.
                await sender.wait_ops().deliver("Order", "signal:Go", "nobody", "m0", {})
                await sender.wait_ops().deliver("Other", "signal:Go", "k2", "m1", {})
                await anyio.sleep(0.3)
                assert elapsed == []
                delivered = await sender.wait_ops().deliver("Order", "signal:Go", "k1", "m2", {})
                assert delivered.woken == ("w1",)
            assert 0.4 <= elapsed[0] < 0.4 + 0.5
            # The notification for "Other" came while nobody slept on it: the
            # next sleep on it ends at once, then they sleep again.
            assert await _slept(waits, "Other", 5) < 0.2
            assert 0.2 <= await _slept(waits, "Other", 0.2) < 0.6
            assert waits._listening is not None
        assert waits._listening is None  # given back as the store closed


async def test_a_sleep_without_a_delivery_lasts_its_seconds(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        waits = store.wait_ops()
        for seconds in (0.3, 0.1):
            assert seconds <= await _slept(waits, "Order", seconds) < seconds + 0.2
        assert await _slept(waits, "Order", 0) < 0.1


async def test_a_listen_that_fails_falls_back_to_sleeping(
    postgres_url: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    async def refused(self: Any, channel: str, callback: Any) -> None:
        raise asyncpg.PostgresError("LISTEN refused")

    with anyio.fail_after(30):
        async with (
            PostgresStore(postgres_url, schema=schema) as sleeper,
            PostgresStore(postgres_url, schema=schema) as sender,
        ):
            waits = sleeper.wait_ops()
            await _park(sender, "w1", "k1")
            await _park(sender, "w2", "k2")
            with monkeypatch.context() as patched:
                patched.setattr(asyncpg.Connection, "add_listener", refused)
                patched.setattr(waits_module, "_LISTEN_RETRY", 0.0)
                with caplog.at_level("WARNING", logger="flowkit.stores"):
                    for _ in range(3):  # it sleeps, and warns once
                        assert 0.2 <= await _slept(waits, "Order", 0.2) < 0.5
                warnings = [r for r in caplog.records if r.levelname == "WARNING"]
                assert len(warnings) == 1
                assert "cannot LISTEN" in warnings[0].getMessage()
                assert "LISTEN refused" in warnings[0].getMessage()
                pool: Any = sleeper._pool
                assert pool.get_idle_size() == pool.get_size()  # the connection went back
            # LISTEN works again: it listens on the next sleep, and again after
            # its connection is lost.
            for workflow_id, key in (("w1", "k1"), ("w2", "k2")):
                assert await _slept(waits, "Order", 0.05) < 0.5
                listening = waits._listening
                assert listening is not None

                async def deliver(key: str = key) -> None:
                    await anyio.sleep(0.1)
                    await sender.wait_ops().deliver("Order", "signal:Go", key, "m", {})

                async with anyio.create_task_group() as tg:
                    tg.start_soon(deliver)
                    assert await _slept(waits, "Order", 10) < 0.6, workflow_id
                listening[1].terminate()  # lost: the next sleep listens again


async def test_a_cancel_request_in_another_store_ends_a_sleep_at_once(
    postgres_url: str, schema: str
) -> None:
    with anyio.fail_after(30):
        async with (
            PostgresStore(postgres_url, schema=schema) as sleeper,
            PostgresStore(postgres_url, schema=schema) as sender,
        ):
            waits = sleeper.wait_ops()
            await _park(sender, "w1", "k1")
            assert await _slept(waits, "Order", 0.05) < 0.5  # listening from now on
            elapsed: list[float] = []

            async def sleep() -> None:
                elapsed.append(await _slept(waits, "Order", 10))

            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep)
                await anyio.sleep(0.2)
                asked = await sender.request_cancel("w1")
                assert asked.cancel_requested
            assert elapsed[0] < 0.2 + 0.5
