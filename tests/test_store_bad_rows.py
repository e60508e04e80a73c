"""One unreadable row (a damaged or hand-edited file) never blocks the others."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from flowkit._errors import NotFound, StoreError
from flowkit.stores import DeadLetter, SQLiteStore, WorkflowRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio

SECRET = "4111-1111-secret"

# Each: workflow id, the SQL that damages its row, and the problem a log names.
_BAD_WORKFLOWS = [
    ("w-json", "UPDATE flowkit_workflows SET state = ? WHERE id = ?", f'{{"card": "{SECRET}'),
    ("w-array", "UPDATE flowkit_workflows SET state = ? WHERE id = ?", f'["{SECRET}"]'),
    ("w-blob", "UPDATE flowkit_workflows SET state = ? WHERE id = ?", SECRET.encode()),
    ("w-version", "UPDATE flowkit_workflows SET version = ? WHERE id = ?", SECRET),
    ("w-time", "UPDATE flowkit_workflows SET updated_at = ? WHERE id = ?", SECRET),
]
_PROBLEMS = {
    "w-json": "its state is not valid JSON",
    "w-array": "its state is not a JSON object",
    "w-blob": "its state is not valid JSON",
    "w-version": "its version is not an integer",
    "w-time": "its update time is not a timestamp",
}

_BAD_LETTERS = [
    ("d-headers", "UPDATE flowkit_dead_letters SET headers = ? WHERE id = ?", f"{{{SECRET}"),
    ("d-header-values", "UPDATE flowkit_dead_letters SET headers = ? WHERE id = ?", '{"a": 1}'),
    ("d-body", "UPDATE flowkit_dead_letters SET body = ? WHERE id = ?", SECRET),
    ("d-attempts", "UPDATE flowkit_dead_letters SET attempts = ? WHERE id = ?", SECRET),
    ("d-time", "UPDATE flowkit_dead_letters SET failed_at = ? WHERE id = ?", f"2024-{SECRET}"),
]
_LETTER_PROBLEMS = {
    "d-headers": "its headers are not valid JSON",
    "d-header-values": "its headers are not all text",
    "d-body": "its body is not a blob",
    "d-attempts": "its attempt count is not an integer",
    "d-time": "its failure time is not a timestamp",
}


def _letter(letter_id: str, second: int) -> DeadLetter:
    return DeadLetter(
        id=letter_id,
        consumer="svc:h",
        topic="orders",
        body=b"{}",
        headers={"k": "v"},
        error_type="E",
        error="e",
        attempts=1,
        failed_at=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=second),
    )


def _damage(path: Path, damages: list[tuple[str, str, object]]) -> None:
    with sqlite3.connect(path) as conn:
        for row_id, sql, value in damages:
            assert conn.execute(sql, (value, row_id)).rowcount == 1
    sqlite3.connect(path).close()


async def _fill(path: Path) -> tuple[list[WorkflowRecord], list[DeadLetter]]:
    """Good and (soon) bad rows, interleaved, the first one bad."""
    good_records: list[WorkflowRecord] = []
    good_letters: list[DeadLetter] = []
    async with SQLiteStore(path) as store:
        for index, (bad_id, _, _) in enumerate(_BAD_WORKFLOWS):
            await store.create_workflow(WorkflowRecord(bad_id, "n", "RUNNING", {"ok": True}))
            record, _ = await store.create_workflow(
                WorkflowRecord(f"w-good-{index}", "n", "RUNNING", {"i": index})
            )
            good_records.append(record)
        for index, (bad_id, _, _) in enumerate(_BAD_LETTERS):
            await store.add_dead_letter(_letter(bad_id, 2 * index))
            letter = _letter(f"d-good-{index}", 2 * index + 1)
            await store.add_dead_letter(letter)
            good_letters.append(letter)
    _damage(path, [*_BAD_WORKFLOWS, *_BAD_LETTERS])
    return good_records, good_letters


def _check_logged(caplog: pytest.LogCaptureFixture, problems: dict[str, str]) -> None:
    """Each unreadable row was logged, naming its id and its problem."""
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for bad_id, problem in problems.items():
        assert any(repr(bad_id) in m and problem in m for m in warnings), (bad_id, warnings)


async def _check_refused(
    read: Callable[[str], Awaitable[object]], problems: dict[str, str]
) -> None:
    """Reading each unreadable row by id raises StoreError naming the id and the
    problem, never the stored value."""
    for bad_id, problem in problems.items():
        with pytest.raises(StoreError) as caught:
            await read(bad_id)
        assert not isinstance(caught.value, NotFound)
        assert repr(bad_id) in str(caught.value)
        assert problem in str(caught.value)
        assert SECRET not in str(caught.value)


@pytest.mark.parametrize("read_only", [False, True])
async def test_unreadable_workflows_are_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, read_only: bool
) -> None:
    path = tmp_path / "bad.db"
    good, _ = await _fill(path)
    caplog.set_level(logging.WARNING, logger="flowkit.stores")
    async with SQLiteStore(path, read_only=read_only) as store:
        assert await store.list_workflows() == good
        assert await store.list_workflows(status=["RUNNING"], name="n") == good
        _check_logged(caplog, _PROBLEMS)
        # A limit is filled with the readable records after the unreadable ones.
        assert await store.list_workflows(limit=1) == good[:1]
        assert await store.list_workflows(limit=3) == good[:3]
        assert await store.list_workflows(limit=len(good) + 5) == good
        assert await store.list_workflows(limit=0) == []
        await _check_refused(store.load_workflow, _PROBLEMS)
        for record in good:
            assert await store.load_workflow(record.id) == record
    assert SECRET not in caplog.text


@pytest.mark.parametrize("read_only", [False, True])
async def test_unreadable_dead_letters_are_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, read_only: bool
) -> None:
    path = tmp_path / "bad.db"
    _, good = await _fill(path)
    caplog.set_level(logging.WARNING, logger="flowkit.stores")
    async with SQLiteStore(path, read_only=read_only) as store:
        assert await store.list_dead_letters() == good
        assert await store.list_dead_letters(consumer="svc:h", topic="orders") == good
        _check_logged(caplog, _LETTER_PROBLEMS)
        assert await store.list_dead_letters(limit=1) == good[:1]
        assert await store.list_dead_letters(limit=4) == good[:4]
        assert await store.list_dead_letters(limit=0) == []
        await _check_refused(store.get_dead_letter, _LETTER_PROBLEMS)
    assert SECRET not in caplog.text


async def test_an_unreadable_dead_letter_can_be_deleted(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    _, good = await _fill(path)
    async with SQLiteStore(path) as store:
        for bad_id, _, _ in _BAD_LETTERS:
            await store.delete_dead_letter(bad_id)
            with pytest.raises(NotFound):
                await store.get_dead_letter(bad_id)
        assert await store.list_dead_letters() == good


async def test_an_unreadable_workflow_can_be_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "bad.db"
    await _fill(path)
    async with SQLiteStore(path) as store:
        saved = await store.save_workflow(WorkflowRecord("w-json", "n", "FAILED", {"x": 1}, 1))
        assert await store.load_workflow("w-json") == saved
