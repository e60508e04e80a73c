"""How records become table rows and back: the columns, the row shapes, the timestamps.

Rows are checked on the way out: SQLite keeps whatever a column is given, and
a file may have been damaged or edited by hand. A row that does not make a
record raises :class:`UnreadableRow`, which names the record and what is wrong
with it, never the stored value.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json

from ..._errors import StoreError
from .._base import DeadLetter, WorkflowRecord
from .._codec import decode_state, utc

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "LETTER_COLUMNS",
    "WORKFLOW_COLUMNS",
    "HistoryRow",
    "LetterRow",
    "UnreadableRow",
    "WorkflowRow",
    "history_entries",
    "history_from_rows",
    "letter_from_row",
    "letter_row",
    "parse_timestamp",
    "timestamp",
    "workflow_from_row",
]

# id, consumer, topic, body, headers, error_type, error, attempts, failed_at, message_id
LetterRow = tuple[str, str, str, bytes, str, str, str, int, str, "str | None"]
# id, name, status, version, state, created_at, updated_at, owner, lease_until,
# cancel_requested
WorkflowRow = tuple[str, str, str, int, str, str, str, "str | None", "str | None", int]
# seq, entry
HistoryRow = tuple[int, str]

LETTER_COLUMNS = (
    "id, consumer, topic, body, headers, error_type, error, attempts, failed_at, message_id"
)
WORKFLOW_COLUMNS = (
    "id, name, status, version, state, created_at, updated_at, owner, lease_until, cancel_requested"
)


class UnreadableRow(StoreError):
    """A stored row that does not make a record (the file was damaged or edited).

    Attributes:
        kind: what the record is (``"workflow"``, ``"dead letter"``).
        record_id: the record's id, as stored.
        problem: what is wrong, in words (never the stored value).
    """

    def __init__(self, kind: str, record_id: object, problem: str) -> None:
        self.kind = kind
        self.record_id = record_id
        self.problem = problem
        super().__init__(f"the stored {kind} {record_id!r} cannot be read: {problem}")


def timestamp(value: datetime) -> str:
    """``value`` as stored: UTC, fixed width, so that text order is time order in SQL."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_timestamp(text: str) -> datetime:
    """A stored timestamp as a UTC datetime.

    Raises:
        ValueError: if ``text`` is not a timestamp.
    """
    return datetime.fromisoformat(text).astimezone(UTC)


def letter_row(letter: DeadLetter) -> LetterRow:
    """The row that keeps ``letter``.

    Raises:
        StoreError: if ``letter.failed_at`` is naive or the headers are not
            JSON-serializable.
    """
    failed_at = timestamp(utc(letter.failed_at, "DeadLetter.failed_at"))
    try:
        headers = json.dumps(dict(letter.headers), separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"dead letter headers are not JSON-serializable: {exc}") from exc
    return (
        letter.id,
        letter.consumer,
        letter.topic,
        bytes(letter.body),
        headers,
        letter.error_type,
        letter.error,
        letter.attempts,
        failed_at,
        letter.message_id,
    )


def letter_from_row(row: LetterRow) -> DeadLetter:
    """The dead letter a row keeps.

    Raises:
        UnreadableRow: if the row does not make a dead letter.
    """
    letter_id = row[0]
    problem = _text_problem(row, (0, "id"), (1, "consumer"), (2, "topic"))
    problem = problem or _text_problem(row, (5, "error type"), (6, "error"))
    if problem is None and not isinstance(row[3], bytes):
        problem = "its body is not a blob"
    if problem is None and not _is_int(row[7]):
        problem = "its attempt count is not an integer"
    if problem is None and row[9] is not None and not isinstance(row[9], str):
        problem = "its message id is not text"
    if problem is not None:
        raise UnreadableRow("dead letter", letter_id, problem)
    headers = _json_object(row[4], "dead letter", letter_id, "headers")
    if not all(isinstance(value, str) for value in headers.values()):
        raise UnreadableRow("dead letter", letter_id, "its headers are not all text")
    return DeadLetter(
        id=letter_id,
        consumer=row[1],
        topic=row[2],
        body=row[3],
        headers=headers,
        error_type=row[5],
        error=row[6],
        attempts=row[7],
        failed_at=_timestamp_of(row[8], "dead letter", letter_id, "failure time"),
        message_id=row[9],
    )


