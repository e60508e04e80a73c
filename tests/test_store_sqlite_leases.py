"""SQLiteStore: processes opening one new database together, workflow leases,
cancel requests, appended history, cursor pages, and the schema migration that
moved the history out of the state."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from flowkit._errors import StoreError, WorkflowNotFound
from flowkit.stores import SQLiteStore, WorkflowRecord
from flowkit.stores._sqlite import SCHEMA_VERSION
from flowkit.stores._sqlite._schema import _MIGRATIONS

from ._util import race_two_claimers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio

SECRET = "4111-1111-secret"
LEASE = 60.0


def _record(
    workflow_id: str, *, name: str = "n", status: str = "RUNNING", **kw: Any
) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, name, status, {"n": 1}, **kw)


def _saved(record: WorkflowRecord, status: str = "RUNNING", **kw: Any) -> WorkflowRecord:
    return WorkflowRecord(record.id, record.name, status, {"n": 2}, record.version, **kw)


_OPEN_AND_WRITE = """
import sys, anyio
from flowkit.stores import SQLiteStore, WorkflowRecord

async def main() -> None:
    async with SQLiteStore(sys.argv[1]) as store:
        await store.create_workflow(
            WorkflowRecord(sys.argv[2], "n", "RUNNING", {}), lease=60.0
        )

