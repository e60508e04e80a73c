"""Expectations: a flow that published one event must reach another in time.

``bus.expect(OrderPlaced, leads_to=[PartnerAssigned], within=timedelta(minutes=5))``
declares one. It is checked against the trace in the store, not against what
one process saw: the event may be published by one service and the expected
one by another, in other processes. While the bus runs, a task of its trace
recorder looks every little while at the flows whose first event was
published long enough ago, and reports each flow found stalled once: a WARNING
on ``flowkit.trace``, the expectation's ``on_stalled`` callback, and a
``stalled`` entry in the flow's trace, written only if no process wrote one
before (so several processes running the bus report it once between them).
``flowkit stalled MODULE:bus`` lists the stalled flows from the store.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio

from .._cancel import stops_work
from .._errors import DefinitionError
from .._events import Event

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..stores._trace import TraceEntry, TraceStore
    from ._trace import TraceRecorder

__all__ = ["Expectation", "StalledFlow", "find_stalled", "make_expectation", "watch"]

logger = logging.getLogger("flowkit.trace")

#: How far back a starting bus looks for flows that stalled while it was down.
LOOKBACK = timedelta(hours=1)
#: Flows read per query.
PAGE = 500
#: Seconds a callback may take.
CALLBACK_WITHIN = 30.0


@dataclass(frozen=True, slots=True)
class StalledFlow:
    """A flow that published an expectation's first event and did not reach an
    expected one in time.

    Attributes:
        expectation: the expectation's name.
        correlation_id: the flow (``flowkit trace`` takes it).
        message_type: the first event's type.
        message_id: the first event's message id.
        published_at: when it was published (UTC).
        expected: the types that should have followed.
        within: how long they had.
        key: the first event's business key, if its class names one.
    """

    expectation: str
    correlation_id: str
    message_type: str
    message_id: str | None
    published_at: datetime
    expected: tuple[str, ...]
    within: timedelta
    key: str | None = None

    def describe(self) -> str:
        """One line: which flow, what it published, what did not follow."""
        expected = " or ".join(self.expected)
        key = f" (key {self.key})" if self.key and self.key != self.correlation_id else ""
        return (
            f"flow {self.correlation_id}{key}: {self.message_type} published at "
            f"{self.published_at:%Y-%m-%d %H:%M:%S}Z was not followed by {expected} "
            f"within {_seconds(self.within)}"
        )


@dataclass(frozen=True, slots=True)
class Expectation:
    """A flow that publishes ``first`` must reach one of ``leads_to`` within ``within``.

    Made by :meth:`Choreography.expect <flowkit.Choreography.expect>`.

    Attributes:
        name: its name, unique on its bus (``"OrderPlaced->PartnerAssigned"``
            by default); a stalled flow is reported once per expectation.
        first: the event that starts the wait.
        leads_to: the events any one of which ends it.
        within: how long the flow has.
        on_stalled: called with each :class:`StalledFlow` reported by this
            process (a plain function, or an async one, given 30 s).
    """

    name: str
    first: type[Event]
    leads_to: tuple[type[Event], ...]
    within: timedelta
    on_stalled: Callable[[StalledFlow], object] | None = None

    @property
    def first_type(self) -> str:
        """The first event's type name."""
        return self.first.__flowkit_type__

    @property
    def expected_types(self) -> tuple[str, ...]:
        """The expected events' type names."""
        return tuple(t.__flowkit_type__ for t in self.leads_to)


def _seconds(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{seconds:g}s" if seconds < 120 else str(value)


def _event_class(value: object, what: str) -> type[Event]:
    if not (isinstance(value, type) and issubclass(value, Event)):
        raise DefinitionError(f"expect(): {what} must be an Event class, not {value!r}")
    return value


def make_expectation(
    first: object,
    leads_to: object,
    within: object,
    on_stalled: object,
    name: object,
) -> Expectation:
    """An expectation from ``expect()``'s arguments, checked.

    Raises:
        DefinitionError: naming the argument that is wrong.
    """
    start = _event_class(first, "the first event")
    if isinstance(leads_to, type) or not isinstance(leads_to, list | tuple) or not leads_to:
        raise DefinitionError(
            "expect(): leads_to must be a non-empty list of Event classes "
            f"(leads_to=[PartnerAssigned]), not {leads_to!r}"
        )
    ends = tuple(_event_class(t, "each of leads_to") for t in leads_to)
    if start in ends:
        raise DefinitionError(f"expect(): {start.__name__} cannot lead to itself")
    if isinstance(within, bool) or not isinstance(within, timedelta | int | float):
        raise DefinitionError(f"expect(): within must be a timedelta (or seconds), not {within!r}")
    delay = within if isinstance(within, timedelta) else timedelta(seconds=within)
    if not math.isfinite(delay.total_seconds()) or delay.total_seconds() <= 0:
        raise DefinitionError(f"expect(): within must be longer than 0s, not {within!r}")
    if on_stalled is not None and not callable(on_stalled):
        raise DefinitionError(f"expect(): on_stalled must be callable, not {on_stalled!r}")
    if name is None:
        name = f"{start.__flowkit_type__}->{'|'.join(t.__flowkit_type__ for t in ends)}"
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"expect(): name must be a non-empty string, not {name!r}")
    return Expectation(name, start, ends, delay, on_stalled)


