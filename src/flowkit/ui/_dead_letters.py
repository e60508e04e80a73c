"""The dead letters page's data: letters grouped by consumer and error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._cli.dlq import letter_json, reason_of

if TYPE_CHECKING:
    from ..stores import DeadLetter, StateStore

__all__ = ["LIMIT", "Group", "Letter", "grouped_letters"]

#: The most dead letters one page reads.
LIMIT = 500


@dataclass(frozen=True)
class Letter:
    """One dead letter as shown: its reason, error and body."""

    id: str
    topic: str
    attempts: int
    failed_at: str
    message_id: str | None
    reason: str
    error: str
    body: str
    headers: str


@dataclass
class Group:
    """The dead letters of one consumer that failed with one error."""

    consumer: str
    error_type: str
    reason: str
    letters: list[Letter] = field(default_factory=list)


async def grouped_letters(store: StateStore, *, limit: int = LIMIT) -> tuple[list[Group], bool]:
    """The oldest ``limit`` dead letters grouped by consumer and error, and
    whether there are more."""
    letters = await store.list_dead_letters(limit=limit + 1)
    more = len(letters) > limit
    groups: dict[tuple[str, str, str], Group] = {}
    for letter in letters[:limit]:
        shown = _letter(letter)
        key = (letter.consumer, letter.error_type, shown.reason)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(letter.consumer, letter.error_type, shown.reason)
        group.letters.append(shown)
    return sorted(groups.values(), key=lambda g: (g.consumer, g.error_type, g.reason)), more


def _letter(letter: DeadLetter) -> Letter:
    data = letter_json(letter, verbose=True)
    body = data["body"]
    return Letter(
        id=letter.id,
        topic=letter.topic,
        attempts=letter.attempts,
        failed_at=data["failed_at"],
        message_id=letter.message_id,
        reason=reason_of(letter),
        error=data["error"],
        body=json.dumps(body, indent=2, ensure_ascii=False)
        if data["body_encoding"] == "json"
        else str(body),
        headers=json.dumps(data["headers"], indent=2, ensure_ascii=False),
    )