anyio.run(main)
"""


def test_processes_that_open_one_new_database_together_all_succeed(tmp_path: Path) -> None:
    # A new file is switched to WAL by whichever process gets there first; SQLite
    # does not wait for that switch by itself, so the others must.
    for round_ in range(10):
        path = tmp_path / f"shared-{round_}.db"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AND_WRITE, str(path), f"wf-{n}"],
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(6)
        ]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, "".join(errors)
        assert _rows(path, "SELECT COUNT(*) FROM flowkit_workflows") == [(6,)]


def _rows(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _execute(path: Path, sql: str, *params: object) -> int:
    with sqlite3.connect(path) as conn:
        changed = conn.execute(sql, params).rowcount
    sqlite3.connect(path).close()
    return changed


# -- the migration from schema version 3 ----------------------------------------------

_V3_TIME = "2024-01-01T00:00:00.000000+00:00"


def _create_schema_version_3(path: Path) -> None:
    """A database as schema version 3 left it: the history inside the state."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE flowkit_schema (version INTEGER NOT NULL PRIMARY KEY, "
            "applied_at TEXT NOT NULL)"
        )
        for version, statements in enumerate(_MIGRATIONS[:3], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO flowkit_schema VALUES (?, ?)", (version, _V3_TIME))
        states = {
            "with-history": {
                "input": {"order": 7},
                "history": [[1704067200000, "workflow_started"], [1704067200001, "step", "a", 1]],
            },
            "without-history": {"input": {"order": 8}},
            "empty-history": {"input": {"order": 9}, "history": []},
        }
        for workflow_id, state in states.items():
            conn.execute(
                "INSERT INTO flowkit_workflows VALUES (?, 'n', 'RUNNING', 3, ?, ?, ?)",
                (workflow_id, json.dumps(state), _V3_TIME, _V3_TIME),
            )
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def test_migration_moves_the_history_out_of_the_state(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    _create_schema_version_3(path)
    with pytest.raises(StoreError, match="too old to read"):
        async with SQLiteStore(path, read_only=True):
            pass
    async with SQLiteStore(path) as store:
        loaded = await store.load_workflow("with-history")
        assert loaded.state == {"input": {"order": 7}}
        assert loaded.history == (
            [1704067200000, "workflow_started"],
            [1704067200001, "step", "a", 1],
        )
        assert (loaded.version, loaded.owner, loaded.lease_until) == (3, None, None)
        assert loaded.cancel_requested is False
        assert loaded.created_at == datetime(2024, 1, 1, tzinfo=UTC)
        for workflow_id, order in (("without-history", 8), ("empty-history", 9)):
            other = await store.load_workflow(workflow_id)
            assert other.state == {"input": {"order": order}}
            assert other.history == ()
        # Appending continues after the moved entries.
        await store.save_workflow(_saved(loaded), history=[[1704067200002, "next"]])
        again = await store.load_workflow("with-history")
        assert [entry[1] for entry in again.history] == ["workflow_started", "step", "next"]
    assert _rows(path, "SELECT version FROM flowkit_schema ORDER BY version") == [
        (version,) for version in range(1, SCHEMA_VERSION + 1)
    ]
    assert _rows(
        path, "SELECT seq FROM flowkit_history WHERE workflow_id = 'with-history' ORDER BY seq"
    ) == [(0,), (1,), (2,)]
    assert _rows(path, "SELECT COUNT(*) FROM flowkit_workflows WHERE state LIKE '%history%'") == [
        (0,)
    ]
    async with SQLiteStore(path, read_only=True) as store:
        assert len((await store.load_workflow("with-history")).history) == 3


# -- history ---------------------------------------------------------------------------


async def test_history_is_appended_in_order_and_returned_only_by_load(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        created, made = await store.create_workflow(
            _record("w", history=[(1, "a"), [2, "b", {"k": (1, 2)}]])
        )
        assert made and created.history == ()
        saved = await store.save_workflow(_saved(created), history=[[3, "c"]])
        saved = await store.save_workflow(_saved(saved))  # nothing to append
        saved = await store.save_workflow(_saved(saved), history=[[4, "d"], [5, "é ✓"]])
        assert saved.history == ()
        loaded = await store.load_workflow("w")
        assert loaded.history == ([1, "a"], [2, "b", {"k": [1, 2]}], [3, "c"], [4, "d"], [5, "é ✓"])
        assert [record.history for record in await store.list_workflows()] == [()]
        existing, made = await store.create_workflow(_record("w", history=[[9, "ignored"]]))
        assert not made and existing.history == () and existing.version == saved.version
        assert len((await store.load_workflow("w")).history) == 5
        bad_history: list[Any] = [[1, object()]]
        with pytest.raises(StoreError, match="history entry 0 is not JSON-serializable"):
            await store.save_workflow(_saved(saved), history=bad_history)
        assert (await store.load_workflow("w")).version == saved.version


async def test_an_unreadable_history_entry_names_the_workflow_not_the_value(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        await store.create_workflow(_record("w", history=[[1, "a"], [2, "b"], [3, "c"]]))
        await store.create_workflow(_record("v", history=[[1, "a"]]))
    damages = {"w": f'[2, "{SECRET}', "v": SECRET.encode()}
    for workflow_id, text in damages.items():
        assert _execute(
            path,
            "UPDATE flowkit_history SET entry = ? WHERE workflow_id = ? AND seq = ?",
            text,
            workflow_id,
            1 if workflow_id == "w" else 0,
        )
    for read_only in (False, True):
        async with SQLiteStore(path, read_only=read_only) as store:
            for workflow_id, problem in (
                ("w", "its history entry 1 is not valid JSON"),
                ("v", "its history entry 0 is not valid JSON"),
            ):
                with pytest.raises(StoreError) as caught:
                    await store.load_workflow(workflow_id)
                assert repr(workflow_id) in str(caught.value)
                assert problem in str(caught.value)
                assert SECRET not in str(caught.value)
            assert [record.id for record in await store.list_workflows()] == ["w", "v"]


async def test_unreadable_lease_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        for workflow_id in ("owner", "lease", "cancel", "good"):
            await store.create_workflow(_record(workflow_id))
    _execute(path, "UPDATE flowkit_workflows SET owner = X'05' WHERE id = 'owner'")
    _execute(path, f"UPDATE flowkit_workflows SET lease_until = '{SECRET}' WHERE id = 'lease'")
    _execute(path, "UPDATE flowkit_workflows SET cancel_requested = 7 WHERE id = 'cancel'")
    async with SQLiteStore(path) as store:
        assert [record.id for record in await store.list_workflows()] == ["good"]
        for workflow_id, problem in (
            ("owner", "its owner is not text"),
            ("lease", "its lease time is not a timestamp"),
            ("cancel", "its cancel request is not 0 or 1"),
        ):
            with pytest.raises(StoreError, match=problem) as caught:
                await store.load_workflow(workflow_id)
            assert SECRET not in str(caught.value)


async def _on_connection(store: SQLiteStore, install: Callable[[sqlite3.Connection], None]) -> None:
    """Run ``install`` on the store's own connection, in its writer thread."""
    await store._call(install, write=False)


async def test_a_save_never_reads_or_rewrites_the_history(tmp_path: Path) -> None:
    """The work of a checkpoint (SQLite VM steps) is the same for a history of
    2 entries and of 5000, and no statement reads or changes the stored entries."""
    path = tmp_path / "store.db"
    long_history = [[index, "step_started", "a", index] for index in range(5000)]
    async with SQLiteStore(path) as store:
        short, _ = await store.create_workflow(_record("short", history=long_history[:2]))
        long, _ = await store.create_workflow(_record("long-", history=long_history))
        statements: list[str] = []
        steps = [0]

        def tick() -> int:
            steps[0] += 1
            return 0

        def measure(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(statements.append)
            conn.set_progress_handler(tick, 1)

        def stop_measuring(conn: sqlite3.Connection) -> None:
            conn.set_trace_callback(None)
            conn.set_progress_handler(None, 1)

        current = {"short": short, "long-": long}
        costs: dict[str, int] = {}
        for workflow_id in ("short", "long-", "short", "long-"):  # the second round counts
            await _on_connection(store, measure)
            steps[0] = 0
            current[workflow_id] = await store.save_workflow(
                _saved(current[workflow_id]),
                history=[[9, "step_succeeded", "a", 1], [10, "next"]],
            )
            costs[workflow_id] = steps[0]
            await _on_connection(store, stop_measuring)
        history_statements = [sql for sql in statements if "flowkit_history" in sql]
        assert history_statements, statements
        for sql in history_statements:
            assert sql.startswith(("INSERT INTO flowkit_history", "SELECT MAX(seq)")), sql
        assert 0 < costs["long-"] <= costs["short"] + 10, costs
        loaded = await store.load_workflow("long-")
        assert len(loaded.history) == 5004
        assert loaded.history[-1] == [10, "next"]
    plan = _rows(
        path,
        "EXPLAIN QUERY PLAN SELECT MAX(seq) FROM flowkit_history WHERE workflow_id = ?",
        "long-",
    )
    assert any("SEARCH" in str(row) and "PRIMARY KEY" in str(row) for row in plan), plan


async def test_prune_removes_the_history_rows(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        for index in range(3):
            record, _ = await store.create_workflow(
                _record(f"w{index}", history=[[1, "a"], [2, "b"]])
            )
            await store.save_workflow(_saved(record, "COMPLETED"), history=[[3, "c"]])
        await store.create_workflow(_record("kept", history=[[1, "a"]]))
        await anyio.sleep(0.01)
        assert await store.prune_workflows(datetime.now(UTC), limit=2) == 2
        assert await store.prune_workflows(datetime.now(UTC)) == 1
    assert _rows(path, "SELECT DISTINCT workflow_id FROM flowkit_history") == [("kept",)]


# -- listing pages ---------------------------------------------------------------------


async def test_cursor_pages_by_creation_then_id(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    ids = [f"w{index:02}" for index in range(7)]
    async with SQLiteStore(path) as store:
        for workflow_id in reversed(ids):
            await store.create_workflow(_record(workflow_id))
        await store.create_workflow(_record("later", name="other"))
    # All but one at one whole second: the cursor's time has no fraction then.
    _execute(
        path,
        f"UPDATE flowkit_workflows SET created_at = '{_V3_TIME}' WHERE name = 'n' AND id != 'w06'",
    )
    _execute(
        path,
        "UPDATE flowkit_workflows SET created_at = '2024-01-01T00:00:00.000001+00:00' "
        "WHERE id = 'w06'",
    )
    async with SQLiteStore(path) as store:
        every = await store.list_workflows(name="n")
        assert [record.id for record in every] == ids
        assert every[0].cursor == "2024-01-01T00:00:00+00:00/w00"
        for size in (1, 2, 3, 10):
            seen: list[str] = []
            after: str | None = None
            while True:
                page = await store.list_workflows(name="n", limit=size, after=after)
                seen.extend(record.id for record in page)
                if len(page) < size:
                    break
                after = page[-1].cursor
            assert seen == ids
        # The same instant in another offset names the same place.
        shifted = "2024-01-01T02:00:00+02:00/w03"
        got = await store.list_workflows(name="n", after=shifted)
        assert [record.id for record in got] == ids[4:]
        assert [r.id for r in await store.list_workflows(after=every[-1].cursor)] == ["later"]
        got = await store.list_workflows(status="RUNNING", name="n", limit=2, after=every[1].cursor)
        assert [record.id for record in got] == ids[2:4]
        for bad in (
            "",
            SECRET,
            f"{SECRET}/w",
            "2024-01-01T00:00:00/w",
            "2024-01-01T00:00:00+00:00/",
        ):
            with pytest.raises(StoreError, match="cursor") as caught:
                await store.list_workflows(after=bad)
            assert SECRET not in str(caught.value)


# -- leases ----------------------------------------------------------------------------


async def test_leases_are_stored_as_comparable_utc_text(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        before = datetime.now(UTC)
        record, _ = await store.create_workflow(_record("w", owner="p1"), lease=LEASE)
        after = datetime.now(UTC)
        assert record.owner == "p1"
        assert record.lease_until is not None
        assert record.lease_until.tzinfo is not None
        assert before + timedelta(seconds=LEASE) <= record.lease_until
        assert record.lease_until <= after + timedelta(seconds=LEASE)
        loaded = await store.load_workflow("w")
        assert loaded == record
        for lease in (0, -1, math.inf, math.nan, None, True):
            with pytest.raises(StoreError, match="lease"):
                await store.save_workflow(_saved(record, owner="p1"), lease=lease)
        with pytest.raises(StoreError, match="owner"):
            await store.create_workflow(_record("x", owner=""), lease=LEASE)
        with pytest.raises(StoreError, match="lease"):
            await store.claim_workflows("n", "p2", lease=0)
        with pytest.raises(StoreError, match="limit"):
            await store.claim_workflows("n", "p2", lease=LEASE, limit=0)
        saved = await store.save_workflow(_saved(record, owner="p1"), lease=LEASE)
        assert saved.lease_until is not None and saved.lease_until >= record.lease_until
        released = await store.save_workflow(_saved(saved), lease=LEASE)  # no owner: no lease
        assert (released.owner, released.lease_until) == (None, None)
        assert await store.load_workflow("w") == released
    ((owner, stored),) = _rows(path, "SELECT owner, lease_until FROM flowkit_workflows")
    assert (owner, stored) == (None, None)


async def test_claims_fence_and_leave_updated_at(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        held, _ = await store.create_workflow(_record("held", owner="p1"), lease=0.05)
        free, _ = await store.create_workflow(_record("free"))
        done, _ = await store.create_workflow(_record("done", status="FAILED"))
        await anyio.sleep(0.2)
        claimed = await store.claim_workflows("n", "p2", lease=LEASE)
        assert [record.id for record in claimed] == ["held", "free"]
        for record, before in zip(claimed, (held, free), strict=True):
            assert record.version == before.version + 1
            assert record.updated_at == before.updated_at
            assert record.owner == "p2" and record.history == ()
        assert await store.claim_workflow("done", "p2", lease=LEASE) is None
        assert await store.claim_workflow("held", "p1", lease=LEASE) is None
        again = await store.claim_workflow("held", "p2", lease=LEASE)  # its own: free
        assert again is not None and again.version == held.version + 2
        with pytest.raises(WorkflowNotFound):
            await store.claim_workflow("missing", "p2", lease=LEASE)
        assert await store.renew_leases("p1", ["held"], lease=LEASE) == {}
        assert done.owner is None


async def test_renew_and_release_take_any_number_of_ids(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        mine = [f"w{index}" for index in range(5)]
        for workflow_id in mine:
            await store.create_workflow(_record(workflow_id, owner="p1"), lease=LEASE)
        await store.create_workflow(_record("theirs", owner="p2"), lease=LEASE)
        finished, _ = await store.create_workflow(_record("finished", owner="p1"), lease=LEASE)
        await store.save_workflow(_saved(finished, "COMPLETED", owner="p1"), lease=LEASE)
        await store.request_cancel("w3")
        unknown = [f"unknown-{index}" for index in range(40_000)]  # past SQLite's variable limit
        asked = [*unknown, *mine, "theirs", "finished"]
        renewed = await store.renew_leases("p1", asked, lease=LEASE)
        assert renewed == {workflow_id: workflow_id == "w3" for workflow_id in mine}
        assert await store.renew_leases("p1", [], lease=LEASE) == {}
        versions = {r.id: r.version for r in await store.list_workflows()}
        await store.release_workflows("p1", [*unknown, "w0", "w1", "theirs"])
        after = {r.id: r for r in await store.list_workflows()}
        assert {r.id: r.version for r in after.values()} == versions
        assert (after["w0"].owner, after["w0"].lease_until) == (None, None)
        assert after["w2"].owner == "p1" and after["theirs"].owner == "p2"
        got = await store.claim_workflows("n", "p3", lease=LEASE)
        assert [record.id for record in got] == ["w0", "w1"]


async def test_cancel_requests(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        record, _ = await store.create_workflow(_record("w", owner="p1"), lease=LEASE)
        asked = await store.request_cancel("w")
        assert asked.cancel_requested and asked.version == record.version
        assert asked.history == ()
        assert (await store.request_cancel("w")).cancel_requested
        saved = await store.save_workflow(
            _saved(record, owner="p1"), lease=LEASE, history=[[1, "x"]]
        )
        assert saved.cancel_requested
        turned = await store.save_workflow(_saved(saved, "COMPENSATING", owner="p1"), lease=LEASE)
        assert not turned.cancel_requested
        assert not (await store.request_cancel("w")).cancel_requested
        assert not (await store.load_workflow("w")).cancel_requested
        with pytest.raises(WorkflowNotFound):
            await store.request_cancel("missing")


async def test_a_read_only_store_reads_leases_and_refuses_to_claim(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        record, _ = await store.create_workflow(
            _record("w", owner="p1", history=[[1, "a"]]), lease=LEASE
        )
    async with SQLiteStore(path, read_only=True) as store:
        loaded = await store.load_workflow("w")
        assert loaded.history == ([1, "a"],)
        assert loaded.owner == "p1" and loaded.lease_until == record.lease_until
        assert await store.list_workflows(after=loaded.cursor) == []
        for write in (
            lambda: store.claim_workflows("n", "p2", lease=LEASE),
            lambda: store.claim_workflow("w", "p2", lease=LEASE),
            lambda: store.renew_leases("p1", ["w"], lease=LEASE),
            lambda: store.release_workflows("p1", ["w"]),
            lambda: store.request_cancel("w"),
            lambda: store.save_workflow(_saved(record), history=[[2, "b"]]),
        ):
            with pytest.raises(StoreError, match="read-only"):
                await write()


# -- claims shared between stores and processes -------------------------------------------


async def test_two_stores_on_one_file_never_claim_a_workflow_twice(tmp_path: Path) -> None:
    path = tmp_path / "claims.db"
    count = 60
    claimed: dict[str, list[str]] = {}
    async with SQLiteStore(path) as first, SQLiteStore(path) as second:
        for index in range(count):
            await first.create_workflow(_record(f"w{index:03}"))

        async def claimer(store: SQLiteStore, owner: str) -> None:
            mine: list[str] = []
            while True:
                got = await store.claim_workflows("n", owner, lease=LEASE, limit=2, exclude=mine)
                if not got:
                    return
                for record in got:
                    assert record.owner == owner and record.version == 2
                    mine.append(record.id)
                    claimed.setdefault(record.id, []).append(owner)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for index in range(8):
                tg.start_soon(claimer, first if index % 2 else second, f"owner-{index}")
    twice = {wid: owners for wid, owners in claimed.items() if len(owners) > 1}
    assert not twice
    assert sorted(claimed) == [f"w{index:03}" for index in range(count)]
    assert _rows(path, "SELECT DISTINCT version FROM flowkit_workflows") == [(2,)]


_CLAIMER = """
import json
import os
import sys

import anyio

from flowkit.stores import SQLiteStore


async def main(path: str) -> None:
    async with SQLiteStore(path) as store:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # wait for the go
        claimed: list[str] = []

        async def claimer(owner: str) -> None:
            mine: list[str] = []
            while True:
                got = await store.claim_workflows("n", owner, lease=600, limit=3, exclude=mine)
                if not got:
                    return
                mine.extend(record.id for record in got)
                claimed.extend(record.id for record in got)
                await anyio.sleep(0.002)  # leave the write lock to the other process

        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(claimer, f"{os.getpid()}-{index}")
    print(json.dumps(claimed), flush=True)


anyio.run(main, sys.argv[1])
"""


async def test_two_processes_never_claim_a_workflow_twice(tmp_path: Path) -> None:
    path = tmp_path / "processes.db"
    count = 150
    async with SQLiteStore(path) as store:
        for index in range(count):
            await store.create_workflow(_record(f"w{index:03}"))
    everything = await race_two_claimers([sys.executable, "-c", _CLAIMER, str(path)])
    assert sorted(everything) == [f"w{index:03}" for index in range(count)]  # each exactly once
