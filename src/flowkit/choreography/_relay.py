"""The outbox relay: publishes what transactions wrote to the outbox.

A relay runs inside every bus whose store has an outbox. It reads the stored
envelopes oldest first, a batch at a time, publishes them (the envelopes of
one key one after another, different keys at once), and deletes them once the
transport took them: delivery is at least once, and a consumer's inbox drops
the copies a crash between publishing and deleting leaves.

Only the holder of the named lease ``outbox-relay`` publishes, so several
processes never publish one envelope at the same time. The holder renews its
lease every third of its length, and publishes a batch only while the lease
surely runs (the time left, less a margin, bounds the batch); the others stand
by and take the lease over once it runs out, or at once when the holder stops
and gives it back.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

import anyio

from .._cancel import stops_work
from .._errors import DecodeError
from .._events import decode_envelope
from .._redact import redact_url
from ._observe import notify, watching_now

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..stores._outbox import OutboxRow, OutboxStore, RelaySession
    from ..transports._base import Transport
    from ._observe import BusObserver

__all__ = ["LEASE_NAME", "Relay", "describe", "relay_owner"]

logger = logging.getLogger("flowkit.outbox")

#: The name of the relay's lease in the store's lease table.
LEASE_NAME = "outbox-relay"

#: Envelopes read per batch.
BATCH = 1000
#: Keys published at once within a batch.
LANES = 64
#: Idle polling: the first pause after an empty read, doubling up to the last.
IDLE_FIRST = 0.005
IDLE_MOST = 1.0
#: Pauses after a failed publish or a failed store call, doubling, at most this.
BACKOFF_FIRST = 0.05
BACKOFF_MOST = 5.0
#: The part of the lease kept free of publishing, for the renewal to land in.
MARGIN = 0.3
#: Seconds given to giving the lease back when the relay stops.
RELEASE_WITHIN = 2.0


def describe(exc: BaseException) -> str:
    """An error for a log line: its type and first line, any URL secret masked."""
    text = str(exc).split("\n", 1)[0].strip()
    return redact_url(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def relay_owner() -> str:
    """A name for a relay, unique among the processes sharing a store."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Relay:
    """Moves envelopes from a store's outbox to a transport, while it holds the lease.

    Args:
        ops: the store's outbox operations.
        transport: where to publish.
        lease: seconds the relay's lease holds; a relay that dies is taken
            over this long after its last renewal at most.
        batch: envelopes read at a time.
        observers: told of each envelope published (``published``), as the
            bus tells of its own publishes, when one of them is watching
            (the body is decoded for them only then).
    """

    def __init__(
        self,
        ops: OutboxStore,
        transport: Transport,
        *,
        lease: float = 10.0,
        batch: int = BATCH,
        observers: Sequence[BusObserver] = (),
    ) -> None:
        self.owner = relay_owner()
        self.published = 0
        self._ops = ops
        self._transport = transport
        self._lease = lease
        self._batch = batch
        self._session: RelaySession | None = None
        self._observers = tuple(observers)
        self._held = False
        self._stopping = False
        self._stop = anyio.Event()
        self._done = anyio.Event()

    @property
    def holding(self) -> bool:
        """Whether this relay holds the lease (it is the one publishing)."""
        return self._held

    async def pending(self) -> int:
        """How many envelopes wait in the outbox (1 while the store cannot be
        reached: unknown is not empty)."""
        session = self._session
        if session is None:
            return 1
        return await session.pending()

    def wake(self) -> None:
        """Look at the outbox now: this process just wrote to it."""
        session = self._session
        if session is not None:
            session.wake()

    async def stop(self, grace: float) -> None:
        """Finish the batch in hand, give the lease back and stop, within ``grace`` seconds."""
        self._stopping = True
        self._stop.set()
        self.wake()
        with anyio.move_on_after(grace):
            await self._done.wait()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but not past a stop."""
        with anyio.move_on_after(max(seconds, 0.0)):
            await self._stop.wait()

    async def run(self) -> None:
        """Relay until stopped (or cancelled), outlasting store and transport failures."""
        backoff = BACKOFF_FIRST
        try:
            while not self._stopping:
                try:
                    async with self._ops.relay() as session:
                        self._session = session
                        try:
                            await self._serve(session)
                        finally:
                            self._session = None
                            await self._release(session)
                except Exception as exc:
                    logger.warning(
                        "the outbox relay lost the store (%s); trying again in %.2fs",
                        describe(exc),
                        backoff,
                    )
                    await self._pause(backoff)
                    backoff = min(backoff * 2, BACKOFF_MOST)
                else:
                    backoff = BACKOFF_FIRST
        finally:
            self._done.set()

    async def _release(self, session: RelaySession) -> None:
        if not self._held:
            return
        self._held = False
        with anyio.CancelScope(shield=True), anyio.move_on_after(RELEASE_WITHIN):
            try:
                await session.release_lease(LEASE_NAME, self.owner)
            except Exception as exc:
                logger.warning(
                    "the outbox relay could not give its lease back (%s); it runs out in %.0fs",
                    describe(exc),
                    self._lease,
                )
            else:
                logger.debug("the outbox relay %s gave its lease back", self.owner)

    async def _serve(self, session: RelaySession) -> None:
        lease = self._lease
        standby = min(1.0, lease / 4)
        held_until = 0.0  # monotonic time before which the lease surely runs
        renew_at = 0.0
        idle = IDLE_FIRST
        backoff = 0.0
        while not self._stopping:
            if time.monotonic() >= renew_at:
                asked = time.monotonic()
                if await session.hold_lease(LEASE_NAME, self.owner, lease):
                    if not self._held:
                        logger.info("the outbox relay %s took the lease", self.owner)
                    self._held = True
                    held_until = asked + lease
                    renew_at = asked + lease / 3
                else:
                    if self._held:
                        logger.warning(
                            "the outbox relay %s lost its lease; standing by", self.owner
                        )
                    self._held = False
                    renew_at = time.monotonic() + standby
            if not self._held:
                await self._pause(renew_at - time.monotonic())
                continue
            budget = held_until - lease * MARGIN - time.monotonic()
            if budget <= 0:
                renew_at = 0.0
                continue
            rows = await session.fetch(self._batch)
            if not rows:
                await session.wait(max(min(idle, renew_at - time.monotonic()), 0.0))
                idle = min(idle * 2, IDLE_MOST)
                continue
            idle = IDLE_FIRST
            done, failure = await self._publish(rows, budget)
            if done:
                await session.delete(done)
                self.published += len(done)
            if failure is None:
                backoff = 0.0
                continue
            backoff = min(max(backoff * 2, BACKOFF_FIRST), BACKOFF_MOST)
            logger.warning(
                "the outbox relay could not publish %d of %d message(s) (%s); "
                "keeping them, trying again in %.2fs",
                len(rows) - len(done),
                len(rows),
                describe(failure),
                backoff,
            )
            await self._pause(min(backoff, max(renew_at - time.monotonic(), 0.0)))

    def _published(self, body: bytes) -> None:
        """Tell the observers of a published envelope (one that is not an
        envelope was written by hand: there is nothing to tell)."""
        try:
            envelope = decode_envelope(body)
        except DecodeError:
            return
        notify(self._observers, "published", envelope)

    async def _publish(
        self, rows: Sequence[OutboxRow], budget: float
    ) -> tuple[list[int], BaseException | None]:
        """Publish ``rows``: one key's in order, keys at once, within ``budget`` seconds.

        Returns:
            The seqs published, and a failure if there was one (the rows of a
            key after its first failure are left for the next batch).
        """
        lanes: dict[object, list[OutboxRow]] = {}
        for row in rows:
            lanes.setdefault(row.seq if row.key is None else row.key, []).append(row)
        done: list[int] = []
        failures: list[BaseException] = []
        publish = self._transport.publish
        observers = self._observers

        async def lane(ordered: list[OutboxRow], limiter: anyio.CapacityLimiter) -> None:
            async with limiter:
                for row in ordered:
                    try:
                        await publish(row.topic, row.body, row.headers or None, key=row.key)
                    except BaseException as exc:
                        if stops_work(exc):
                            raise
                        failures.append(exc)
                        return
                    done.append(row.seq)
                    if observers and watching_now(observers):
                        self._published(row.body)

        if len(lanes) == 1:
            (only,) = lanes.values()
            with anyio.move_on_after(budget):
                await lane(only, anyio.CapacityLimiter(1))
        else:
            limiter = anyio.CapacityLimiter(LANES)
            with anyio.move_on_after(budget):
                async with anyio.create_task_group() as group:
                    for ordered in lanes.values():
                        group.start_soon(lane, ordered, limiter)
        if len(done) < len(rows) and not failures:
            failures.append(TimeoutError(f"the batch took longer than {budget:.1f}s"))
        return done, failures[0] if failures else None
