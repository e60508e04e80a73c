"""Run a user's bus on the in-memory transport, watch what it publishes, inject faults."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from .._events import Envelope, Event, validate_payload
from ..choreography._observe import BusObserver
from ..stores._memory import MemoryStore
from ..transports._memory import InMemoryTransport
from ._faults import FaultyTransport

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable

    from ..choreography import Choreography, Context
    from ..choreography._handlers import HandlerSpec
    from ..stores._base import DeadLetter, StateStore

__all__ = ["BusHarness", "run_in_memory"]

E = TypeVar("E", bound=Event)


class _HandlerFault:
    __slots__ = ("error", "remaining")

    def __init__(self, times: int, error: BaseException) -> None:
        self.remaining = times
        self.error = error


class _Watch(BusObserver):
    """What the harness sees of the bus: publishes, and handler faults to inject."""

    def __init__(self, harness: BusHarness) -> None:
        self._harness = harness

    def published(self, envelope: Envelope) -> None:
        self._harness._record(envelope)

    def before_handle(self, ctx: Context) -> None:
        fault = self._harness._handler_faults.get(f"{ctx.service}:{ctx.handler}")
        if fault is not None and fault.remaining > 0:
            fault.remaining -= 1
            raise fault.error


class BusHarness:
    """A bus running on the in-memory transport, as seen by a test.

    Made by :func:`run_in_memory`. It records every event published (by the
    test or by handlers), waits for events and for the bus to go idle, and
    injects faults into handlers and into the transport.

    Attributes:
        bus: the bus under test.
        transport: the in-memory transport it runs on.
        faults: transport faults (dropped consumers, duplicated, delayed or
            failed publishes), see :class:`~flowkit.testing.FaultyTransport`.
        store: the store the bus uses during the test.
    """

    def __init__(self, bus: Choreography, transport: InMemoryTransport, store: StateStore) -> None:
        self.bus = bus
        self.transport = transport
        self.faults = FaultyTransport(transport)
        self.store = store
        self._published: list[Envelope] = []
        self._changed = anyio.Event()
        self._handler_faults: dict[str, _HandlerFault] = {}

    # -- what was published ----------------------------------------------------

    def _record(self, envelope: Envelope) -> None:
        self._published.append(envelope)
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def published(self) -> list[Envelope]:
        """Every envelope published so far (events and commands), in order."""
        return list(self._published)

    def events(self, event_type: type[E]) -> list[E]:
        """The events of one type published so far, decoded, in order."""
        name = event_type.__flowkit_type__
        return [validate_payload(e, event_type) for e in self._published if e.type == name]

    async def wait_for(
        self,
        event_type: type[E],
        *,
        where: Callable[[E], bool] | None = None,
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[E]:
        """Wait until ``count`` events of ``event_type`` (matching ``where``) were published.

        Returns:
            The matching events, in publication order.

        Raises:
            TimeoutError: naming the event type, if they did not come in time.
        """
        with anyio.move_on_after(timeout):
            while True:
                found = [e for e in self.events(event_type) if where is None or where(e)]
                if len(found) >= count:
                    return found
                await self._changed.wait()
        raise TimeoutError(
            f"waited {timeout}s for {count} {event_type.__name__} event(s); published: "
            f"{[e.type for e in self._published]}"
        )

    def assert_published(self, event_type: type[E], **fields: Any) -> E:
        """Assert that an event of this type with these field values was published.

        Returns:
            The first matching event.
        """
        for event in self.events(event_type):
            if all(getattr(event, k) == v for k, v in fields.items()):
                return event
        raise AssertionError(
            f"no {event_type.__name__} with {fields} was published; published: "
            f"{[(e.type, dict(e.payload)) for e in self._published]}"
        )

    def assert_not_published(self, event_type: type[Event]) -> None:
        """Assert that no event of this type was published."""
        found = self.events(event_type)
        if found:
            raise AssertionError(f"{len(found)} {event_type.__name__} event(s) were published")

    async def dead_letters(self) -> list[DeadLetter]:
        """The dead letters kept so far."""
        return await self.bus.dead_letters(limit=10_000)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until every published message is acked or dead-lettered and no handler runs.

        Messages waiting for a retry delay count as not done (see
        :meth:`Choreography.wait_idle`).

        Raises:
            TimeoutError: if the bus is still busy after ``timeout`` seconds.
        """
        await self.bus.wait_idle(timeout)

    # -- handler faults ----------------------------------------------------------

    def fail_handler(
        self,
        handler: str | Callable[..., Any],
        *,
        times: int = 1,
        error: BaseException | None = None,
    ) -> None:
        """Make a handler raise on its next ``times`` calls, before it runs.

        Args:
            handler: the handler function, its name, or its consumer (``service:name``).
            times: how many calls fail.
            error: what to raise (``RuntimeError("injected failure")`` by default).

        Raises:
            LookupError: if no handler of the bus matches.
        """
        spec = self._find(handler)
        self._handler_faults[spec.consumer] = _HandlerFault(
            times, error if error is not None else RuntimeError("injected failure")
        )

    def _find(self, handler: str | Callable[..., Any]) -> HandlerSpec:
        for spec in self.bus.handlers:
            if handler in (spec.func, spec.consumer, spec.name) or (
                callable(handler) and getattr(spec.func, "__wrapped__", None) is handler
            ):
                return spec
        raise LookupError(f"no handler {handler!r} on this bus")


@asynccontextmanager
async def run_in_memory(
    bus: Choreography,
    *,
    services: Iterable[str] | None = None,
    store: StateStore | None = None,
    max_buffer: int = 10_000,
) -> AsyncIterator[BusHarness]:
    """Run ``bus`` on a fresh in-memory transport for the duration of a test.

    The bus's own transport and store are set aside and put back afterwards,
    so a service module that builds its bus on a broker can be tested as is.

    Args:
        bus: the bus to run (not running yet).
        services: run only these services' handlers (all by default).
        store: the store to use (a fresh :class:`~flowkit.stores.MemoryStore`
            by default, so the inbox and dead letters work).
        max_buffer: the in-memory transport's buffer per group.

    Yields:
        The harness to publish through, wait on and inject faults with.
    """
    memory = InMemoryTransport(max_buffer=max_buffer)
    test_store = store if store is not None else MemoryStore()
    harness = BusHarness(bus, memory, test_store)
    watch = _Watch(harness)
    saved_transport, saved_store = bus.transport, bus.store
    bus.use(transport=harness.faults, store=test_store)
    bus.add_observer(watch)
    try:
        async with bus.run(services=services):
            yield harness
    finally:
        bus.remove_observer(watch)
        bus.use(transport=saved_transport, store=saved_store)
