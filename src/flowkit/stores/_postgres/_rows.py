"""How records become query arguments and rows become records.

The columns are typed, so PostgreSQL itself keeps most nonsense out; what a
column of type ``jsonb`` holds is checked on the way out (a hand-edited row
may hold an array where an object belongs). A row that does not make a record
raises :class:`~flowkit.stores._rows.UnreadableRow`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._base import DeadLetter, WorkflowRecord
from .._codec import decode_state, utc
from .._rows import UnreadableRow, json_object, letter_headers, letter_values
from .._waits import WAITING, Mail

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

__all__ = [
    "LETTER_COLUMNS",
    "MAIL_COLUMNS",
    "WORKFLOW_COLUMNS",
    "history_from_text",
    "letter_args",
    "letter_from_row",
    "mail_from_row",
    "wait_args",
    "workflow_from_row",
]

#: The columns of a dead letter row, ``headers`` as JSON text.
LETTER_COLUMNS = (
    "id, consumer, topic, body, headers::text AS headers, error_type, error, attempts, "
    "failed_at, message_id"
)
#: The columns of a workflow row, ``state`` as JSON text.
WORKFLOW_COLUMNS = (
    "id, name, status, version, state::text AS state, created_at, updated_at, "
    "owner, lease_until, cancel_requested, wake_at, wait_for, wait_key"
)
#: The columns of a mailbox row, ``body`` as JSON text.
MAIL_COLUMNS = "message_id, body::text AS body, created_at"


def letter_args(letter: DeadLetter) -> tuple[Any, ...]:
    """The values of a dead letter's columns, in :data:`LETTER_COLUMNS` order.

    Raises:
        StoreError: if ``letter.failed_at`` is naive or the headers are not
            JSON-serializable.
    """
    return letter_values(letter, utc(letter.failed_at, "DeadLetter.failed_at"))


def wait_args(record: WorkflowRecord) -> tuple[datetime | None, str | None, str | None]:
    """The ``wake_at``, ``wait_for`` and ``wait_key`` a record is written with:
    its own when it is WAITING, all None otherwise.

    Raises:
        StoreError: if a WAITING record's ``wake_at`` is naive.
    """
    if record.status != WAITING:
        return None, None, None
    wake_at = None if record.wake_at is None else utc(record.wake_at, "wake_at")
    return wake_at, record.wait_for, record.wait_key


def letter_from_row(row: Mapping[str, Any]) -> DeadLetter:
    """The dead letter a row keeps.

    Raises:
        UnreadableRow: if its headers are not a JSON object of strings.
    """
    return DeadLetter(
        id=row["id"],
        consumer=row["consumer"],
        topic=row["topic"],
        body=bytes(row["body"]),
        headers=letter_headers(row["headers"], row["id"]),
        error_type=row["error_type"],
        error=row["error"],
        attempts=row["attempts"],
        failed_at=row["failed_at"],
        message_id=row["message_id"],
    )


def workflow_from_row(
    row: Mapping[str, Any], history: Sequence[Sequence[Any]] = ()
) -> WorkflowRecord:
    """The workflow record a row keeps, with ``history`` when it was read too.

    Raises:
        UnreadableRow: if its state is not a JSON object.
    """
    return WorkflowRecord(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        state=json_object(row["state"], "workflow", row["id"], "state"),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        owner=row["owner"],
        lease_until=row["lease_until"],
        cancel_requested=row["cancel_requested"],
        history=history,
        wake_at=row["wake_at"],
        wait_for=row["wait_for"],
        wait_key=row["wait_key"],
    )


def mail_from_row(row: Mapping[str, Any]) -> Mail:
    """The mailbox message a row keeps (:data:`MAIL_COLUMNS`).

    Raises:
        UnreadableRow: if its body is not a JSON object.
    """
    return Mail(
        id=row["message_id"],
        body=json_object(row["body"], "mailbox message", row["message_id"], "body"),
        created_at=row["created_at"],
    )


def history_from_text(workflow_id: str, text: str) -> tuple[list[Any], ...]:
    """The history entries of a workflow, read as one JSON array of its entries.

    Raises:
        StoreError: if an entry is not a JSON array (naming the entry's
            position in the history, never its value).
    """
    entries: object = decode_state(text, "workflow history")
    if not isinstance(entries, list):
        raise UnreadableRow("workflow", workflow_id, "its history is not a JSON array")
    for index, entry in enumerate(entries):
        if not isinstance(entry, list):
            raise UnreadableRow(
                "workflow", workflow_id, f"its history entry {index} is not a JSON array"
            )
    return tuple(entries)
