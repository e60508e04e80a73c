"""What the SQL stores share in turning records into rows and rows back into records.

A row that does not make a record raises :class:`UnreadableRow`, which names the
record and what is wrong with it, never the stored value.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import StoreError
from ._base import WorkflowRecord
from ._codec import decode_state

if TYPE_CHECKING:
    from datetime import datetime

    from ._base import DeadLetter

__all__ = ["UnreadableRow", "json_object", "letter_headers", "letter_values", "saved_record"]

T = TypeVar("T")


class UnreadableRow(StoreError):
    """A stored row that does not make a record (damaged or edited by hand).

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


def letter_values(
    letter: DeadLetter, failed_at: T
) -> tuple[str, str, str, bytes, str, str, str, int, T, str | None]:
    """The values of a dead letter's columns, its headers as JSON text.

    Args:
        letter: the letter to keep.
        failed_at: its failure time as the store keeps it.

    Raises:
        StoreError: if the headers are not JSON-serializable.
    """
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


def json_object(text: object, kind: str, record_id: object, what: str) -> dict[str, Any]:
    """The JSON object a column holds; ``what`` names the column ("its state is ...").

    Raises:
        UnreadableRow: if the column holds no JSON object.
    """
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


def letter_headers(text: object, letter_id: object) -> dict[str, str]:
    """The headers a dead letter's row holds.

    Raises:
        UnreadableRow: if they are not a JSON object of strings.
    """
    headers = json_object(text, "dead letter", letter_id, "headers")
    if not all(isinstance(value, str) for value in headers.values()):
        raise UnreadableRow("dead letter", letter_id, "its headers are not all text")
    return headers


def saved_record(
    record: WorkflowRecord,
    *,
    name: str,
    created_at: datetime,
    updated_at: datetime,
    owner: str | None,
    lease_until: datetime | None,
    cancel_requested: bool,
) -> WorkflowRecord:
    """What a save of ``record`` returns: the record given, its version
    incremented, with the stored name, times, owner and cancel request, without
    history."""
    return WorkflowRecord(
        id=record.id,
        name=name,
        status=record.status,
        state=record.state,
        version=record.version + 1,
        created_at=created_at,
        updated_at=updated_at,
        owner=owner,
        lease_until=lease_until,
        cancel_requested=cancel_requested,
    )
