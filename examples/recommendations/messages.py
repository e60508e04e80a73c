"""The messages between the client, the recommendation and the inventory services."""

from __future__ import annotations

from flowkit import Command, Message


class Item(Message):
    id: str
    name: str
    in_stock: bool


class Items(Message):
    items: list[Item]


class LookupItems(Command[Items]):
    """Asked of the inventory service: the details of some item ids."""

    ids: list[str]


class Recommendations(Message):
    user_id: str
    items: list[Item]
    degraded: bool = False
    reason: str | None = None


class Recommend(Command[Recommendations]):
    """Asked of the recommendation service by its clients."""

    user_id: str
    limit: int = 3
