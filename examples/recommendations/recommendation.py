"""The recommendation service: picks item ids for a user, then asks the inventory
service for their details before answering. If the inventory is slow or
failing, it still answers, with bare ids and ``degraded=True``."""

from __future__ import annotations

from flowkit import Choreography, Context, RemoteError, RequestTimeout

from .messages import Item, LookupItems, Recommend, Recommendations

SERVICE = "recommendation"
INVENTORY_TIMEOUT = 0.2


def pick_items(user_id: str, limit: int) -> list[str]:
    """The model: a stand-in that picks item ids for a user."""
    ids = ["i-1", "i-2", "i-3", "i-4"]
    start = sum(map(ord, user_id)) % len(ids)
    return (ids[start:] + ids[:start])[:limit]


def register(bus: Choreography) -> None:
    """Declare the recommendation service's handler on ``bus``."""

    @bus.handles(Recommend, service=SERVICE, concurrency=4)
    async def recommend(command: Recommend, ctx: Context) -> Recommendations:
        ids = pick_items(command.user_id, command.limit)
        try:
            details = await ctx.request(LookupItems(ids=ids), timeout=INVENTORY_TIMEOUT)
        except RequestTimeout:
            reason = f"inventory did not answer within {INVENTORY_TIMEOUT}s"
        except RemoteError as exc:
            reason = f"inventory failed: {exc.message}"
        else:
            return Recommendations(user_id=command.user_id, items=details.items)
        ctx.logger.warning("answering without item details: %s", reason)
        bare = [Item(id=i, name="", in_stock=False) for i in ids]
        return Recommendations(user_id=command.user_id, items=bare, degraded=True, reason=reason)
