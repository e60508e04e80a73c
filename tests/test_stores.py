from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import signal
import sqlite3
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import pytest

from flowkit._errors import ConcurrencyConflict, StoreError, WorkflowNotFound
from flowkit.stores import (
    Claim,
    DeadLetter,
    MemoryStore,
    SQLiteStore,
    StateStore,
    WorkflowRecord,
)
from flowkit.stores._codec import encode_state, owner_lease
from flowkit.stores._sqlite import SCHEMA_VERSION
from flowkit.stores._sqlite._schema import _MIGRATIONS
from flowkit.stores._waits import WAITING
from flowkit.testing._store_suite import STORE_CHECKS, check_store

from ._util import race_two_claimers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    StoreFactory = Callable[[], StateStore]

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A fresh store per call: a new MemoryStore, or an SQLiteStore on a new file."""
    if request.param == "memory":
        return MemoryStore
    counter = itertools.count()
    return lambda: SQLiteStore(tmp_path / f"store-{next(counter)}.db")


@pytest.mark.parametrize("name", sorted(STORE_CHECKS))
async def test_conformance(name: str, factory: StoreFactory) -> None:
    await STORE_CHECKS[name](factory)


async def test_check_store_runs_every_check(factory: StoreFactory) -> None:
    await check_store(factory)


async def test_check_store_on_one_shared_sqlite_file(tmp_path: Path) -> None:
    # The checks must not expect an empty store: run them all against one database.
    await check_store(lambda: SQLiteStore(tmp_path / "shared.db"))


class _NoVersionCheck(MemoryStore):
    """A broken store: saves never conflict."""

    async def save_workflow(
        self, record: WorkflowRecord, *, history: Any = (), lease: float | None = None
    ) -> WorkflowRecord:
        current = self._workflows[record.id].version if record.id in self._workflows else 0
        return await super().save_workflow(
            dataclasses.replace(record, version=current), history=history, lease=lease
        )


class _Racy(MemoryStore):
    """A broken store: checks the version, yields, then writes (a lost update)."""

    async def save_workflow(
        self, record: WorkflowRecord, *, history: Any = (), lease: float | None = None
    ) -> WorkflowRecord:
        current = await self.load_workflow(record.id)
        if current.version != record.version:
            raise ConcurrencyConflict("stale")
        held = owner_lease(record.owner, lease)
        state_json = encode_state(record.state)
        await anyio.lowlevel.checkpoint()  # whatever is written meanwhile is lost
        stored = self._workflows[record.id]
        stored.status, stored.state_json = record.status, state_json
        stored.version += 1
        stored.updated_at = datetime.now(UTC)
        stored.history.extend(encode_state(entry) for entry in history)
        stored.hold(record.owner, held, stored.updated_at)
        stored.cancel_requested = stored.cancel_requested and record.status in ("RUNNING", WAITING)
        stored.wait(record, stored.updated_at, self._pending(record))
        return stored.record(record.id)


async def test_check_store_names_the_failed_checks() -> None:
    with pytest.raises(AssertionError) as caught:
        await check_store(_NoVersionCheck)
    message = str(caught.value)
    assert message.startswith("3 of ")  # the version check is also what fences a stale owner
    assert (
        "store check 'workflow_stale_save_conflicts' failed: a save at a stale version" in message
    )
    assert "'workflow_expired_lease_is_taken_over_and_fenced' failed: the checkpoint" in message
    with pytest.raises(AssertionError) as caught:
        await check_store(_Racy)
    message = str(caught.value)
    assert message.startswith("1 of ")
    assert "store check 'workflow_concurrent_saves_one_wins' failed: 20 of 20" in message
    with pytest.raises(AssertionError, match="store check 'workflow_stale_save_conflicts' failed"):
        await STORE_CHECKS["workflow_stale_save_conflicts"](_NoVersionCheck)


# -- MemoryStore --------------------------------------------------------------------


async def test_memory_store_keeps_records_when_reopened() -> None:
    store = MemoryStore()
    async with store:
        await store.create_workflow(WorkflowRecord("w", "n", "RUNNING", {"a": 1}))
    async with store:
        assert (await store.load_workflow("w")).state == {"a": 1}


async def test_memory_store_refuses_naive_failed_at() -> None:
    letter = DeadLetter("d", "c", "t", b"", {}, "E", "e", 1, datetime(2024, 1, 1))
    async with MemoryStore() as store:
        with pytest.raises(StoreError, match="timezone-aware"):
            await store.add_dead_letter(letter)


# -- SQLiteStore ---------------------------------------------------------------------


def _record(workflow_id: str, version: int = 0, **state: Any) -> WorkflowRecord:
    return WorkflowRecord(workflow_id, "test", "RUNNING", state, version)


def _flowkit_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flowkit-sqlite")]


def test_sqlite_store_validates_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "x.db", synchronous=cast("Any", "SOMETIMES"))
    with pytest.raises(ValueError, match="busy_timeout"):
        SQLiteStore(tmp_path / "x.db", busy_timeout=-1)
    store = SQLiteStore(tmp_path / "x.db", synchronous=cast("Any", "full"))
    assert store.synchronous == "FULL"
    assert store.path == str(tmp_path / "x.db")


async def test_sqlite_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "reopen.db"
    letter = DeadLetter(
        "d1", "svc:h", "orders", b"\xff\x00", {"k": "v"}, "E", "e", 2, datetime.now(UTC)
    )
    async with SQLiteStore(path) as store:
        record, _ = await store.create_workflow(_record("w1", step=0))
        saved = await store.save_workflow(_record("w1", record.version, step=1))
        await store.inbox_complete("svc:h", "m1")
        assert await store.inbox_claim("svc:h", "m2", lease=600) == Claim.CLAIMED
        await store.add_dead_letter(letter)
    assert not _flowkit_threads()
    async with SQLiteStore(path) as store:
        assert await store.load_workflow("w1") == saved
        assert await store.inbox_claim("svc:h", "m1", lease=600) == Claim.DONE
        assert await store.inbox_claim("svc:h", "m2", lease=600) == Claim.BUSY
        assert await store.get_dead_letter("d1") == letter
    # The same instance can be entered again, too.
    async with store:
        assert (await store.load_workflow("w1")).version == 2


async def test_sqlite_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteStore(path) as first, SQLiteStore(path) as second:
        created, _ = await first.create_workflow(_record("w", step=0))
        assert await second.load_workflow("w") == created
        saved = await second.save_workflow(_record("w", created.version, step=1))
        assert await first.load_workflow("w") == saved
        with pytest.raises(ConcurrencyConflict):
            await first.save_workflow(_record("w", created.version, step=2))
        assert await first.inbox_claim("c", "m", lease=600) == Claim.CLAIMED
        assert await second.inbox_claim("c", "m", lease=600) == Claim.BUSY
        await second.inbox_complete("c", "m")
        assert await first.inbox_claim("c", "m", lease=600) == Claim.DONE

        outcomes: list[bool] = []

        async def create(store: SQLiteStore, step: int) -> None:
            outcomes.append((await store.create_workflow(_record("race", step=step)))[1])

        async with anyio.create_task_group() as tg:
            for store, step in ((first, 1), (second, 2)) * 5:
                tg.start_soon(create, store, step)
        assert sorted(outcomes) == [False] * 9 + [True]


async def test_sqlite_schema_version_table(tmp_path: Path) -> None:
    path = tmp_path / "schema.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM flowkit_schema")]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    assert {"flowkit_inbox", "flowkit_dead_letters", "flowkit_workflows"} <= tables
    # Opening again applies nothing new.
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM flowkit_schema").fetchone()[0] == SCHEMA_VERSION


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO flowkit_schema (version, applied_at) VALUES (?, 'later')",
            (SCHEMA_VERSION + 1,),
        )
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*upgrade flowkit"):
        async with store:
            pass
    with pytest.raises(StoreError, match="not open"):
        await store.load_workflow("w")
    assert not _flowkit_threads()


async def test_sqlite_open_errors_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        async with SQLiteStore(tmp_path / "missing-dir" / "x.db"):
            pass
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not an SQLite database, not at all" * 100)
    with pytest.raises(StoreError) as caught:
        async with SQLiteStore(not_a_db):
            pass
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


@pytest.mark.parametrize(
    ("synchronous", "level"), [("OFF", 0), ("NORMAL", 1), ("FULL", 2), ("EXTRA", 3)]
)
async def test_sqlite_pragmas_applied(tmp_path: Path, synchronous: Any, level: int) -> None:
    async with SQLiteStore(tmp_path / "p.db", synchronous=synchronous, busy_timeout=2.5) as store:
        assert await store._read_pragma("journal_mode") == "wal"
        assert await store._read_pragma("synchronous") == level
        assert await store._read_pragma("busy_timeout") == 2500


async def test_sqlite_in_memory_database() -> None:
    async with SQLiteStore(":memory:") as store:
        record, created = await store.create_workflow(_record("w", a=1))
        assert created
        assert await store.load_workflow("w") == record


def _fail_after_losing_the_transaction(conn: sqlite3.Connection) -> None:
    conn.execute("ROLLBACK")
    raise sqlite3.OperationalError("disk I/O error (simulated)")


async def test_sqlite_failures_inside_a_group_commit_fail_alone(tmp_path: Path) -> None:
    """Calls queued while the writer waits for the lock share one transaction;
    a version conflict, a constraint error, and even an error that loses the
    whole transaction fail only their own caller."""
    path = tmp_path / "batch.db"
    async with SQLiteStore(path) as store:
        records = [(await store.create_workflow(_record(f"w{i}", i=i)))[0] for i in range(12)]
        gate, _ = await store.create_workflow(_record("gate"))
        outcomes: dict[str, object] = {}

        async def save(record: WorkflowRecord, version: int) -> None:
            try:
                outcomes[record.id] = await store.save_workflow(
                    _record(record.id, version, saved=True)
                )
            except StoreError as exc:
                outcomes[record.id] = exc

        async def add_bad_letter() -> None:
            bad = DeadLetter("bad", cast("Any", None), "t", b"", {}, "E", "e", 1, datetime.now(UTC))
            try:
                await store.add_dead_letter(bad)
            except StoreError as exc:
                outcomes["bad-letter"] = exc

        async def lose_transaction() -> None:
            try:
                await store._call(_fail_after_losing_the_transaction, write=True)
            except StoreError as exc:
                outcomes["lost"] = exc

        async def run_batch(*extra: Callable[[], Any]) -> int:
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")  # the writer will wait for this lock
            before = store._transactions
            async with anyio.create_task_group() as tg:
                tg.start_soon(save, gate, (await store.load_workflow("gate")).version)
                await anyio.sleep(0.2)  # the gate's batch now waits for the lock
                for index, record in enumerate(records):
                    tg.start_soon(save, record, 99 if index == 5 else record.version)
                    if index == 8:
                        for start in extra:
                            tg.start_soon(start)
                await anyio.sleep(0.2)  # all queued behind the gate
                blocker.execute("COMMIT")
                blocker.close()
            return store._transactions - before

        assert await run_batch(add_bad_letter) == 2  # the gate's, then all the rest in one
        assert isinstance(outcomes["w5"], ConcurrencyConflict)
        assert type(outcomes["bad-letter"]) is StoreError
        assert isinstance(outcomes["bad-letter"].__cause__, sqlite3.Error)
        for index, record in enumerate(records):
            loaded = await store.load_workflow(record.id)
            if index == 5:
                assert loaded == record
            else:
                assert loaded.version == 2
                assert loaded.state == {"saved": True}
                assert outcomes[record.id] == loaded
        records = [await store.load_workflow(record.id) for record in records]

        # The lost transaction is retried call by call: only the culprit fails.
        assert await run_batch(lose_transaction) >= 2
        assert "simulated" in str(outcomes["lost"])
        for index, record in enumerate(records):
            loaded = await store.load_workflow(record.id)
            assert loaded.version == record.version + (index != 5)


async def test_sqlite_busy_timeout_gives_store_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    async with SQLiteStore(path, busy_timeout=0.05) as store:
        record, _ = await store.create_workflow(_record("w"))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreError, match="locked") as caught:
                await store.save_workflow(_record("w", record.version, x=1))
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert await store.load_workflow("w") == record  # reads are not blocked (WAL)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await store.save_workflow(_record("w", record.version, x=1))).version == 2


async def test_sqlite_cancelled_call_leaves_the_store_working(tmp_path: Path) -> None:
    path = tmp_path / "cancel.db"
    async with SQLiteStore(path) as store:
        record, _ = await store.create_workflow(_record("w"))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        with anyio.move_on_after(0.05) as scope:
            await store.save_workflow(_record("w", record.version, x=1))
        assert scope.cancelled_caught
        blocker.execute("COMMIT")
        blocker.close()
        # The cancelled save had already started, so it may or may not have been applied.
        current = await store.load_workflow("w")
        assert current.version in (1, 2)
        saved = await store.save_workflow(_record("w", current.version, x=2))
        assert saved.version == current.version + 1


async def test_sqlite_closed_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "closed.db")
    with pytest.raises(StoreError, match="not open"):
        await store.inbox_claim("c", "m", lease=600)
    async with store:
        await store.aclose()
        await store.aclose()  # idempotent
        with pytest.raises(StoreError, match="not open"):
            await store.inbox_complete("c", "m")
    assert not _flowkit_threads()
    with pytest.raises(WorkflowNotFound):
        async with store:
            await store.load_workflow("nope")
    assert not _flowkit_threads()


async def test_sqlite_concurrent_enter_opens_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "enter.db")
    entered = anyio.Event()
    release = anyio.Event()
    inside = 0

    async def user() -> None:
        nonlocal inside
        async with store:
            inside += 1
            if inside == 5:
                entered.set()
            await release.wait()
            await store.inbox_complete("c", f"m{inside}")

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(user)
        await entered.wait()
        assert len(_flowkit_threads()) == 1
        release.set()
    assert not _flowkit_threads()


_KILLED_WRITER = """
import sys

