"""Taking up waiting workflows when they are due, and keeping the mailbox pruned.

A waiting workflow is stored ``WAITING``, held by no process (see
:mod:`flowkit.stores._waits`). Each started orchestrator that has wait steps
runs a :class:`Waker`, which

* claims the workflows of its orchestrator that are due (their timer ran out,
  or a message or a cancel request made them due) as slots free, and hands
  them to the orchestrator to continue;
* sleeps until the soonest timer the store knows of, or ``poll`` seconds,
  whichever comes first: a timer fires on time, and a message delivered by
  another process is seen within ``poll`` seconds; a message or a park in
  this process wakes it at once (:meth:`Waker.due`), and so does a message
  delivered by another process when the store hears of it (its waits have
  the optional ``sleep()`` of :class:`~flowkit.stores._waits.WakeHint`, as
  PostgreSQL's do);
* prunes the mailbox messages older than ``retention`` about once an hour.

Several processes may run wakers for one orchestrator: claiming is atomic, so
each due workflow is taken up by one of them.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from .._errors import StoreError
from ..stores._waits import wake_hint_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from ..stores._base import WorkflowRecord
    from ..stores._waits import WaitStore

__all__ = ["Waker"]

logger = logging.getLogger("flowkit.orchestration")

#: The most due workflows claimed at once.
_BATCH = 100
#: Seconds between two prunes of the mailbox.
_PRUNE_EVERY = 3600.0
#: The shortest sleep after a round that claimed nothing while one was due
#: (another process took it, or this one still drives it).
_MIN_SLEEP = 0.005


class Waker:
    """Claims an orchestrator's due waiting workflows for one instance.

    Args:
        waits: the store's waits.
        name: the orchestrator's name.
        owner: the owner id claims are made as.
        lease: the lease a claim takes, in seconds.
        poll: the longest sleep between two looks in the store.
        retention: seconds a mailbox message is kept (None: never pruned).
        free: how many more workflows the instance can run now.
        exclude: the ids the instance is driving (never claimed).
        start: continues claimed records (registers and runs them).
        freed: waits, up to the seconds given, until a slot frees.
    """

    def __init__(
        self,
        waits: WaitStore,
        name: str,
        owner: str,
        lease: float,
        *,
        poll: float,
        retention: float | None,
        free: Callable[[], int],
        exclude: Callable[[], Collection[str]],
        start: Callable[[list[WorkflowRecord]], Awaitable[None]],
        freed: Callable[[float], Awaitable[None]],
    ) -> None:
        self.waits = waits
        self.name = name
        self.owner = owner
        self.lease = lease
        self.poll = poll
        self.retention = retention
        self.free = free
        self.exclude = exclude
        self.start = start
        self.freed = freed
        self._poked = anyio.Event()
        self._soonest = math.inf  # a due time told by this process (anyio clock)
        self._hint = wake_hint_of(waits)
        self._hint_failed = False

    def due(self, at: datetime | None) -> None:
        """A workflow of this process was parked or made due, due at ``at``: look
        in the store by then (at once if it is due)."""
        if at is None:
            return
        delay = (at - datetime.now(UTC)).total_seconds()
        if delay > self.poll:
            return  # the store's next wake will tell in time
        self._soonest = min(self._soonest, anyio.current_time() + max(delay, 0.0))
        self._poked.set()

    async def run(self) -> None:
        """Claim due workflows until cancelled."""
        pruned = -math.inf
        while True:
            delay: float | None = self.poll
            try:
                free = self.free()
                if free <= 0:
                    await self.freed(self.poll)
                    continue
                limit = min(free, _BATCH)
                records = await self.waits.claim_due(
                    self.name, self.owner, lease=self.lease, limit=limit, exclude=self.exclude()
                )
                if records:
                    await self.start(records)
                    if len(records) >= limit:
                        continue  # more may be due
                delay = await self.waits.next_wake(self.name)
                if delay is not None and delay <= 0:
                    delay = _MIN_SLEEP
                if self.retention is not None and anyio.current_time() - pruned > _PRUNE_EVERY:
                    pruned = anyio.current_time()
                    await self._prune(self.retention)
            except StoreError as exc:
                logger.warning(
                    "%s: could not look for due waiting workflows (retrying in %.1fs): %s",
                    self.name,
                    self.poll,
                    exc,
                )
                delay = self.poll
            await self._sleep(self.poll if delay is None else min(delay, self.poll))

    async def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until a due time told meanwhile by :meth:`due`,
        or until the store hears of a delivery."""
        until = anyio.current_time() + seconds
        while True:
            now = anyio.current_time()
            deadline = min(until, self._soonest)
            if deadline <= now:
                break
            self._poked = anyio.Event()
            if self._hint is None:
                with anyio.move_on_after(deadline - now):
                    await self._poked.wait()
            elif await self._hinted(deadline - now):
                break
        self._soonest = math.inf

    async def _hinted(self, seconds: float) -> bool:
        """Race the store's sleep against a poke, up to ``seconds``; True when
        the store's sleep ended first (a delivery, or the time is up)."""
        assert self._hint is not None
        hint = self._hint
        ended = False

        async def store_sleep(scope: anyio.CancelScope) -> None:
            nonlocal ended
            try:
                await hint.sleep(self.name, seconds)
            except Exception as exc:  # a hint only: sleep on the poke alone
                if not self._hint_failed:
                    self._hint_failed = True
                    logger.warning(
                        "%s: the store's sleep failed (sleeping instead): %s", self.name, exc
                    )
                return
            self._hint_failed = False
            ended = True
            scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(store_sleep, tg.cancel_scope)
            with anyio.move_on_after(seconds):
                await self._poked.wait()
            tg.cancel_scope.cancel()
        return ended

    async def _prune(self, retention: float) -> None:
        cutoff = datetime.now(UTC) - timedelta(seconds=retention)
        removed = 0
        while True:
            batch = await self.waits.prune(cutoff, limit=1000)
            removed += batch
            if batch < 1000:
                break
        if removed:
            logger.info(
                "%s: pruned %d mailbox message(s) older than %s that no wait took",
                self.name,
                removed,
                timedelta(seconds=retention),
            )
