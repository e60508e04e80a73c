"""What the stores share: the strict JSON form of workflow state, UTC times, leases."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json, to_json

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

__all__ = [
    "MAX_LEASE",
    "claim_limit",
    "claimant_lease",
    "decode_state",
    "encode_history",
    "encode_state",
    "lease_seconds",
    "owner_lease",
    "parse_cursor",
    "prune_limit",
    "status_tuple",
    "utc",
    "workflow_id_list",
]

#: The longest lease given, in seconds (about 31 years).
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


def encode_history(entries: Sequence[Sequence[Any]], *, arrays: bool = False) -> list[str]:
    """History entries as JSON texts, converted as the state is (tuples become arrays).

    Args:
        entries: the entries, oldest first.
        arrays: refuse an entry that is not a list or tuple (for a store that
            reads each entry back as a JSON array).

    Raises:
        StoreError: if an entry has no JSON form (or, with ``arrays``, is not a
            list or tuple), naming its position in ``entries``.
    """
    encoded: list[str] = []
    for index, entry in enumerate(entries):
        if arrays and not isinstance(entry, list | tuple):
            raise StoreError(
                f"history entry {index} must be a list or tuple, not {type(entry).__name__}"
            )
        try:
            encoded.append(to_json(entry).decode())
        except ValueError as exc:
            raise StoreError(f"history entry {index} is not JSON-serializable: {exc}") from exc
    return encoded


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
    """A lease (an inbox claim's, a workflow's) in seconds, at most :data:`MAX_LEASE`.

    Raises:
        StoreError: if ``lease`` is not a positive, finite number.
    """
    if isinstance(lease, bool) or not isinstance(lease, int | float):
        raise StoreError(f"a lease must be a number of seconds, not {lease!r}")
    if not (lease > 0 and math.isfinite(lease)):
        raise StoreError(f"a lease must be a positive number of seconds, not {lease!r}")
    return min(float(lease), MAX_LEASE)


def owner_lease(owner: str | None, lease: float | None) -> float | None:
    """The lease a written record's owner holds, or None for a record without one.

    Raises:
        StoreError: if the owner is not a non-empty string, or has no positive lease.
    """
    if owner is None:
        return None
    if not isinstance(owner, str) or not owner:
        raise StoreError(f"a workflow's owner must be a non-empty string, not {owner!r}")
    if lease is None:
        raise StoreError("a workflow written with an owner needs lease=<seconds>")
    return lease_seconds(lease)


def claimant_lease(owner: str, lease: float) -> float:
    """The lease ``owner`` takes by a claim or a renewal.

    Raises:
        StoreError: if ``owner`` is not a non-empty string or ``lease`` not a
            positive number.
    """
    held = owner_lease(owner, lease)
    if held is None:
        raise StoreError(f"a workflow's owner must be a non-empty string, not {owner!r}")
    return held


def workflow_id_list(workflow_ids: Collection[str] | str) -> list[str]:
    """The distinct ids of ``workflow_ids``, in order; one string is one id."""
    if isinstance(workflow_ids, str):
        return [workflow_ids]
    return list(dict.fromkeys(workflow_ids))


def claim_limit(limit: int) -> int:
    """The most workflows one claim takes.

    Raises:
        StoreError: if ``limit`` is not a positive integer.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StoreError(f"a claim limit must be a positive integer, not {limit!r}")
    return limit


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """The creation time and id a :attr:`~flowkit.stores.WorkflowRecord.cursor` names.

    Raises:
        StoreError: if ``cursor`` is not one.
    """
    if isinstance(cursor, str):
        stamp, sep, workflow_id = cursor.partition("/")
        if sep and workflow_id:
            try:
                created = datetime.fromisoformat(stamp)
            except ValueError:
                pass
            else:
                if created.tzinfo is not None:
                    return created.astimezone(UTC), workflow_id
    raise StoreError(
        "after= takes the cursor of a listed workflow record (record.cursor), "
        "'<creation time>/<id>'; this is not one"
    )


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
