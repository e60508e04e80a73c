"""SQLiteStore(path, read_only=True): inspecting a database without changing it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from flowkit._errors import NotFound, StoreError, WorkflowNotFound
from flowkit.stores import DeadLetter, SQLiteStore, WorkflowRecord
from flowkit.stores._sqlite import SCHEMA_VERSION
from flowkit.stores._sqlite._schema import _MIGRATIONS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio


def _letter(letter_id: str) -> DeadLetter:
    return DeadLetter(
        letter_id, "svc:h", "orders", b"body", {"k": "v"}, "E", "e", 1, datetime.now(UTC)
    )


async def _filled(path: Path) -> tuple[WorkflowRecord, DeadLetter]:
    async with SQLiteStore(path) as store:
        record, _ = await store.create_workflow(WorkflowRecord("w1", "n", "RUNNING", {"a": 1}))
        letter = _letter("d1")
        await store.add_dead_letter(letter)
        await store.inbox_complete("svc:h", "m1")
    return record, letter


def _files(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def _schema_versions(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM flowkit_schema")]


async def test_read_only_reads_everything(tmp_path: Path) -> None:
    path = tmp_path / "flowkit.db"
    record, letter = await _filled(path)
    store = SQLiteStore(path, read_only=True)
    assert store.read_only
    assert "read-only" in repr(store)
    async with store:
        assert await store.load_workflow("w1") == record
        assert await store.list_workflows() == [record]
        assert await store.list_workflows(status=["RUNNING"], name="n", limit=1) == [record]
        assert await store.get_dead_letter("d1") == letter
        assert await store.list_dead_letters(consumer="svc:h") == [letter]
        with pytest.raises(WorkflowNotFound):
            await store.load_workflow("nope")
        with pytest.raises(NotFound):
            await store.get_dead_letter("nope")


async def test_read_only_sees_what_a_writer_writes_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    await _filled(path)
    async with SQLiteStore(path) as writer, SQLiteStore(path, read_only=True) as reader:
        created, _ = await writer.create_workflow(WorkflowRecord("w2", "n", "RUNNING", {}))
        assert await reader.load_workflow("w2") == created


def _writes(store: SQLiteStore) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    record = WorkflowRecord("w1", "n", "DONE", {}, 1)
    return [
        ("inbox_claim", lambda: store.inbox_claim("svc:h", "m2", lease=60)),
        ("inbox_complete", lambda: store.inbox_complete("svc:h", "m2")),
        ("inbox_release", lambda: store.inbox_release("svc:h", "m1")),
        ("inbox_prune", lambda: store.inbox_prune(datetime.now(UTC))),
        ("add_dead_letter", lambda: store.add_dead_letter(_letter("d2"))),
        ("delete_dead_letter", lambda: store.delete_dead_letter("d1")),
        ("create_workflow", lambda: store.create_workflow(WorkflowRecord("w3", "n", "R", {}))),
        ("save_workflow", lambda: store.save_workflow(record)),
    ]


async def test_read_only_refuses_every_write(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    record, letter = await _filled(path)
    before = path.read_bytes()
    async with SQLiteStore(path, read_only=True) as store:
        for what, write in _writes(store):
            with pytest.raises(StoreError, match="is read-only") as caught:
                await write()
            message = str(caught.value)
            assert what in message, message
            assert "\n" not in message
    async with SQLiteStore(path) as store:
        assert await store.list_workflows() == [record]
        assert await store.list_dead_letters() == [letter]
    assert path.read_bytes() == before


async def test_read_only_never_creates_a_database(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StoreError) as caught:
        async with SQLiteStore(path, read_only=True):
            pass
    assert str(caught.value) == f"no database at {path}"
    assert _files(tmp_path) == []
    with pytest.raises(StoreError, match="no database at"):  # a directory is no database
        async with SQLiteStore(tmp_path, read_only=True):
            pass


@pytest.mark.parametrize("content", ["empty", "other tables"])
async def test_read_only_refuses_a_file_without_flowkit_data(tmp_path: Path, content: str) -> None:
    path = tmp_path / "other.db"
    if content == "empty":
        path.touch()
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
        sqlite3.connect(path).close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as caught:
        async with SQLiteStore(path, read_only=True):
            pass
    assert str(caught.value) == f"{path} holds no flowkit data"
    assert path.read_bytes() == before


async def test_read_only_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    await _filled(path)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO flowkit_schema (version, applied_at) VALUES (?, 'later')",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(StoreError, match=r"newer than.*upgrade flowkit"):
        async with SQLiteStore(path, read_only=True):
            pass


async def test_read_only_refuses_a_schema_too_old_to_read_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE flowkit_schema (version INTEGER NOT NULL PRIMARY KEY, "
            "applied_at TEXT NOT NULL)"
        )
        for version in (1, 2, 3):
            for statement in _MIGRATIONS[version - 1]:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO flowkit_schema VALUES (?, '2024-01-01T00:00:00.000000+00:00')",
                (version,),
            )
    sqlite3.connect(path).close()
    with pytest.raises(StoreError, match="too old to read without upgrading it"):
        async with SQLiteStore(path, read_only=True):
            pass
    with sqlite3.connect(path) as conn:
        assert [row[0] for row in conn.execute("SELECT version FROM flowkit_schema")] == [1, 2, 3]
    async with SQLiteStore(path) as store:  # opened to write: migrated
        assert await store.list_workflows() == []


async def test_read_only_never_migrates_or_changes_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    await _filled(path)
    async with SQLiteStore(path, read_only=True) as store:
        assert await store._read_pragma("journal_mode") == "wal"
    assert _schema_versions(path) == list(range(1, SCHEMA_VERSION + 1))


def test_read_only_needs_a_file() -> None:
    with pytest.raises(ValueError, match="read-only"):
        SQLiteStore(":memory:", read_only=True)