import anyio

from flowkit.stores import SQLiteStore, WorkflowRecord


async def main(path: str) -> None:
    async with SQLiteStore(path) as store:
        record, _ = await store.create_workflow(WorkflowRecord("w", "kill", "RUNNING", {"step": 0}))
        for step in range(1, 21):
            record = await store.save_workflow(
                WorkflowRecord("w", "kill", "RUNNING", {"step": step}, record.version)
            )
        await store.inbox_complete("svc:h", "last")
        print(record.version, flush=True)
        await anyio.sleep(60)


anyio.run(main, sys.argv[1])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
async def test_sqlite_write_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    async with await anyio.open_process([sys.executable, "-c", _KILLED_WRITER, str(path)]) as proc:
        assert proc.stdout is not None
        output = b""
        with anyio.fail_after(30):
            while not output.endswith(b"\n"):
                output += await proc.stdout.receive()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "killed.db-wal").exists()  # recovery must come from the WAL
    async with SQLiteStore(path) as store:
        record = await store.load_workflow("w")
        assert record.version == int(output) == 21
        assert record.state == {"step": 20}
        assert await store.inbox_claim("svc:h", "last", lease=600) == Claim.DONE


# -- the inbox, on both stores ---------------------------------------------------------


def test_stores_exports_exactly_the_public_names() -> None:
    import flowkit.stores

    assert sorted(flowkit.stores.__all__) == [
        "Claim",
        "DeadLetter",
        "MemoryStore",
        "PostgresStore",
        "SQLiteStore",
        "StateStore",
        "WorkflowRecord",
        "from_url",
    ]
    assert [claim.value for claim in Claim] == ["claimed", "done", "busy"]


