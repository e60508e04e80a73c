"""The store side of the flow trace: what the bus and the orchestrators record about
each flow, kept by correlation id.

A trace is a list of entries, each one thing that happened to a flow: a message
published, one attempt of a handler (handled, retried, failed), a dead letter,
a step or compensation of a workflow, a workflow starting or ending. Entries
are written in batches by a recorder (:mod:`flowkit.observability`) as plain
tuples laid out as :data:`TRACE_COLUMNS` (a :data:`TraceRow`), so that the hot
path builds no object, and read back as :class:`TraceEntry`.

A store that keeps a trace has a method ``trace_ops()`` returning a
:class:`TraceStore` (as ``outbox_ops()`` returns the outbox);
:func:`trace_of` asks for it. :class:`~flowkit.stores.MemoryStore`,
:class:`~flowkit.stores.SQLiteStore` and :class:`~flowkit.stores.PostgresStore`
keep one; another store offers one the same way and proves it with the
conformance suite (:data:`flowkit.testing.STORE_CHECKS`, the ``trace_`` checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeAlias

from .._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "KINDS",
    "TRACE_COLUMNS",
    "TraceEntry",
    "TraceRow",
    "TraceStore",
    "aware",
    "check_report",
    "entry_of",
    "has_trace",
    "positive",
    "stalled_window",
    "trace_of",
]

#: The values of a trace entry, in the order a :data:`TraceRow` holds them.
TRACE_COLUMNS: tuple[str, ...] = (
    "at",
    "correlation_id",
    "kind",
    "outcome",
    "message_id",
    "causation_id",
    "message_type",
    "service",
    "handler",
    "workflow",
    "workflow_id",
    "step",
    "attempt",
    "duration",
    "error_type",
    "error",
    "key",
    "detail",
)

#: One entry as the recorder hands it to a store: the values of
#: :data:`TRACE_COLUMNS`, ``at`` in seconds since the epoch.
TraceRow: TypeAlias = tuple[
    float,  # at
    str,  # correlation_id
    str,  # kind
    str,  # outcome
    str | None,  # message_id
    str | None,  # causation_id
    str | None,  # message_type
    str | None,  # service
    str | None,  # handler
    str | None,  # workflow
    str | None,  # workflow_id
    str | None,  # step
    int | None,  # attempt
    float | None,  # duration
    str | None,  # error_type
    str | None,  # error
    str | None,  # key
    str | None,  # detail
]

#: The kinds of entries, and the outcomes each has.
KINDS: dict[str, tuple[str, ...]] = {
    "publish": ("published",),
    "handle": ("handled", "retried", "failed"),
    "dead_letter": ("dead_lettered",),
    "step": ("started", "succeeded", "retried", "failed", "interrupted"),
    "compensation": ("started", "succeeded", "retried", "failed", "interrupted"),
    "workflow": ("started", "resumed", "completed", "compensated", "failed", "stopped", "waiting"),
    "stalled": ("reported",),
}


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One thing that happened to a flow.

    Attributes:
        seq: its place in the store (the order entries were written in).
        at: when it happened (UTC), by the clock of the process that recorded it.
        correlation_id: the flow it belongs to.
        kind: ``publish``, ``handle``, ``dead_letter``, ``step``,
            ``compensation``, ``workflow`` or ``stalled`` (an expectation that
            was not met, reported).
        outcome: what happened (see :data:`KINDS`): a handling ``handled``,
            ``retried`` or ``failed``; a step ``started``, ``succeeded``,
            ``retried``, ``failed`` or ``interrupted``; a workflow ``started``,
            ``resumed``, ``completed``, ``compensated``, ``failed``, ``stopped`` or
            ``waiting`` (parked at a wait step).
        message_id: the message published or handled.
        causation_id: the message whose handling published it.
        message_type: the message's type name.
        service: the handling service; for a publish, the publishing one if
            a handler published it.
        handler: the handler's name in its service.
        workflow: the orchestrator's name.
        workflow_id: the workflow's id.
        step: the step's name.
        attempt: the attempt number, 1 for the first.
        duration: seconds the attempt (or the workflow) took.
        error_type: the exception's qualified name.
        error: its message, redacted: one line, at most 300 characters, with
            the message's field values, quoted text, e-mail addresses, long
            numbers and URL secrets masked.
        key: the message's business key (its class's ``correlate_by``).
        detail: more, in words: the dead letter's id, the reason a workflow
            ended, the delay before a retry, the expectation not met.
    """

    seq: int
    at: datetime
    correlation_id: str
    kind: str
    outcome: str
    message_id: str | None = None
    causation_id: str | None = None
    message_type: str | None = None
    service: str | None = None
    handler: str | None = None
    workflow: str | None = None
    workflow_id: str | None = None
    step: str | None = None
    attempt: int | None = None
    duration: float | None = None
    error_type: str | None = None
    error: str | None = None
    key: str | None = None
    detail: str | None = None

    @property
    def consumer(self) -> str | None:
        """``service:handler`` of a handling (or of the handler that published)."""
        if self.service is None or self.handler is None:
            return None
        return f"{self.service}:{self.handler}"


