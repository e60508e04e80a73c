"""How records become query arguments and rows become records.

The columns are typed, so PostgreSQL itself keeps most nonsense out; what a
column of type ``jsonb`` holds is checked on the way out (a hand-edited row
may hold an array where an object belongs). A row that does not make a record
raises :class:`~flowkit.StoreError` naming the record and the problem, never
the stored value.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..._errors import StoreError
from .._base import DeadLetter, WorkflowRecord
from .._codec import decode_state, utc

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "LETTER_COLUMNS",
    "WORKFLOW_COLUMNS",
    "letter_args",
    "letter_from_row",
    "workflow_from_row",
]

#: The columns of a dead letter row, ``headers`` as JSON text.
LETTER_COLUMNS = (
    "id, consumer, topic, body, headers::text AS headers, error_type, error, attempts, "
    "failed_at, message_id"
)
#: The columns of a workflow row, ``state`` as JSON text.
WORKFLOW_COLUMNS = "id, name, status, version, state::text AS state, created_at, updated_at"


def letter_args(letter: DeadLetter) -> tuple[Any, ...]:
    """The values of a dead letter's columns, in :data:`LETTER_COLUMNS` order.

    Raises:
        StoreError: if ``letter.failed_at`` is naive or the headers are not
            JSON-serializable.
    """
    failed_at = utc(letter.failed_at, "DeadLetter.failed_at")
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


def letter_from_row(row: Mapping[str, Any]) -> DeadLetter:
    """The dead letter a row keeps.

    Raises:
        StoreError: if its headers are not a JSON object of strings.
    """
    headers = _json_object(row["headers"], "dead letter", row["id"], "headers")
    if not all(isinstance(value, str) for value in headers.values()):
        raise _unreadable("dead letter", row["id"], "its headers are not all text")
    return DeadLetter(
        id=row["id"],
        consumer=row["consumer"],
        topic=row["topic"],
        body=bytes(row["body"]),
        headers=headers,
        error_type=row["error_type"],
        error=row["error"],
        attempts=row["attempts"],
        failed_at=row["failed_at"],
        message_id=row["message_id"],
    )


def workflow_from_row(row: Mapping[str, Any]) -> WorkflowRecord:
    """The workflow record a row keeps.

    Raises:
        StoreError: if its state is not a JSON object.
    """
    return WorkflowRecord(
        id=row["id"],
        name=row["name"],
        status=row["status"],
        state=_json_object(row["state"], "workflow", row["id"], "state"),
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _unreadable(kind: str, record_id: object, problem: str) -> StoreError:
    return StoreError(f"the stored {kind} {record_id!r} cannot be read: {problem}")


def _json_object(text: str, kind: str, record_id: object, what: str) -> dict[str, Any]:
    value: object = decode_state(text, f"{kind} {what}")
    if not isinstance(value, dict):
        verb = "are" if what.endswith("s") else "is"
        raise _unreadable(kind, record_id, f"its {what} {verb} not a JSON object")
    return value