@pytest.mark.parametrize("lease", [0, -1.0, float("nan"), float("inf"), cast("Any", "5"), True])
async def test_inbox_claim_refuses_a_lease_that_is_not_a_positive_number(
    factory: StoreFactory, lease: Any
) -> None:
    async with factory() as store:
        with pytest.raises(StoreError, match="lease"):
            await store.inbox_claim("c", "m", lease=lease)
        assert await store.inbox_claim("c", "m", lease=600) == Claim.CLAIMED


async def test_inbox_claim_takes_a_huge_lease(factory: StoreFactory) -> None:
    async with factory() as store:
        assert await store.inbox_claim("c", "m", lease=1e300) == Claim.CLAIMED
        assert await store.inbox_claim("c", "m", lease=1e300) == Claim.BUSY


async def test_inbox_prune_forgets_expired_claims_but_keeps_held_ones(
    factory: StoreFactory,
) -> None:
    async with factory() as store:
        assert await store.inbox_claim("c", "expired", lease=0.01) == Claim.CLAIMED
        assert await store.inbox_claim("c", "held", lease=600) == Claim.CLAIMED
        await store.inbox_complete("c", "done")
        await anyio.sleep(0.05)
        assert await store.inbox_prune(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert await store.inbox_prune(datetime.now(UTC) + timedelta(hours=1)) == 2
        assert await store.inbox_claim("c", "held", lease=600) == Claim.BUSY
        assert await store.inbox_claim("c", "done", lease=600) == Claim.CLAIMED
        assert await store.inbox_claim("c", "expired", lease=600) == Claim.CLAIMED


async def check_prune_defaults(store: StateStore) -> None:
    """What prune_workflows removes by default, and how a caller loops over batches."""
    statuses = ["RUNNING", "COMPENSATING", "COMPLETED", "COMPENSATED", "FAILED"]
    for status in statuses:
        await store.create_workflow(WorkflowRecord(f"w-{status}", "Saga", status, {}))
    await anyio.sleep(0.01)
    cutoff = datetime.now(UTC) + timedelta(hours=1)
    assert await store.prune_workflows(cutoff) == 3
    left = await store.list_workflows()
    assert sorted(record.status for record in left) == ["COMPENSATING", "RUNNING"]
    assert await store.prune_workflows(cutoff) == 0
    letters = [
        dataclasses.replace(_numbered_letter(index), id=f"prune-{index}") for index in range(7)
    ]
    for letter in letters:
        await store.add_dead_letter(letter)
    batches = []
    while (removed := await store.prune_dead_letters(cutoff, limit=3)) > 0:
        batches.append(removed)
    assert batches == [3, 3, 1]
    assert await store.list_dead_letters() == []


async def test_prune_by_default_leaves_unfinished_workflows(factory: StoreFactory) -> None:
    async with factory() as store:
        await check_prune_defaults(store)


async def test_prune_dead_letters_of_one_consumer_or_topic(factory: StoreFactory) -> None:
    async with factory() as store:
        for index in range(3):
            await store.add_dead_letter(_numbered_letter(index))
        cutoff = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=2)
        assert await store.prune_dead_letters(cutoff, consumer="svc:other") == 0
        assert await store.prune_dead_letters(cutoff, topic="orders") == 2
        assert [letter.id for letter in await store.list_dead_letters()] == ["d002"]


