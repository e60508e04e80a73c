"""What the stores share: the strict JSON form of workflow state, UTC times, leases."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json, to_json

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "MAX_LEASE",
    "decode_state",
    "encode_state",
    "lease_seconds",
    "prune_limit",
    "status_tuple",
    "utc",
]

#: The longest lease an inbox claim is given, in seconds (about 31 years).
MAX_LEASE = 1e9


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


def lease_seconds(lease: float) -> float:
    """An inbox claim's lease in seconds, at most :data:`MAX_LEASE`.

    Raises:
        StoreError: if ``lease`` is not a positive, finite number.
    """
    if isinstance(lease, bool) or not isinstance(lease, int | float):
        raise StoreError(f"an inbox lease must be a number of seconds, not {lease!r}")
    if not (lease > 0 and math.isfinite(lease)):
        raise StoreError(f"an inbox lease must be a positive number of seconds, not {lease!r}")
    return min(float(lease), MAX_LEASE)


def prune_limit(limit: int) -> int:
    """The most records one prune call removes.

    Raises:
        StoreError: if ``limit`` is not a positive integer.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StoreError(f"a prune limit must be a positive integer, not {limit!r}")
    return limit


def status_tuple(statuses: Collection[str]) -> tuple[str, ...]:
    """Workflow statuses without repeats, a single string taken as one status."""
    if isinstance(statuses, str):
        return (statuses,)
    return tuple(dict.fromkeys(statuses))
