"""PostgresStore: workflow leases, cancel requests, appended history, cursor pages,
and the migration that moved histories out of the state (``FLOWKIT_POSTGRES_URL``)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from flowkit._errors import ConcurrencyConflict, StoreError, WorkflowNotFound
from flowkit.stores import WorkflowRecord
from flowkit.stores._postgres import PostgresStore
from flowkit.stores._postgres import _schema as schema_module

from .brokers import postgres_url as postgres_url
from .test_store_postgres import anyio_backend as anyio_backend
from .test_store_postgres import fetch
from .test_store_postgres import schema as schema

pytestmark = pytest.mark.anyio

_LEASE = 30.0


def _record(
    workflow_id: str,
    name: str = "Order",
    status: str = "RUNNING",
    *,
    owner: str | None = None,
    history: list[list[Any]] | None = None,
) -> WorkflowRecord:
    return WorkflowRecord(
        id=workflow_id,
        name=name,
        status=status,
        state={"n": 1},
        owner=owner,
        history=history or (),
    )


def _ids(records: list[WorkflowRecord]) -> list[str]:
    return [record.id for record in records]


async def _history_rows(url: str, schema: str, workflow_id: str) -> list[tuple[int, Any]]:
    rows = await fetch(
        url,
        f'SELECT seq, entry::text AS entry FROM "{schema}".flowkit_history '
        "WHERE workflow_id = $1 ORDER BY seq",
        workflow_id,
    )
    return [(row["seq"], row["entry"]) for row in rows]


# -- migration ---------------------------------------------------------------------------


async def test_a_version_2_schema_has_its_histories_moved_out_of_the_state(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

    tables = schema_module.Tables.of(schema)
    with monkeypatch.context() as patched:
        patched.setattr(schema_module, "SCHEMA_VERSION", 2)
        conn = await asyncpg.connect(postgres_url)
        try:
            assert await schema_module.migrate(conn, tables) == 2
            for workflow_id, state in [
                ("with", '{"input": {"a": 1}, "history": [[1, "started"], [2, "step", "a"]]}'),
                ("without", '{"input": {"a": 2}}'),
                ("odd", '{"history": "not a list"}'),
            ]:
                await conn.execute(
                    f"INSERT INTO {tables.workflows} "
                    "(id, name, status, version, state, created_at, updated_at) "
                    "VALUES ($1, 'Order', 'RUNNING', 3, $2::jsonb, now(), now())",
                    workflow_id,
                    state,
                )
        finally:
            await conn.close()
    async with PostgresStore(postgres_url, schema=schema) as store:
        moved = await store.load_workflow("with")
        assert moved.state == {"input": {"a": 1}}
        assert [list(entry) for entry in moved.history] == [[1, "started"], [2, "step", "a"]]
        assert (moved.version, moved.owner, moved.lease_until, moved.cancel_requested) == (
            3,
            None,
            None,
            False,
        )
        plain = await store.load_workflow("without")
        assert (plain.state, plain.history) == ({"input": {"a": 2}}, ())
        odd = await store.load_workflow("odd")  # not an array: no entries, the key dropped
        assert (odd.state, odd.history) == ({}, ())
        saved = await store.save_workflow(
            dataclasses.replace(moved, history=()), history=[[3, "step_succeeded", "a"]]
        )
        assert saved.version == 4
        loaded = await store.load_workflow("with")
        assert [list(entry) for entry in loaded.history] == [
            [1, "started"],
            [2, "step", "a"],
            [3, "step_succeeded", "a"],
        ]
    rows = await fetch(postgres_url, f'SELECT version FROM "{schema}".flowkit_schema_version')
    assert sorted(row["version"] for row in rows) == list(
        range(1, schema_module.SCHEMA_VERSION + 1)
    )


# -- history -----------------------------------------------------------------------------


async def test_history_rows_are_numbered_and_appended_only_by_matching_saves(
    postgres_url: str, schema: str
) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        stored, created = await store.create_workflow(_record("w", history=[[1, "a"], [2, "b"]]))
        assert created
        assert stored.history == ()
        again, created = await store.create_workflow(_record("w", history=[[9, "other"]]))
        assert not created
        assert again.history == ()
        assert again.version == 1
        saved = await store.save_workflow(stored, history=[(3, "c"), [4, "d", {"x": None}]])
        assert saved.history == ()
        with pytest.raises(ConcurrencyConflict):
            await store.save_workflow(stored, history=[[5, "stale"]])
        with pytest.raises(WorkflowNotFound):
            await store.save_workflow(_record("missing"), history=[[5, "lost"]])
        with pytest.raises(StoreError, match="history entry 1 must be a list or tuple"):
            await store.save_workflow(saved, history=[[5, "ok"], "text"])
        with pytest.raises(StoreError, match="history entry 0 is not JSON-serializable"):
            await store.save_workflow(saved, history=[[object()]])
        loaded = await store.load_workflow("w")
        assert loaded.version == 2
        assert [list(entry) for entry in loaded.history] == [
            [1, "a"],
            [2, "b"],
            [3, "c"],
            [4, "d", {"x": None}],
        ]
        assert all(isinstance(entry, list) for entry in loaded.history)
        assert await _history_rows(postgres_url, schema, "w") == [
            (0, '[1, "a"]'),
            (1, '[2, "b"]'),
            (2, '[3, "c"]'),
            (3, '[4, "d", {"x": null}]'),
        ]
        listed = await store.list_workflows()
        assert [record.history for record in listed] == [()]


async def test_prune_removes_the_history_rows(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        await store.create_workflow(_record("old", status="COMPLETED", history=[[1, "x"]]))
        await store.create_workflow(_record("kept", history=[[1, "y"]]))
        await anyio.sleep(0.01)
        assert await store.prune_workflows(datetime.now(UTC)) == 1
        assert await _history_rows(postgres_url, schema, "old") == []
        assert await _history_rows(postgres_url, schema, "kept") == [(0, '[1, "y"]')]


async def test_a_bad_history_row_names_the_workflow_not_the_value(
    postgres_url: str, schema: str
) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        await store.create_workflow(_record("w", history=[[1, "ok"]]))
        await fetch(
            postgres_url,
            f'INSERT INTO "{schema}".flowkit_history VALUES ($1, 1, $2::jsonb)',
            "w",
            '{"card": "4111-1111"}',
        )
        with pytest.raises(StoreError, match="'w' cannot be read: its history entry 1") as caught:
            await store.load_workflow("w")
        assert "4111" not in str(caught.value)


async def test_save_costs_the_same_however_long_the_history(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema, max_size=1) as store:
        short, _ = await store.create_workflow(_record("short"))
        long, _ = await store.create_workflow(
            _record(
                "long", history=[[i, "step_succeeded", f"s{i}", {"v": i}] for i in range(10_000)]
            )
        )

        async def timed(record: WorkflowRecord, rounds: int) -> tuple[WorkflowRecord, float]:
            spent: list[float] = []
            for i in range(rounds):
                started = time.perf_counter()
                record = await store.save_workflow(record, history=[[i, "checkpoint"]])
                spent.append(time.perf_counter() - started)
            return record, statistics.median(spent)

        short, _ = await timed(short, 5)  # warm up the prepared statements
        short, short_cost = await timed(short, 40)
        long, long_cost = await timed(long, 40)
        loaded = await store.load_workflow("long")
        assert len(loaded.history) == 10_040
        assert list(loaded.history[-1]) == [39, "checkpoint"]
    # Loose: a save that rewrote or read the whole history would cost many times more.
    assert long_cost < 3 * short_cost + 0.005, (short_cost, long_cost)


# -- leases ------------------------------------------------------------------------------


async def test_leases_run_by_the_database_clock(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        stored, _ = await store.create_workflow(_record("w", owner="p1"), lease=120)
        [row] = await fetch(
            postgres_url,
            f'SELECT lease_until - now() AS left FROM "{schema}".flowkit_workflows',
        )
        assert timedelta(seconds=110) < row["left"] <= timedelta(seconds=120)
        assert stored.owner == "p1"
        assert stored.lease_until is not None
        assert stored.lease_until.utcoffset() == timedelta(0)
        for lease, match in [
            (None, "needs lease"),
            (0, "positive"),
            (-1, "positive"),
            (float("nan"), "positive"),
            (float("inf"), "positive"),
            ("5", "number of seconds"),
        ]:
            with pytest.raises(StoreError, match=match):
                await store.save_workflow(
                    dataclasses.replace(stored, owner="p1"),
                    lease=lease,  # type: ignore[arg-type]
                )
        with pytest.raises(StoreError, match="non-empty"):
            await store.claim_workflows("Order", "", lease=_LEASE)
        with pytest.raises(StoreError, match="claim limit"):
            await store.claim_workflows("Order", "p2", lease=_LEASE, limit=0)
        released = await store.save_workflow(dataclasses.replace(stored, owner=None), lease=60)
        assert (released.owner, released.lease_until) == (None, None)
        assert (await store.load_workflow("w")).version == 2


async def test_claims_fence_renew_release_and_cancel(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        a, _ = await store.create_workflow(_record("a", owner="p1"), lease=_LEASE)
        b, _ = await store.create_workflow(_record("b", owner="p1"), lease=_LEASE)
        await store.create_workflow(_record("done", status="COMPLETED"))
        assert await store.claim_workflows("Order", "p2", lease=_LEASE) == []
        assert await store.claim_workflow("a", "p2", lease=_LEASE) is None
        assert await store.claim_workflow("done", "p2", lease=_LEASE) is None
        with pytest.raises(WorkflowNotFound):
            await store.claim_workflow("nope", "p2", lease=_LEASE)
        mine = await store.claim_workflow("b", "p1", lease=_LEASE)  # its own counts as free
        assert mine is not None
        assert (mine.owner, mine.version, mine.history) == ("p1", b.version + 1, ())

        assert await store.renew_leases("p1", ["a", "b", "nope", "done"], lease=_LEASE) == {
            "a": False,
            "b": False,
        }
        assert await store.renew_leases("p2", ["a"], lease=_LEASE) == {}
        assert (await store.load_workflow("a")).version == a.version

        asked = await store.request_cancel("a")
        assert (asked.cancel_requested, asked.version, asked.history) == (True, a.version, ())
        assert await store.renew_leases("p1", ["a"], lease=_LEASE) == {"a": True}
        left = await store.request_cancel("done")
        assert (left.cancel_requested, left.status) == (False, "COMPLETED")
        with pytest.raises(WorkflowNotFound):
            await store.request_cancel("nope")

        await store.release_workflows("p2", ["a"])  # not its own: nothing happens
        assert (await store.load_workflow("a")).owner == "p1"
        await store.release_workflows("p1", ["a"])
        released = await store.load_workflow("a")
        assert (released.owner, released.lease_until, released.version) == (None, None, 1)
        assert released.cancel_requested

        [claimed] = await store.claim_workflows("Order", "p2", lease=_LEASE)
        assert (claimed.id, claimed.owner, claimed.version) == ("a", "p2", 2)
        assert claimed.cancel_requested
        with pytest.raises(ConcurrencyConflict):  # p1's checkpoint is fenced out
            await store.save_workflow(dataclasses.replace(a, owner="p1"), lease=_LEASE)
        still = await store.save_workflow(
            dataclasses.replace(claimed, owner="p2"), lease=_LEASE, history=[[1, "x"]]
        )
        assert still.cancel_requested  # a RUNNING checkpoint keeps the request
        turned = await store.save_workflow(
            dataclasses.replace(still, status="COMPENSATING", owner="p2"), lease=_LEASE
        )
        assert not turned.cancel_requested
        assert await store.renew_leases("p1", ["a", "b"], lease=_LEASE) == {"b": False}
        finished = await store.save_workflow(
            dataclasses.replace(turned, status="COMPENSATED", owner=None)
        )
        assert await store.renew_leases("p2", ["a"], lease=_LEASE) == {}
        assert finished.owner is None


async def test_claims_take_the_oldest_free_and_skip_the_excluded(
    postgres_url: str, schema: str
) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        for index in range(6):
            await store.create_workflow(_record(f"w{index}", owner="me"), lease=_LEASE)
        await store.create_workflow(_record("other", name="Shipping"))
        got = await store.claim_workflows(
            "Order", "me", lease=_LEASE, limit=3, exclude=["w0", "w2"]
        )
        assert _ids(got) == ["w1", "w3", "w4"]
        assert all(record.version == 2 for record in got)


async def test_concurrent_claimers_on_three_stores_never_share_a_workflow(
    postgres_url: str, schema: str
) -> None:
    stores = [PostgresStore(postgres_url, schema=schema, max_size=3) for _ in range(3)]
    async with stores[0]:
        for index in range(300):
            await stores[0].create_workflow(_record(f"w{index:03}"))
    claimed: dict[str, list[str]] = {}

    async def claimer(store: PostgresStore, owner: str) -> None:
        mine: list[str] = []
        while True:
            got = await store.claim_workflows("Order", owner, lease=_LEASE, limit=7, exclude=mine)
            if not got:
                return
            assert [r.owner for r in got] == [owner] * len(got)
            mine.extend(_ids(got))
            for record in got:
                claimed.setdefault(record.id, []).append(owner)

    for store in stores:
        await store.__aenter__()
    try:
        async with anyio.create_task_group() as tg:
            for index, store in enumerate(stores):
                for task in range(3):  # each on its own pooled connection
                    tg.start_soon(claimer, store, f"p{index}-{task}")
    finally:
        for store in stores:
            await store.aclose()
    assert {wid: owners for wid, owners in claimed.items() if len(owners) > 1} == {}
    assert len(claimed) == 300
    rows = await fetch(postgres_url, f'SELECT id, owner, version FROM "{schema}".flowkit_workflows')
    assert {row["id"]: row["owner"] for row in rows} == {
        wid: owners[0] for wid, owners in claimed.items()
    }
    assert {row["version"] for row in rows} == {2}
    assert len({owners[0] for owners in claimed.values()}) > 1


# -- listing pages -----------------------------------------------------------------------


async def test_cursor_pages_follow_creation_then_id(postgres_url: str, schema: str) -> None:
    async with PostgresStore(postgres_url, schema=schema) as store:
        for workflow_id in ["e", "c", "a", "d", "b", "f"]:
            await store.create_workflow(_record(workflow_id))
        await store.create_workflow(_record("z", name="Shipping"))
        # Four share one creation time to the microsecond: the id orders them.
        await fetch(
            postgres_url,
            f'UPDATE "{schema}".flowkit_workflows SET created_at = CASE '
            "WHEN id IN ('a', 'b', 'c', 'd') THEN '2024-05-01 10:00:00.123456+00'::timestamptz "
            "WHEN id = 'e' THEN '2024-05-01 10:00:00.123457+00'::timestamptz "
            "ELSE '2024-05-01 09:59:59.999999+00'::timestamptz END",
        )
        pages: list[list[str]] = []
        after: str | None = None
        while page := await store.list_workflows(name="Order", limit=2, after=after):
            pages.append(_ids(page))
            after = page[-1].cursor
        assert pages == [["f", "a"], ["b", "c"], ["d", "e"]]
        listed = await store.list_workflows()
        assert _ids(listed) == ["f", "z", "a", "b", "c", "d", "e"]
        b = listed[3]
        assert b.cursor == "2024-05-01T10:00:00.123456+00:00/b"
        assert b.created_at == datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)
        shifted = b.created_at.astimezone(timezone(timedelta(hours=2))).isoformat() + "/b"
        assert _ids(await store.list_workflows(after=shifted)) == ["c", "d", "e"]
        slash = "2024-05-01T10:00:00.123456+00:00/a/b"  # an id may hold a slash
        assert _ids(await store.list_workflows(after=slash, limit=1)) == ["b"]
        assert _ids(await store.list_workflows(status=["RUNNING"], after=b.cursor)) == [
            "c",
            "d",
            "e",
        ]
        assert await store.list_workflows(status=[], after=b.cursor) == []
        for bad in ["", "b", "nonsense/b", "2024-05-01T10:00:00/b", "2024-05-01T10:00:00+00:00/"]:
            with pytest.raises(StoreError, match="cursor"):
                await store.list_workflows(after=bad)
