"""The waits of a :class:`~flowkit.stores.MemoryStore`: due workflows and the
mailbox, kept in memory under the store's lock (see :mod:`flowkit.stores._waits`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from anyio.lowlevel import checkpoint

from ._codec import claim_limit, claimant_lease, decode_state, encode_state, prune_limit, utc
from ._waits import WAITING, Delivery, Mail, check_channel

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Collection, Mapping

    from ._base import WorkflowRecord
    from ._memory import _StoredWorkflow

__all__ = ["MemoryWaits"]


@dataclass(slots=True)
class _Kept:
    seq: int
    body_json: str
    created_at: datetime
    consumer: str | None = None


class MemoryWaits:
    """Waits kept beside a memory store's workflows.

    The mailbox is a dict per ``(name, channel, key)`` of messages by id, in
    delivery order; it holds what is delivered until it is dropped or pruned.
    """

    def __init__(
        self,
        lock: threading.Lock,
        check_open: Callable[[], None],
        workflows: dict[str, _StoredWorkflow],
    ) -> None:
        self._lock = lock
        self._check_open = check_open
        self._workflows = workflows
        self._boxes: dict[tuple[str, str, str], dict[str, _Kept]] = {}
        self._seq = itertools.count(1)

    def pending(self, name: str, channel: str, key: str) -> bool:
        """Whether a message no consumer took is kept there (called under the lock)."""
        box = self._boxes.get((name, channel, key))
        return box is not None and any(kept.consumer is None for kept in box.values())

    async def claim_due(
        self,
        name: str,
        owner: str,
        *,
        lease: float,
        limit: int = 100,
        exclude: Collection[str] = (),
    ) -> list[WorkflowRecord]:
        held = claimant_lease(owner, lease)
        most = claim_limit(limit)
        skip = frozenset(exclude)
        await checkpoint()
        now = datetime.now(UTC)
        with self._lock:
            self._check_open()
            due = sorted(
                (stored.wake_at, workflow_id, stored)
                for workflow_id, stored in self._workflows.items()
                if stored.name == name
                and stored.status == WAITING
                and stored.wake_at is not None
                and stored.wake_at <= now
                and workflow_id not in skip
                and (stored.owner is None or (stored.lease_until or now) <= now)
            )[:most]
            return [stored.claim(workflow_id, owner, held, now) for _, workflow_id, stored in due]

    async def next_wake(self, name: str) -> float | None:
        await checkpoint()
        with self._lock:
            self._check_open()
            soonest = min(
                (
                    stored.wake_at
                    for stored in self._workflows.values()
                    if stored.name == name
                    and stored.status == WAITING
                    and stored.owner is None
                    and stored.wake_at is not None
                ),
                default=None,
            )
        if soonest is None:
            return None
        return (soonest - datetime.now(UTC)).total_seconds()

    async def deliver(
        self, name: str, channel: str, key: str, message_id: str, body: Mapping[str, Any]
    ) -> Delivery:
        check_channel(name, channel, key)
        check_channel(name, channel, message_id)
        body_json = encode_state(body)
        await checkpoint()
        now = datetime.now(UTC)
        with self._lock:
            self._check_open()
            box = self._boxes.setdefault((name, channel, key), {})
            stored = message_id not in box
            if stored:
                box[message_id] = _Kept(next(self._seq), body_json, now)
            woken = []
            for workflow_id, workflow in self._workflows.items():
                if (
                    workflow.name == name
                    and workflow.status == WAITING
                    and workflow.wait_for == channel
                    and workflow.wait_key == key
                ):
                    workflow.wake_at = now
                    woken.append(workflow_id)
        return Delivery(stored=stored, woken=tuple(woken))

    async def take(self, name: str, channel: str, key: str, consumer: str) -> Mail | None:
        check_channel(name, channel, key)
        await checkpoint()
        with self._lock:
            self._check_open()
            box = self._boxes.get((name, channel, key))
            if not box:
                return None
            mine = [(m, k) for m, k in box.items() if k.consumer == consumer]
            free = [(m, k) for m, k in box.items() if k.consumer is None]
            for message_id, kept in mine or free:
                kept.consumer = consumer
                return Mail(
                    id=message_id,
                    body=decode_state(kept.body_json, "mailbox message"),
                    created_at=kept.created_at,
                )
            return None

    async def drop(self, name: str, consumer: str) -> int:
        await checkpoint()
        removed = 0
        with self._lock:
            self._check_open()
            for (box_name, _, _), box in list(self._boxes.items()):
                if box_name != name:
                    continue
                for message_id in [m for m, k in box.items() if k.consumer == consumer]:
                    del box[message_id]
                    removed += 1
            self._forget_empty()
        return removed

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        cutoff = utc(older_than, "older_than")
        most = prune_limit(limit)
        await checkpoint()
        with self._lock:
            self._check_open()
            old = sorted(
                (kept.seq, box_key, message_id)
                for box_key, box in self._boxes.items()
                for message_id, kept in box.items()
                if kept.created_at < cutoff
            )[:most]
            for _, box_key, message_id in old:
                del self._boxes[box_key][message_id]
            self._forget_empty()
        return len(old)

    def _forget_empty(self) -> None:
        for box_key in [k for k, box in self._boxes.items() if not box]:
            del self._boxes[box_key]
