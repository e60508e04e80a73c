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

from pydantic_core import to_json

from ..._errors import StoreError
from .._base import DeadLetter, WorkflowRecord
from .._codec import decode_state, utc

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "LETTER_COLUMNS",
    "WORKFLOW_COLUMNS",
    "history_args",
    "history_from_text",
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
WORKFLOW_COLUMNS = (
    "id, name, status, version, state::text AS state, created_at, updated_at, "
    "owner, lease_until, cancel_requested"
)


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


def workflow_from_row(
    row: Mapping[str, Any], history: Sequence[Sequence[Any]] = ()
) -> WorkflowRecord:
    """The workflow record a row keeps, with ``history`` when it was read too.

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
        owner=row["owner"],
        lease_until=row["lease_until"],
        cancel_requested=row["cancel_requested"],
        history=history,
    )


def history_args(entries: Sequence[Sequence[Any]]) -> list[str]:
    """History entries as the JSON texts stored, each an array, converted as the state is.

    Raises:
        StoreError: if an entry is not a list or tuple, or has no JSON form.
    """
    encoded: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, list | tuple):
            raise StoreError(
                f"history entry {index} must be a list or tuple, not {type(entry).__name__}"
            )
        try:
            encoded.append(to_json(entry).decode())
        except ValueError as exc:
            raise StoreError(f"history entry {index} is not JSON-serializable: {exc}") from exc
    return encoded


def history_from_text(workflow_id: str, text: str) -> tuple[list[Any], ...]:
    """The history entries of a workflow, read as one JSON array of its entries.

    Raises:
        StoreError: if an entry is not a JSON array (naming the entry's
            position in the history, never its value).
    """
    entries: object = decode_state(text, "workflow history")
    if not isinstance(entries, list):
        raise _unreadable("workflow", workflow_id, "its history is not a JSON array")
    for index, entry in enumerate(entries):
        if not isinstance(entry, list):
            raise _unreadable(
                "workflow", workflow_id, f"its history entry {index} is not a JSON array"
            )
    return tuple(entries)


def _unreadable(kind: str, record_id: object, problem: str) -> StoreError:
    return StoreError(f"the stored {kind} {record_id!r} cannot be read: {problem}")


def _json_object(text: str, kind: str, record_id: object, what: str) -> dict[str, Any]:
    value: object = decode_state(text, f"{kind} {what}")
    if not isinstance(value, dict):
        verb = "are" if what.endswith("s") else "is"
        raise _unreadable(kind, record_id, f"its {what} {verb} not a JSON object")
    return value