def test_sqlite_prunes_workflows_through_an_index(tmp_path: Path) -> None:
    async def create() -> None:
        async with SQLiteStore(tmp_path / "store.db"):
            pass

    anyio.run(create)
    with sqlite3.connect(tmp_path / "store.db") as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT rowid FROM flowkit_workflows "
            "WHERE status IN (?) AND updated_at < ? ORDER BY updated_at, rowid LIMIT ?",
            ("COMPLETED", "2024", 10),
        ).fetchall()
    conn.close()
    assert any("flowkit_workflows_status_updated_at" in str(row) for row in plan), plan


async def test_a_read_only_sqlite_store_refuses_to_prune(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SQLiteStore(path):
        pass
    async with SQLiteStore(path, read_only=True) as store:
        now = datetime.now(UTC)
        with pytest.raises(StoreError, match="read-only"):
            await store.prune_dead_letters(now)
        with pytest.raises(StoreError, match="read-only"):
            await store.prune_workflows(now)


# -- MemoryStore: the dead letter bound ---------------------------------------------------


def _numbered_letter(index: int) -> DeadLetter:
    return DeadLetter(
        id=f"d{index:03}",
        consumer="svc:h",
        topic="orders",
        body=b'{"card": "4111-secret-body"}',
        headers={"authorization": "Bearer secret-header"},
        error_type="ValueError",
        error="secret-error-text",
        attempts=3,
        failed_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=index),
    )


