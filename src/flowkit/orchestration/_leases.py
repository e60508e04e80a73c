"""Who runs which workflow: the owner id of this process, the workflows it is
driving, and the loop that keeps an orchestrator's leases.

Every unfinished workflow is held by one process through a lease in the store
(see :mod:`flowkit.stores`). While an orchestrator runs, :class:`LeaseKeeper`

* renews the leases of its runs (a heartbeat, every third of the lease), so a
  live process keeps its workflows however long a step takes;
* stops a run whose lease was lost (another process claimed it after this one
  paused for longer than the lease): the run writes nothing more, and its
  checkpoint would have been refused anyway, since claiming changes the version;
* passes on the cancel requests that :meth:`Orchestrator.cancel
  <flowkit.orchestration.Orchestrator.cancel>` left in the store from another
  process;
* recovers, every half lease, the workflows of its orchestrator whose lease ran
  out (their process died) or that nobody holds (their process stopped cleanly),
  as many as it has free slots; when it filled them all, it claims more as soon
  as a slot frees, so a backlog left by a dead process is taken over at the pace
  it is run, not a batch per half lease.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING

import anyio

from .._errors import StoreError
from ..stores._base import UNFINISHED

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ..stores._base import StateStore
    from ._state import Run

__all__ = ["LeaseKeeper", "driving", "process_owner"]

logger = logging.getLogger("flowkit.orchestration")

_owner: tuple[int, str] | None = None

#: The workflow ids each owner is driving in this process, whatever the
#: orchestrator instance: a claim by that owner must not take them.
_DRIVING: dict[str, set[str]] = {}


def process_owner() -> str:
    """This process's owner id: ``host:pid:random``, new in a forked child."""
    global _owner
    pid = os.getpid()
    if _owner is None or _owner[0] != pid:
        _owner = (pid, f"{socket.gethostname()}:{pid}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


def driving(owner: str) -> set[str]:
    """The ids of the workflows ``owner`` is driving in this process (a live set)."""
    return _DRIVING.setdefault(owner, set())


class LeaseKeeper:
    """Keeps the leases of one orchestrator instance's runs.

    Args:
        store: the orchestrator's store.
        owner: the owner id its runs hold leases as.
        lease: the lease, in seconds.
        running: the instance's runs, by workflow id.
        lost: called with a run whose lease another process took.
        cancel: called with a run whose cancellation another process asked for.
        recover: called every half lease to take over free workflows (None:
            never); it returns whether it filled every free slot (more may wait).
        freed: waits, up to the seconds given, until a slot frees.
    """

    def __init__(
        self,
        store: StateStore,
        owner: str,
        lease: float,
        running: Mapping[str, Run],
        *,
        lost: Callable[[Run], None],
        cancel: Callable[[Run], None],
        recover: Callable[[], Awaitable[bool]] | None,
        freed: Callable[[float], Awaitable[None]],
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease = lease
        self.running = running
        self.lost = lost
        self.cancel = cancel
        self.recover = recover
        self.freed = freed

    async def keep(self) -> None:
        """Renew, fence and recover until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat)
            if self.recover is not None:
                tg.start_soon(self._recovery, self.recover)

    async def _heartbeat(self) -> None:
        interval = self.lease / 3
        while True:
            await anyio.sleep(interval)
            with anyio.move_on_after(interval):
                await self.renew()

    async def renew(self) -> None:
        """Renew the leases of the runs held now; fence the lost, pass on cancels."""
        held = {
            wid: run
            for wid, run in self.running.items()
            if run.owner == self.owner
            and run.version > 0  # stored: a run being created is not in the store yet
            and run.status.value in UNFINISHED
            and not (run.halted or run.superseded)
        }
        if not held:
            return
        try:
            kept = await self.store.renew_leases(self.owner, list(held), lease=self.lease)
        except StoreError as exc:
            logger.warning(
                "could not renew %d workflow lease(s) (retrying in %.1fs): %s",
                len(held),
                self.lease / 3,
                exc,
            )
            return
        for wid, run in held.items():
            if self.running.get(wid) is not run:
                continue  # it ended meanwhile
            if wid not in kept:
                if run.status.value in UNFINISHED:
                    logger.warning(
                        "workflow %s: its lease was taken by another process; stopping it here",
                        wid,
                    )
                    self.lost(run)
            elif kept[wid]:
                self.cancel(run)

    async def _recovery(self, recover: Callable[[], Awaitable[bool]]) -> None:
        interval = self.lease / 2
        more = False
        while True:
            if more:
                await self.freed(interval)  # a slot is free: claim again at once
            else:
                await anyio.sleep(interval)
            more = False
            try:
                with anyio.fail_after(max(interval, 1.0)):
                    more = await recover()
            except (StoreError, TimeoutError) as exc:
                logger.warning("could not look for workflows to recover: %s", exc)
