"""SQLiteStore's waits: the migration that added them, their indexes, claims
shared between stores, and unreadable rows (the ``wait_`` store checks of
test_stores.py prove the contract)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from flowkit._errors import StoreError
from flowkit.stores import SQLiteStore, WorkflowRecord
from flowkit.stores._sqlite import SCHEMA_VERSION
from flowkit.stores._sqlite import _ops as ops
from flowkit.stores._sqlite import _waits as waits_ops
from flowkit.stores._sqlite._rows import timestamp
from flowkit.stores._sqlite._schema import _MIGRATIONS
from flowkit.stores._waits import WAITING

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio

SECRET = "4111-1111-secret"
LEASE = 60.0
_V6_TIME = "2024-01-01T00:00:00.000000+00:00"


def _record(workflow_id: str, *, status: str = "RUNNING", **kw: Any) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "n", status, {"n": 1}, **kw)


def _waiting(record: WorkflowRecord, **kw: Any) -> WorkflowRecord:
    return WorkflowRecord(record.id, record.name, WAITING, {"n": 2}, record.version, **kw)


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


async def _created(path: Path) -> None:
    async with SQLiteStore(path):
        pass


# -- the migration from schema version 6 ----------------------------------------------


def _create_schema_version_6(path: Path) -> None:
    """A database as schema version 6 left it, with a running and a finished workflow."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE flowkit_schema (version INTEGER NOT NULL PRIMARY KEY, "
            "applied_at TEXT NOT NULL)"
        )
        for version, statements in enumerate(_MIGRATIONS[:6], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO flowkit_schema VALUES (?, ?)", (version, _V6_TIME))
        for workflow_id, status in (("running", "RUNNING"), ("done", "COMPLETED")):
            conn.execute(
                "INSERT INTO flowkit_workflows (id, name, status, version, state, created_at, "
                "updated_at) VALUES (?, 'n', ?, 2, '{}', ?, ?)",
                (workflow_id, status, _V6_TIME, _V6_TIME),
            )
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def test_migration_adds_the_waits_to_a_version_6_database(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    _create_schema_version_6(path)
    # The workflow reads select the wait columns: a version 6 file is too old to read as it is.
    with pytest.raises(StoreError, match="too old to read"):
        async with SQLiteStore(path, read_only=True):
            pass
    async with SQLiteStore(path) as store:
        running = await store.load_workflow("running")
        assert (running.wake_at, running.wait_for, running.wait_key) == (None, None, None)
        at = datetime(2030, 1, 1, tzinfo=UTC)
        waiting = await store.save_workflow(
            _waiting(running, wake_at=at, wait_for="signal:S", wait_key="k")
        )
        assert (waiting.wake_at, waiting.wait_for, waiting.wait_key) == (at, "signal:S", "k")
        waits = store.wait_ops()
        assert await waits.next_wake("n") == pytest.approx(
            (at - datetime.now(UTC)).total_seconds(), abs=5
        )
        delivery = await waits.deliver("n", "signal:S", "k", "m1", {"ok": True})
        assert delivery.stored and delivery.woken == ("running",)
        assert [r.id for r in await waits.claim_due("n", "p1", lease=LEASE)] == ["running"]
        assert (await store.load_workflow("done")).wake_at is None
    assert _rows(path, "SELECT version FROM flowkit_schema ORDER BY version") == [
        (version,) for version in range(1, SCHEMA_VERSION + 1)
    ]
    async with SQLiteStore(path, read_only=True) as store:
        assert (await store.load_workflow("running")).wait_for == "signal:S"


# -- what is stored --------------------------------------------------------------------


async def test_waits_are_stored_only_for_waiting_records(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    at = datetime(2030, 1, 1, 12, tzinfo=UTC)
    async with SQLiteStore(path) as store:
        waits = store.wait_ops()
        await waits.deliver("n", "signal:S", "early", "m1", {})
        plain, _ = await store.create_workflow(
            _record("plain", wake_at=at, wait_for="signal:S", wait_key="k")
        )
        assert (plain.wake_at, plain.wait_for, plain.wait_key) == (None, None, None)
        timer, _ = await store.create_workflow(_record("timer", status=WAITING, wake_at=at))
        assert timer.wake_at == at
        before = datetime.now(UTC)
        early, _ = await store.create_workflow(
            _record("early", status=WAITING, wake_at=at, wait_for="signal:S", wait_key="early")
        )
        assert early.wake_at is not None and before <= early.wake_at <= datetime.now(UTC)
        not_a_mapping: Any = [1, 2]
        with pytest.raises(StoreError, match="body must be a mapping, not list"):
            await waits.deliver("n", "signal:S", "k", "m2", not_a_mapping)
        with pytest.raises(StoreError, match="message id must be a non-empty string"):
            await waits.deliver("n", "signal:S", "k", "", {})
        with pytest.raises(StoreError, match="wake_at must be a timezone-aware"):
            await store.create_workflow(
                _record("naive", status=WAITING, wake_at=datetime(2030, 1, 1))
            )
        # A taken message is no longer waiting for a wait: the wait keeps its own time.
        assert await waits.take("n", "signal:S", "early", "early:step") is not None
        again = await store.save_workflow(
            _waiting(early, wake_at=at, wait_for="signal:S", wait_key="early")
        )
        assert again.wake_at == at
    assert _rows(path, "SELECT id, wake_at FROM flowkit_workflows ORDER BY id") == [
        ("early", timestamp(at)),
        ("plain", None),
        ("timer", timestamp(at)),
    ]


async def test_a_read_only_store_reads_the_waits_and_writes_none(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        record, _ = await store.create_workflow(_record("w"))
        await store.save_workflow(_waiting(record, wake_at=datetime.now(UTC)))
    async with SQLiteStore(path, read_only=True) as store:
        waits = store.wait_ops()
        wake = await waits.next_wake("n")
        assert wake is not None and wake <= 0
        for write in (
            lambda: waits.claim_due("n", "p1", lease=LEASE),
            lambda: waits.deliver("n", "signal:S", "k", "m1", {}),
            lambda: waits.take("n", "signal:S", "k", "c"),
            lambda: waits.drop("n", "c"),
            lambda: waits.prune(datetime.now(UTC)),
        ):
            with pytest.raises(StoreError, match="read-only"):
                await write()


# -- indexes ---------------------------------------------------------------------------


def _fill(path: Path, count: int) -> None:
    """``count`` WAITING workflows of ``n`` (half with a timer, half waiting for a
    signal, none due), as many messages, and running workflows of another name."""
    now = datetime.now(UTC)
    stamp = timestamp(now)
    columns = (
        "id, name, status, version, state, created_at, updated_at, owner, lease_until, "
        "cancel_requested, wake_at, wait_for, wait_key"
    )
    rows = [
        (
            f"w{index:06}",
            "n",
            WAITING,
            2,
            "{}",
            stamp,
            stamp,
            None,
            None,
            0,
            timestamp(now + timedelta(hours=1, seconds=index)) if index % 2 else None,
            None if index % 2 else "signal:S",
            None if index % 2 else f"k{index}",
        )
        for index in range(count)
    ]
    rows += [
        (f"r{index:06}", "other", "RUNNING", 1, "{}", stamp, stamp, None, None, 0, None, None, None)
        for index in range(count // 10)
    ]
    with sqlite3.connect(path) as conn:
        conn.executemany(
            f"INSERT INTO flowkit_workflows ({columns}) VALUES ({', '.join('?' * 13)})", rows
        )
        conn.executemany(
            "INSERT INTO flowkit_mailbox (name, channel, key, message_id, body, created_at, "
            "consumer) VALUES ('n', 'signal:T', ?, ?, '{}', ?, ?)",
            [
                (f"k{index}", f"m{index}", stamp, None if index % 3 else f"c{index}")
                for index in range(count)
            ],
        )
    sqlite3.connect(path).close()


def _steps(conn: sqlite3.Connection, run: Callable[[sqlite3.Connection], object]) -> int:
    """How many thousand SQLite virtual machine steps ``run(conn)`` takes."""
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    conn.set_progress_handler(tick, 1000)
    try:
        run(conn)
    finally:
        conn.set_progress_handler(None, 0)
    return counted[0]


def _plans(conn: sqlite3.Connection, run: Callable[[sqlite3.Connection], object]) -> list[str]:
    """The query plan lines of every statement ``run(conn)`` executes."""
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        run(conn)
    finally:
        conn.set_trace_callback(None)
    lines: list[str] = []
    for sql in statements:
        if sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            lines.extend(str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    return lines


def test_the_waits_read_through_indexes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    anyio.run(_created, path)
    _fill(path, 100_000)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        runs: dict[str, Callable[[sqlite3.Connection], object]] = {
            "next_wake": lambda c: waits_ops.next_wake(c, "n"),
            "claim_due": lambda c: waits_ops.claim_due(c, "n", "p1", LEASE, 100, []),
            "deliver": lambda c: waits_ops.deliver(c, "n", "signal:S", "k8", "new", "{}"),
            "take": lambda c: waits_ops.take(c, "n", "signal:T", "k7", "c7"),
            "drop": lambda c: waits_ops.drop(c, "n", "c3"),
            "prune": lambda c: waits_ops.prune(c, "2000-01-01", 100),
            "save_workflow": lambda c: ops.save_workflow(
                c, "w000004", WAITING, "{}", 2, [], None, None, (None, "signal:T", "k4")
            ),
            "request_cancel": lambda c: ops.request_cancel(c, "w000005"),
        }
        for what, run in runs.items():
            plan = _plans(conn, run)
            scans = [line for line in plan if line.startswith("SCAN") and "json_each" not in line]
            assert not scans, (what, plan)
        # One index entry read, not the 100,000 waiting workflows.
        for what in ("next_wake", "claim_due", "deliver", "take"):
            assert _steps(conn, runs[what]) < 5, what
    finally:
        conn.close()


# -- claims shared between stores ------------------------------------------------------


async def test_two_stores_on_one_file_never_claim_a_due_workflow_twice(tmp_path: Path) -> None:
    path = tmp_path / "due.db"
    count = 60
    claimed: dict[str, list[str]] = {}
    async with SQLiteStore(path) as first, SQLiteStore(path) as second:
        past = datetime.now(UTC) - timedelta(seconds=1)
        for index in range(count):
            record, _ = await first.create_workflow(_record(f"w{index:03}"))
            await first.save_workflow(_waiting(record, wake_at=past))

        async def claimer(store: SQLiteStore, owner: str) -> None:
            waits = store.wait_ops()
            mine: list[str] = []
            while True:
                got = await waits.claim_due("n", owner, lease=LEASE, limit=2, exclude=mine)
                if not got:
                    return
                for record in got:
                    assert record.owner == owner and record.status == WAITING
                    mine.append(record.id)
                    claimed.setdefault(record.id, []).append(owner)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for index in range(8):
                tg.start_soon(claimer, first if index % 2 else second, f"owner-{index}")
    assert not {wid: owners for wid, owners in claimed.items() if len(owners) > 1}
    assert sorted(claimed) == [f"w{index:03}" for index in range(count)]
    assert _rows(path, "SELECT DISTINCT version FROM flowkit_workflows") == [(3,)]


async def test_two_stores_on_one_file_never_take_a_message_twice(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    async with SQLiteStore(path) as first, SQLiteStore(path) as second:
        for index in range(20):
            await first.wait_ops().deliver("n", "signal:S", "k", f"m{index:02}", {"i": index})
        got: list[str] = []

        async def taker(store: SQLiteStore, consumer: str) -> None:
            mail = await store.wait_ops().take("n", "signal:S", "k", consumer)
            if mail is not None:
                got.append(mail.id)

        async with anyio.create_task_group() as tg:
            for index in range(30):
                tg.start_soon(taker, first if index % 2 else second, f"c{index}")
    assert sorted(got) == [f"m{index:02}" for index in range(20)]


# -- unreadable rows -------------------------------------------------------------------


async def test_unreadable_wait_columns_and_messages_are_named(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path) as store:
        for workflow_id in ("wake", "channel", "good"):
            record, _ = await store.create_workflow(_record(workflow_id))
            await store.save_workflow(
                _waiting(record, wake_at=datetime.now(UTC), wait_for="signal:S", wait_key="k")
            )
        await store.wait_ops().deliver("n", "signal:B", "k", "bad", {"card": SECRET})
    _execute(path, f"UPDATE flowkit_workflows SET wake_at = '{SECRET}' WHERE id = 'wake'")
    _execute(path, "UPDATE flowkit_workflows SET wait_for = X'05' WHERE id = 'channel'")
    _execute(path, f'UPDATE flowkit_mailbox SET body = \'{{"card": "{SECRET}\' WHERE 1')
    async with SQLiteStore(path) as store:
        assert [record.id for record in await store.list_workflows()] == ["good"]
        for workflow_id, problem in (
            ("wake", "its wake time is not a timestamp"),
            ("channel", "its wait channel is not text"),
        ):
            with pytest.raises(StoreError, match=problem) as caught:
                await store.load_workflow(workflow_id)
            assert SECRET not in str(caught.value)
        claimed = await store.wait_ops().claim_due("n", "p1", lease=LEASE)
        assert [record.id for record in claimed] == ["good"]
        # Held now, the readable ones are not counted: the damaged one wakes first.
        with pytest.raises(StoreError, match=r"'wake'.*its wake time is not a timestamp") as caught:
            await store.wait_ops().next_wake("n")
        assert SECRET not in str(caught.value)
        with pytest.raises(StoreError, match=r"'bad'.*its body is not valid JSON") as caught:
            await store.wait_ops().take("n", "signal:B", "k", "c")
        assert SECRET not in str(caught.value)