@pytest.mark.parametrize("bound", [0, -3, cast("Any", 2.5), cast("Any", True)])
def test_memory_store_refuses_a_bad_dead_letter_bound(bound: Any) -> None:
    with pytest.raises(ValueError, match="max_dead_letters"):
        MemoryStore(max_dead_letters=bound)


async def test_memory_store_drops_the_earliest_dead_letters_past_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowkit.stores")
    async with MemoryStore(max_dead_letters=10) as store:
        for index in range(10):
            await store.add_dead_letter(_numbered_letter(index))
        assert not caplog.records
        await store.add_dead_letter(_numbered_letter(10))  # one past: down to 9
        kept = [letter.id for letter in await store.list_dead_letters(limit=100)]
        assert kept == [f"d{index:03}" for index in range(2, 11)]
        assert len(caplog.records) == 1
        assert "dropped the 2 earliest dead letter(s)" in caplog.records[0].getMessage()
        assert caplog.records[0].levelno == logging.WARNING
        for index in range(11, 40):
            await store.add_dead_letter(_numbered_letter(index))
            assert len(await store.list_dead_letters(limit=100)) <= 10
        kept = [letter.id for letter in await store.list_dead_letters(limit=100)]
        assert kept[-1] == "d039"
        assert kept == sorted(kept)
        await store.add_dead_letter(_numbered_letter(39))  # already kept: nothing dropped
    batches = len(caplog.records)
    assert 1 < batches <= 30 // 2  # batches, not one warning per letter
    for secret in ("secret-body", "secret-header", "secret-error-text"):
        assert secret not in caplog.text