def entry_of(seq: int, row: Sequence[object]) -> TraceEntry:
    """The entry of a stored row: ``seq``, then the values of :data:`TRACE_COLUMNS`
    (``at`` in seconds since the epoch or as a datetime).

    Raises:
        ValueError: if the row does not have one value per column.
    """
    if len(row) != len(TRACE_COLUMNS):
        raise ValueError(f"a trace row has {len(TRACE_COLUMNS)} values, not {len(row)}")
    at = row[0]
    if isinstance(at, datetime):
        when = at.astimezone(UTC)
    else:
        when = datetime.fromtimestamp(float(at), UTC)  # type: ignore[arg-type]
    return TraceEntry(seq, when, *row[1:])  # type: ignore[arg-type]


class TraceStore(Protocol):
    """What the recorder, ``flowkit trace`` and expectations need from a store."""

    async def add(self, rows: Sequence[TraceRow]) -> None:
        """Append entries, in one write.

        Raises:
            StoreError: if the store is not open or cannot write.
        """
        ...

    async def read(
        self, correlation_id: str, *, limit: int = 1000, after: int | None = None
    ) -> list[TraceEntry]:
        """A flow's entries in the order they were stored, ``limit`` at most.

        Args:
            correlation_id: the flow.
            limit: the most entries returned.
            after: a :attr:`TraceEntry.seq`: only the entries stored after it
                (the next page).
        """
        ...

    async def count(self, correlation_id: str) -> int:
        """How many entries a flow has."""
        ...

    async def find(self, value: str, *, limit: int = 20) -> list[str]:
        """The flows ``value`` names: the flow whose correlation id it is, then
        those of the workflow whose id it is, then those with entries of that
        business key (most recent first); each once, ``limit`` at most."""
        ...

    async def stalled(
        self,
        first: str,
        expected: Sequence[str],
        *,
        within: float,
        since: datetime,
        until: datetime,
        limit: int = 100,
    ) -> list[TraceEntry]:
        """Flows in which ``first`` was published but nothing of ``expected`` followed in time.

        A flow counts when its first publish entry of type ``first`` is at or
        after ``since`` and before ``until``, and the flow has no entry (a
        publish or a handling) of a type in ``expected`` at most ``within``
        seconds after it.

        Returns:
            That publish entry of each such flow, oldest first, ``limit`` at most.
        """
        ...

    async def report(self, name: str, correlation_id: str, row: TraceRow) -> bool:
        """Add ``row`` (a ``stalled`` entry) unless the flow already has a
        ``stalled`` entry for the expectation ``name`` (its ``detail``).

        Atomic across the processes sharing the store: of concurrent callers,
        exactly one gets True.
        """
        ...

    async def prune(self, older_than: datetime, *, limit: int = 10_000) -> int:
        """Remove entries recorded before ``older_than``, the oldest first,
        ``limit`` at most; returns how many went (call again until it is less)."""
        ...

    async def cap(self, max_entries: int, *, limit: int = 10_000) -> int:
        """Remove the oldest entries beyond the newest ``max_entries`` (an
        estimate may be used), ``limit`` at most; returns how many went."""
        ...


# -- what every implementation checks of its arguments ---------------------------------


def positive(value: object, what: str) -> int:
    """``value``, checked to be a positive integer.

    Raises:
        StoreError: naming ``what`` and the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StoreError(f"{what} must be a positive integer, not {value!r}")
    return value


def aware(value: datetime, what: str) -> datetime:
    """``value`` in UTC, checked to be timezone-aware.

    Raises:
        StoreError: naming ``what``.
    """
    if value.tzinfo is None:
        raise StoreError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def stalled_window(
    expected: Sequence[str], since: datetime, until: datetime, limit: int
) -> tuple[list[str], datetime, datetime, int]:
    """The arguments of :meth:`TraceStore.stalled`, checked.

    Raises:
        StoreError: if no type is expected, a time is naive, or ``limit`` is
            not a positive integer.
    """
    if not expected:
        raise StoreError("stalled() needs at least one expected message type")
    return list(expected), aware(since, "since"), aware(until, "until"), positive(limit, "limit")


def check_report(name: str, correlation_id: str, row: TraceRow) -> None:
    """Check that ``row`` is the ``stalled`` entry of ``correlation_id`` naming ``name``.

    Raises:
        StoreError: if it is not.
    """
    if len(row) != len(TRACE_COLUMNS) or (row[1], row[2], row[17]) != (
        correlation_id,
        "stalled",
        name,
    ):
        raise StoreError("report() takes the flow's 'stalled' entry naming the expectation")


def _none(store: object) -> StoreError:
    kind = type(store).__name__ if store is not None else "no store"
    return StoreError(
        f"the flow trace needs a store that keeps one (MemoryStore, SQLiteStore, "
        f"PostgresStore), and there is {kind}"
    )


def trace_of(store: object) -> TraceStore:
    """The trace operations of ``store``.

    Raises:
        StoreError: if ``store`` keeps no trace.
    """
    own = getattr(store, "trace_ops", None)
    if store is None or not callable(own):
        raise _none(store)
    ops: TraceStore = own()
    return ops


def has_trace(store: object) -> bool:
    """Whether ``store`` keeps a flow trace."""
    try:
        trace_of(store)
    except StoreError:
        return False
    return True
