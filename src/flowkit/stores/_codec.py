"""What the stores share: the strict JSON form of workflow state, and UTC times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json, to_json

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["decode_state", "encode_state", "utc"]


def encode_state(state: Mapping[str, Any]) -> str:
    """A workflow state as JSON text, converted the way pydantic converts data:
    tuples and sets become arrays, bytes become text, keys become strings.

    Raises:
        StoreError: if a value has no JSON form.
    """
    try:
        return to_json(state).decode()
    except ValueError as exc:
        raise StoreError(f"workflow state is not JSON-serializable: {exc}") from exc


def decode_state(text: str | bytes, what: str = "workflow state") -> Any:
    """The data of a stored JSON text.

    Raises:
        StoreError: if the text is not valid JSON.
    """
    try:
        return from_json(text)
    except ValueError as exc:
        raise StoreError(f"the stored {what} is not valid JSON: {exc}") from exc


def utc(value: datetime, what: str) -> datetime:
    """``value`` in UTC.

    Raises:
        StoreError: if ``value`` is naive.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"{what} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)