async def test_memory_store_bound_of_one() -> None:
    async with MemoryStore(max_dead_letters=1) as store:
        for index in range(3):
            await store.add_dead_letter(_numbered_letter(index))
        assert [letter.id for letter in await store.list_dead_letters()] == ["d002"]


async def test_memory_store_without_a_bound_keeps_every_letter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="flowkit.stores")
    async with MemoryStore() as store:
        for index in range(300):
            await store.add_dead_letter(_numbered_letter(index))
        assert len(await store.list_dead_letters(limit=1000)) == 300
    assert not caplog.records


# -- SQLiteStore: the inbox ------------------------------------------------------------------


def _create_schema_version_1(path: Path) -> None:
    """A database as the first released schema left it, with one handled message."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE flowkit_schema (version INTEGER NOT NULL PRIMARY KEY, "
            "applied_at TEXT NOT NULL)"
        )
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO flowkit_schema VALUES (1, '2024-01-01T00:00:00.000000+00:00')")
        conn.execute(
            "INSERT INTO flowkit_inbox VALUES ('svc:h', 'handled', "
            "'2024-01-01T00:00:00.000000+00:00')"
        )
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def test_sqlite_migrates_the_inbox_of_schema_version_1(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _create_schema_version_1(path)
    async with SQLiteStore(path) as store:
        # A message handled under the old schema stays handled.
        assert await store.inbox_claim("svc:h", "handled", lease=600) == Claim.DONE
        assert await store.inbox_claim("svc:h", "new", lease=600) == Claim.CLAIMED
        assert await store.inbox_prune(datetime(2024, 6, 1, tzinfo=UTC)) == 1
        assert await store.inbox_claim("svc:h", "handled", lease=600) == Claim.CLAIMED
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM flowkit_schema")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_sqlite_two_stores_on_one_file_claim_each_pair_once(tmp_path: Path) -> None:
    path = tmp_path / "claims.db"
    pairs, per_pair = 20, 6
    answers: dict[str, list[Claim]] = {f"m{i}": [] for i in range(pairs)}
    async with SQLiteStore(path) as first, SQLiteStore(path) as second:

        async def claim(store: SQLiteStore, message_id: str) -> None:
            answers[message_id].append(await store.inbox_claim("c", message_id, lease=600))

        async with anyio.create_task_group() as tg:
            for round_ in range(per_pair):
                for message_id in answers:
                    tg.start_soon(claim, first if round_ % 2 else second, message_id)
    for message_id, got in answers.items():
        assert got.count(Claim.CLAIMED) == 1, (message_id, got)
        assert got.count(Claim.BUSY) == per_pair - 1, (message_id, got)


#: A process that claims the pairs ``m0``, ``m1``, ... of the store at a URL from
#: four tasks. Arguments: the URL, the number of pairs, the pause after each
#: claim (seconds), the store's keyword arguments as JSON.
CLAIMER = """
import json
import sys

import anyio

from flowkit.stores import Claim, from_url


async def main(url: str, pairs: int, pause: float, options: dict) -> None:
    async with from_url(url, **options) as store:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # wait for the go
        claimed: list[str] = []
        todo = iter(range(pairs))

        async def claimer() -> None:
            # A few claims at a time, with pauses that leave the store free
            # (SQLite's write lock), so that both processes race on each pair.
            for index in todo:
                message_id = f"m{index}"
                if await store.inbox_claim("svc:h", message_id, lease=600) == Claim.CLAIMED:
                    claimed.append(message_id)
                await anyio.sleep(pause)

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(claimer)
    print(json.dumps(claimed), flush=True)


anyio.run(main, sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]))
"""


async def check_two_processes_claim_each_pair_once(
    url: str, pause: float, **options: object
) -> None:
    """Two :data:`CLAIMER` processes race on 200 pairs of the store at ``url``
    (created before): each pair is claimed exactly once."""
    pairs = 200
    command = [sys.executable, "-c", CLAIMER, url, str(pairs), str(pause), json.dumps(options)]
    everything = sorted(await race_two_claimers(command))
    assert everything == sorted(f"m{index}" for index in range(pairs))  # each exactly once


async def test_sqlite_two_processes_claim_each_pair_once(tmp_path: Path) -> None:
    path = tmp_path / "processes.db"
    async with SQLiteStore(path):
        pass  # created and migrated before the race
    await check_two_processes_claim_each_pair_once(f"sqlite:///{path}", 0.002)
