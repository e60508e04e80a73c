"""What the stores share: the strict JSON form of workflow state, and UTC times."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["decode_state", "encode_state", "utc"]

# Strict on purpose: a state that json refuses (a set, bytes, NaN, an object) is a
# bug in the caller, and would not come back equal from any store.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_state(state: Mapping[str, Any]) -> str:
    """A workflow state as JSON text.

    Raises:
        StoreError: if the state is not plain JSON (strings as keys).
    """
    try:
        return _ENCODER.encode(dict(state))
    except (TypeError, ValueError) as exc:
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
