"""Starting and stopping a bus: subscriptions, consumer loops, and a bounded stop."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

import anyio

from .._cancel import cancel_requested
from .._exits import exit_stack
from ..stores._outbox import has_outbox, outbox_of
from ._consumer import Consumer, DecodeCache, Workers
from ._observe import overriding
from ._relay import Relay

if TYPE_CHECKING:
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ..observability._trace import TraceRecorder
    from ..stores._base import StateStore
    from ..transports._base import Subscription
    from ._bus import Choreography
    from ._handlers import HandlerSpec
    from ._observe import BusObserver

__all__ = ["Running"]

logger = logging.getLogger("flowkit.bus")


class Running:
    """A started bus: its task group, consumers and consumer loops.

    Made by :meth:`Choreography.run`; entering it starts the consumers of the
    selected services, leaving it stops them:

    1. idle consumer loops stop at once, and waiting requests end;
    2. busy ones get ``stop_grace`` seconds to finish the message in hand;
    3. whatever still runs is cancelled; its message is not acked, so the
       transport delivers it again (a broker keeps it; the in-memory transport
       drops it when it closes, and says so).

    A cancellation of the enclosing scope (Ctrl-C) skips or cuts short step 2.
    """

    def __init__(
        self, bus: Choreography, services: frozenset[str] | None, stop_grace: float
    ) -> None:
        self.bus = bus
        self.services = services
        self.stop_grace = stop_grace
        self.workers = Workers()
        self.specs: tuple[HandlerSpec, ...] = ()
        self.cache = DecodeCache()
        self._stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self.relay: Relay | None = None
        #: The recorder of the flow trace, while the bus records one.
        self.recorder: TraceRecorder | None = None
        #: The observers that wrap each sending (see :meth:`BusObserver.sending`).
        self.senders: tuple[BusObserver, ...] = ()
        #: The observers told of each message sent (see :meth:`BusObserver.published`).
        self.publishers: tuple[BusObserver, ...] = ()

    @property
    def task_group(self) -> TaskGroup:
        """The task group the consumer loops run in."""
        assert self._task_group is not None
        return self._task_group

    @property
    def stopping(self) -> bool:
        """Whether the bus has begun to stop."""
        return self.workers.stopping

    async def __aenter__(self) -> Choreography:
        bus = self.bus
        if bus.running:
            raise RuntimeError("the bus is already running")
        transport, store = bus.transport, bus.store
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await stack.enter_async_context(transport)
            if store is not None:
                await stack.enter_async_context(store)
            self.specs = tuple(
                s for s in bus.handlers if self.services is None or s.service in self.services
            )
            from ..observability._trace import recorder_for

            # Expectations are checked where handlers run; the recorder watches first.
            expected = bus.expectations if self.specs else ()
            self.recorder = recorder_for(store, bus.trace, expectations=expected)
            if self.recorder is not None:
                await stack.enter_async_context(self.recorder)
                bus._observers = (self.recorder, *bus._observers)
            loops: list[tuple[Consumer, Subscription]] = []
            for spec in self.specs:
                consumer = Consumer(
                    spec,
                    bus=bus,
                    transport=transport,
                    store=store,
                    dead_letters=bus._dead_letters,
                    observers=bus.observers,
                    cache=self.cache,
                    max_message_size=bus.max_message_size,
                    claim_lease=bus.claim_lease,
                )
                for _ in range(spec.concurrency):
                    loops.append((consumer, await transport.subscribe(spec.topic, spec.consumer)))
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            self._forget_recorder()
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        self.senders = overriding(bus.observers, "sending")
        self.publishers = overriding(bus.observers, "published")
        bus._running = self
        for consumer, sub in loops:
            self._task_group.start_soon(consumer.run, sub, self.workers)
        if bus.outbox_relay and has_outbox(store):
            self.relay = Relay(
                outbox_of(store), transport, lease=bus.outbox_lease, observers=bus.observers
            )
            bus.outbox.relay = self.relay
            self._task_group.start_soon(self.relay.run)
        retention = bus.inbox_retention
        if store is not None and retention is not None and self.specs:
            self._task_group.start_soon(_prune_inbox, store, retention)
        return bus

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        stack = self._stack
        assert stack is not None and self._task_group is not None
        try:
            await self._wind_down(
                cancelled=isinstance(exc, anyio.get_cancelled_exc_class()) or cancel_requested()
            )
        finally:
            # Whatever happened above (a second Ctrl-C included), stop now.
            self.workers.stopping = True
            self._task_group.cancel_scope.cancel()
            self.bus._running = None
            self._forget_recorder()
            if self.bus.outbox.relay is self.relay:
                self.bus.outbox.relay = None
            self.cache.clear()
            with anyio.CancelScope(shield=True):
                await self.bus._requests.stop()
            await exit_stack(stack, exc_type, exc, tb)
        return False

    def _forget_recorder(self) -> None:
        """Take the trace recorder off the bus's observers (it stops with the stack)."""
        recorder = self.recorder
        if recorder is not None:
            self.bus._observers = tuple(o for o in self.bus._observers if o is not recorder)

    async def _wind_down(self, *, cancelled: bool) -> None:
        """Stop taking messages, give busy handlers ``stop_grace`` seconds, then
        let the outbox relay finish its batch and give its lease back.

        Not shielded: a cancellation arriving meanwhile ends the wait at once.
        """
        workers = self.workers
        workers.stopping = True
        await self.bus._requests.stop()
        await workers.close_idle()
        if workers.live:
            if not cancelled and self.stop_grace > 0:
                with anyio.move_on_after(self.stop_grace):
                    await workers.gone.wait()
            if workers.live:
                busy = workers.busy
                logger.warning(
                    "%d handler(s) still running %s; cancelling them: their messages are not "
                    "acked and go back to the transport",
                    busy,
                    "at a cancellation" if cancelled else f"after {self.stop_grace:.1f}s",
                )
        if self.relay is not None and not cancelled:
            await self.relay.stop(max(self.stop_grace, 1.0))


async def _prune_inbox(store: StateStore, retention: float) -> None:
    """Forget inbox entries older than ``retention`` seconds, now and then, for as
    long as the bus runs (every process does it; pruning twice is harmless)."""
    interval = min(max(retention / 10, 1.0), 3600.0)
    while True:
        try:
            removed = await store.inbox_prune(datetime.now(UTC) - timedelta(seconds=retention))
        except Exception:
            logger.warning("could not prune the inbox; trying again later", exc_info=True)
        else:
            if removed:
                logger.info("pruned %d inbox entries older than %.0fs", removed, retention)
        await anyio.sleep(interval)
