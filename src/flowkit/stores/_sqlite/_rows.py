"""How records become SQLite rows and back: the columns, the row shapes, the timestamps.

Rows are checked on the way out: SQLite keeps whatever a column is given, and
a file may have been damaged or edited by hand. A row that does not make a
record raises :class:`~flowkit.stores._rows.UnreadableRow`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from ..._errors import StoreError
from .._base import DeadLetter, WorkflowRecord
from .._codec import decode_state, utc
from .._rows import UnreadableRow, json_object, letter_headers, letter_values
from .._waits import WAITING, Mail

__all__ = [
    "LETTER_COLUMNS",
    "WORKFLOW_COLUMNS",
    "HistoryRow",
    "LetterRow",
    "MailRow",
    "WaitRow",
    "WorkflowRow",
    "history_from_rows",
    "letter_from_row",
    "letter_row",
    "mail_from_row",
    "parse_timestamp",
    "timestamp",
    "wait_from_row",
    "wait_row",
    "workflow_from_row",
]

# id, consumer, topic, body, headers, error_type, error, attempts, failed_at, message_id
LetterRow = tuple[str, str, str, bytes, str, str, str, int, str, "str | None"]
# wake_at, wait_for, wait_key
WaitRow = tuple["str | None", "str | None", "str | None"]
# id, name, status, version, state, created_at, updated_at, owner, lease_until,
# cancel_requested, wake_at, wait_for, wait_key
WorkflowRow = tuple[
    str,
    str,
    str,
    int,
    str,
    str,
    str,
    "str | None",
    "str | None",
    int,
    "str | None",
    "str | None",
    "str | None",
]
# seq, entry
HistoryRow = tuple[int, str]
# message_id, body, created_at
MailRow = tuple[str, str, str]

LETTER_COLUMNS = (
    "id, consumer, topic, body, headers, error_type, error, attempts, failed_at, message_id"
)
WORKFLOW_COLUMNS = (
    "id, name, status, version, state, created_at, updated_at, owner, lease_until, "
    "cancel_requested, wake_at, wait_for, wait_key"
)


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
    return letter_values(letter, timestamp(utc(letter.failed_at, "DeadLetter.failed_at")))


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
    return DeadLetter(
        id=letter_id,
        consumer=row[1],
        topic=row[2],
        body=row[3],
        headers=letter_headers(row[4], letter_id),
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
    wake_at, wait_for, wait_key = wait_from_row(workflow_id, row[10:13])
    return WorkflowRecord(
        id=workflow_id,
        name=row[1],
        status=row[2],
        state=json_object(row[4], "workflow", workflow_id, "state"),
        version=row[3],
        created_at=_timestamp_of(row[5], "workflow", workflow_id, "creation time"),
        updated_at=_timestamp_of(row[6], "workflow", workflow_id, "update time"),
        owner=row[7],
        lease_until=None
        if lease_until is None
        else _timestamp_of(lease_until, "workflow", workflow_id, "lease time"),
        cancel_requested=row[9] == 1,
        wake_at=wake_at,
        wait_for=wait_for,
        wait_key=wait_key,
    )


def wait_row(record: WorkflowRecord) -> WaitRow:
    """What a written record waits for, as stored: nothing unless it is WAITING.

    Raises:
        StoreError: if a WAITING record's ``wake_at`` is naive.
    """
    if record.status != WAITING:
        return None, None, None
    wake_at = None if record.wake_at is None else timestamp(utc(record.wake_at, "wake_at"))
    return wake_at, record.wait_for, record.wait_key


def wait_from_row(
    workflow_id: object, row: tuple[object, ...]
) -> tuple[datetime | None, str | None, str | None]:
    """The wake time, channel and key a workflow's wait columns hold.

    Raises:
        UnreadableRow: if they are not a timestamp and texts (or NULL).
    """
    wake_at, wait_for, wait_key = row
    for what, value in (("channel", wait_for), ("key", wait_key)):
        if value is not None and not isinstance(value, str):
            raise UnreadableRow("workflow", workflow_id, f"its wait {what} is not text")
    return (
        None if wake_at is None else _timestamp_of(wake_at, "workflow", workflow_id, "wake time"),
        cast("str | None", wait_for),
        cast("str | None", wait_key),
    )


def mail_from_row(row: MailRow) -> Mail:
    """The mailbox message a row keeps.

    Raises:
        UnreadableRow: if the row does not make a message.
    """
    message_id = row[0]
    if not isinstance(message_id, str):
        raise UnreadableRow("mailbox message", message_id, "its id is not text")
    return Mail(
        id=message_id,
        body=json_object(row[1], "mailbox message", message_id, "body"),
        created_at=_timestamp_of(row[2], "mailbox message", message_id, "delivery time"),
    )


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


def _timestamp_of(text: object, kind: str, record_id: object, what: str) -> datetime:
    if isinstance(text, str):
        try:
            return parse_timestamp(text)
        except ValueError:
            pass
    raise UnreadableRow(kind, record_id, f"its {what} is not a timestamp")