def _redacted(exc: BaseException) -> str | None:
    from ._trace import redact_error

    return redact_error(exc)


def _stalled_flow(expectation: Expectation, entry: TraceEntry) -> StalledFlow:
    return StalledFlow(
        expectation=expectation.name,
        correlation_id=entry.correlation_id,
        message_type=entry.message_type or expectation.first_type,
        message_id=entry.message_id,
        published_at=entry.at,
        expected=expectation.expected_types,
        within=expectation.within,
        key=entry.key,
    )


async def find_stalled(
    trace: TraceStore,
    expectation: Expectation,
    *,
    since: datetime,
    until: datetime | None = None,
    limit: int = 100,
) -> list[StalledFlow]:
    """The flows stalled against ``expectation``, oldest first.

    Args:
        trace: the store's trace.
        expectation: what was expected.
        since: only flows whose first event was published at or after this.
        until: only flows whose first event was published before this
            (default: ``within`` ago, the latest that can be late yet).
        limit: at most this many.

    Raises:
        StoreError: if the store fails.
    """
    latest = datetime.now(UTC) - expectation.within
    entries = await trace.stalled(
        expectation.first_type,
        expectation.expected_types,
        within=expectation.within.total_seconds(),
        since=since,
        until=min(until, latest) if until is not None else latest,
        limit=limit,
    )
    return [_stalled_flow(expectation, entry) for entry in entries]


async def _report(trace: TraceStore, expectation: Expectation, flow: StalledFlow) -> None:
    """Report a stalled flow, unless a process (this one too) already did."""
    row = (
        time.time(),
        flow.correlation_id,
        "stalled",
        "reported",
        flow.message_id,
        None,
        flow.message_type,
        None,
        None,
        None,
        None,
        None,
        None,
        expectation.within.total_seconds(),
        None,
        None,
        flow.key,
        expectation.name,
    )
    if not await trace.report(expectation.name, flow.correlation_id, row):
        return
    logger.warning(
        "stalled: %s (expectation %r)",
        flow.describe(),
        expectation.name,
        extra={
            "flowkit_correlation_id": flow.correlation_id,
            "flowkit_message_id": flow.message_id,
            "flowkit_expectation": expectation.name,
        },
    )
    callback = expectation.on_stalled
    if callback is None:
        return
    try:
        result = callback(flow)
        if inspect.isawaitable(result):
            with anyio.fail_after(CALLBACK_WITHIN):
                await result
    except Exception as exc:
        if stops_work(exc):
            raise
        logger.exception(
            "the on_stalled callback of expectation %r failed for flow %s",
            expectation.name,
            flow.correlation_id,
        )


async def watch(
    trace: TraceStore, expectations: Sequence[Expectation], recorder: TraceRecorder
) -> None:
    """Check the expectations against the trace for as long as the recorder runs.

    Each check looks at the flows whose first event was published since the
    previous check's end, up to ``within`` (plus time for every process to
    write its entries) ago: each flow is looked at once, and a starting bus
    looks :data:`LOOKBACK` back. What it keeps is one time per expectation.
    """
    settle = timedelta(seconds=max(1.0, 3 * recorder.options.flush_interval))
    lookback = min(LOOKBACK, recorder.options.retention)
    start = datetime.now(UTC)
    checked = {e.name: start - e.within - settle - lookback for e in expectations}
    interval = min(max(min(e.within for e in expectations).total_seconds() / 4, 0.5), 60.0)
    while True:
        await anyio.sleep(interval)
        for expectation in expectations:
            since = checked[expectation.name]
            until = datetime.now(UTC) - expectation.within - settle
            if until <= since:
                continue
            try:
                while True:
                    found = await find_stalled(
                        trace, expectation, since=since, until=until, limit=PAGE
                    )
                    for flow in found:
                        await _report(trace, expectation, flow)
                    if len(found) < PAGE or found[-1].published_at <= since:
                        break
                    since = found[-1].published_at
            except Exception as exc:  # never the bus's failure: checked again later
                if stops_work(exc):
                    raise
                logger.warning(
                    "could not check expectation %r against the flow trace (%s: %s); "
                    "trying again later",
                    expectation.name,
                    type(exc).__name__,
                    _redacted(exc),
                )
                continue  # the same window again next time
            checked[expectation.name] = until