def workflow_from_row(row: WorkflowRow) -> WorkflowRecord:
    """The workflow record a row keeps (without its history).

    Raises:
        UnreadableRow: if the row does not make a workflow record.
    """
    workflow_id = row[0]
    problem = _text_problem(row, (0, "id"), (1, "name"), (2, "status"))
    if problem is None and not _is_int(row[3]):
        problem = "its version is not an integer"
    if problem is None and row[7] is not None and not isinstance(row[7], str):
        problem = "its owner is not text"
    if problem is None and row[9] not in (0, 1):
        problem = "its cancel request is not 0 or 1"
    if problem is not None:
        raise UnreadableRow("workflow", workflow_id, problem)
    lease_until = row[8]
    return WorkflowRecord(
        id=workflow_id,
        name=row[1],
        status=row[2],
        state=_json_object(row[4], "workflow", workflow_id, "state"),
        version=row[3],
        created_at=_timestamp_of(row[5], "workflow", workflow_id, "creation time"),
        updated_at=_timestamp_of(row[6], "workflow", workflow_id, "update time"),
        owner=row[7],
        lease_until=None
        if lease_until is None
        else _timestamp_of(lease_until, "workflow", workflow_id, "lease time"),
        cancel_requested=row[9] == 1,
    )


def history_entries(entries: Sequence[Sequence[Any]]) -> list[str]:
    """History entries as stored: JSON text, converted as the state is (tuples
    become arrays). Their shape is the engine's to check when it reads them.

    Raises:
        StoreError: if an entry has no JSON form.
    """
    encoded: list[str] = []
    for index, entry in enumerate(entries):
        try:
            encoded.append(to_json(entry).decode())
        except ValueError as exc:
            raise StoreError(f"history entry {index} is not JSON-serializable: {exc}") from exc
    return encoded


def history_from_rows(workflow_id: str, rows: list[HistoryRow]) -> tuple[Any, ...]:
    """The history entries of a workflow's rows (ordered by ``seq``), decoded.

    Raises:
        UnreadableRow: if an entry is not JSON text (it names the entry's
            position in the history, never its value).
    """
    entries: list[Any] = []
    for index, (_, text) in enumerate(rows):
        if not isinstance(text, str | bytes):
            raise UnreadableRow("workflow", workflow_id, f"its history entry {index} is not text")
        try:
            entries.append(decode_state(text, "history entry"))
        except StoreError as exc:
            raise UnreadableRow(
                "workflow", workflow_id, f"its history entry {index} is not valid JSON"
            ) from exc
    return tuple(entries)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text_problem(row: tuple[object, ...], *columns: tuple[int, str]) -> str | None:
    for index, what in columns:
        if not isinstance(row[index], str):
            return f"its {what} is not text"
    return None


def _json_object(text: object, kind: str, record_id: object, what: str) -> dict[str, Any]:
    """The JSON object a column holds; ``what`` names the column ("its state is ...")."""
    verb = "are" if what.endswith("s") else "is"
    if not isinstance(text, str | bytes):
        raise UnreadableRow(kind, record_id, f"its {what} {verb} not text")
    try:
        value: object = decode_state(text, f"{kind} {what}")
    except StoreError as exc:
        raise UnreadableRow(kind, record_id, f"its {what} {verb} not valid JSON") from exc
    if not isinstance(value, dict):
        raise UnreadableRow(kind, record_id, f"its {what} {verb} not a JSON object")
    return value


def _timestamp_of(text: object, kind: str, record_id: object, what: str) -> datetime:
    if isinstance(text, str):
        try:
            return parse_timestamp(text)
        except ValueError:
            pass
    raise UnreadableRow(kind, record_id, f"its {what} is not a timestamp")
