"""Recording flows: what a bus and an orchestrator did, in the store, by correlation id.

:class:`TraceRecorder` is a :class:`~flowkit.BusObserver` and a
:class:`~flowkit.SagaObserver`. Each notification appends one small tuple to a
bounded buffer (nothing is awaited, nothing is written then); a task of the
recorder writes the buffer to the store in batches, every ``flush_interval``
seconds or as soon as ``flush_size`` entries wait, and at the end. When the
store cannot keep up the oldest entries are dropped, counted and logged:
tracing never slows the bus down beyond its buffer, and never fails it.

The recorder also prunes the trace: the entries older than ``retention``,
and the oldest beyond ``max_entries``, a batch at a time.

A workflow parked at a wait (``WAITING``) is recorded as a ``workflow`` entry
``waiting``, with the step it waits at; when it is woken, its steps go on in
the same flow (the workflow's id).

A bus with a store records on its own (``Choreography(..., trace=True)``, the
default), so does an orchestrator (``Orchestrator(..., trace=True)``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import deque
from contextlib import AsyncExitStack
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.lowlevel

from .._cancel import stops_work
from .._errors import DecodeError, DefinitionError
from .._events import FLOW, business_key, decode_envelope, envelope_key
from .._redact import MASK, redact_url
from ..choreography._observe import BusObserver
from ..orchestration._model import WorkflowStatus
from ..orchestration._observe import SagaObserver
from ..stores._trace import trace_of

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Sequence
    from types import TracebackType

    from .._events import Envelope
    from ..choreography._context import Context
    from ..orchestration._context import StepContext
    from ..orchestration._observe import StepEvent, WorkflowEvent
    from ..stores._base import DeadLetter
    from ..stores._trace import TraceRow, TraceStore
    from ._trace_expect import Expectation

__all__ = ["TraceOptions", "TraceRecorder", "recorder_for", "redact_error"]

logger = logging.getLogger("flowkit.trace")

#: The most characters of an error message kept in the trace.
MAX_ERROR = 300
#: Entries written per store call.
WRITE_BATCH = 5_000
#: Entries removed per prune call.
PRUNE_BATCH = 5_000
#: Seconds given to the last flush when the recorder stops.
CLOSE_WITHIN = 5.0
#: Seconds between two warnings about dropped or unwritten entries.
WARN_EVERY = 30.0
#: The most workflows whose last step started is remembered (to say at which
#: step a workflow waits when it is parked).
MAX_RUNNING = 10_000

_now = time.time

# What the current task is doing, for the entries of what it publishes: the
# handling it runs (set in ``before_handle``; a consumer's task publishes
# nothing between two handlings), the step it runs (set around the step's call).
_HANDLING: ContextVar[Context | None] = ContextVar("flowkit_trace_handling", default=None)
_STEP: ContextVar[StepContext | None] = ContextVar("flowkit_trace_step", default=None)


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """How a bus or an orchestrator records its flows (``trace=TraceOptions(...)``).

    Attributes:
        retention: how long entries are kept (7 days); older ones are pruned,
            a batch at a time, by every running recorder.
        max_entries: the most entries the store keeps (about); the oldest
            beyond it are pruned. None: no bound but the retention.
        buffer: the most entries waiting to be written; past it the oldest
            are dropped, counted and logged.
        flush_interval: seconds between writes of the buffer.
        flush_size: write as soon as this many entries wait.

    Raises:
        ValueError: if a number is out of range.
    """

    retention: timedelta = timedelta(days=7)
    max_entries: int | None = 1_000_000
    buffer: int = 10_000
    flush_interval: float = 0.2
    flush_size: int = 1_000

    def __post_init__(self) -> None:
        if not isinstance(self.retention, timedelta) or self.retention.total_seconds() < 1:
            raise ValueError(f"retention must be a timedelta of 1s or more, not {self.retention!r}")
        for name in ("buffer", "flush_size", "max_entries"):
            value = getattr(self, name)
            if name == "max_entries" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        interval = self.flush_interval
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not (0 < interval <= 60)
        ):
            raise ValueError(f"flush_interval must be seconds in (0, 60], not {interval!r}")
        if self.flush_size > self.buffer:
            raise ValueError(
                f"flush_size ({self.flush_size}) must not be larger than buffer ({self.buffer})"
            )


# -- redaction -----------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Amounts and long numbers (cards, phones, accounts); short counts stay.
_NUMBER = re.compile(r"(?<![\w.])(?:\d[\d,_]*\.\d+|\d{4,})(?![\w])")
#: The most values of a message masked in one error.
_MAX_VALUES = 200


def _scalars(data: object, out: list[str]) -> None:
    if len(out) >= _MAX_VALUES:
        return
    if isinstance(data, dict):
        for value in data.values():
            _scalars(value, out)
    elif isinstance(data, list | tuple):
        for value in data:
            _scalars(value, out)
    elif isinstance(data, str | int | float) and not isinstance(data, bool):
        text = str(data)
        if len(text) >= 3:
            out.append(text)


def redact_error(
    error: BaseException | str, values: object = None, *, keep: Iterable[str] = ()
) -> str | None:
    """An error's message as the trace keeps it, without the values it may quote.

    The message's first line, at most :data:`MAX_ERROR` characters, with
    masked (``***``): every value of ``values`` (a message's fields as JSON
    data) that it quotes, e-mail addresses, amounts and numbers of four digits
    or more, and the secrets of URLs.

    Args:
        error: the exception, or its message.
        values: the handled message's fields, whose values are masked.
        keep: values left as they are (the flow's business key, already in the trace).

    Returns:
        The redacted message, or None when there is none.
    """
    text = str(error).strip().split("\n", 1)[0].replace("\x00", "")
    if not text:
        return None
    text = redact_url(text[: MAX_ERROR * 4])
    found: list[str] = []
    if values is not None:
        _scalars(values, found)
    kept = set(keep)
    for value in sorted(set(found) - kept, key=len, reverse=True):
        text = text.replace(value, MASK)
    text = _EMAIL.sub(MASK, text)
    text = _NUMBER.sub(lambda m: m[0] if m[0] in kept else MASK, text)
    return text if len(text) <= MAX_ERROR else f"{text[: MAX_ERROR - 3]}..."


def _qualified(exc: BaseException) -> str:
    from ..choreography._consumer import qualified_name

    return qualified_name(exc)


# -- the recorder ---------------------------------------------------------------------


class TraceRecorder(BusObserver, SagaObserver):
    """Records what a bus and the orchestrators it watches do, into a store's trace.

    Made by the bus or the orchestrator it serves (see :func:`recorder_for`);
    entered with ``async with`` while that one runs.

    Args:
        trace: the store's trace operations.
        options: retention, bounds and flushing.
        expectations: expectations to check against the trace while it runs
            (a bus's, see :meth:`~flowkit.Choreography.expect`).
        prune: prune the trace while it runs.
    """

    def __init__(
        self,
        trace: TraceStore,
        options: TraceOptions | None = None,
        *,
        expectations: Sequence[Expectation] = (),
        prune: bool = True,
    ) -> None:
        self.trace = trace
        self.options = options if options is not None else TraceOptions()
        self._expectations = tuple(expectations)
        self._prune = prune
        self._buffer: deque[TraceRow] = deque(maxlen=self.options.buffer)
        self._capacity = self.options.buffer
        self._flush_size = self.options.flush_size
        self._wake = anyio.Event()
        self._waking = False
        self._stack: AsyncExitStack | None = None
        self._scope: anyio.CancelScope | None = None
        self._last_warning = -math.inf
        self._unreported_drops = 0
        self._unreported_failures = 0
        # The last forward step started, of each workflow running here.
        self._at_step: dict[tuple[str, str], str] = {}
        self.written = 0
        """Entries written to the store so far."""
        self.dropped = 0
        """Entries dropped because the buffer was full."""
        self.failed = 0
        """Entries lost because the store failed to write them."""

    def __repr__(self) -> str:
        return (
            f"<TraceRecorder written={self.written} dropped={self.dropped} "
            f"failed={self.failed} waiting={len(self._buffer)}>"
        )

    # -- the buffer ----------------------------------------------------------------

    def _push(self, row: TraceRow) -> None:
        buffer = self._buffer
        if len(buffer) >= self._flush_size:
            self._full()
        buffer.append(row)

    def _full(self) -> None:
        """Enough entries wait to be written now; if the buffer holds no more, the
        entry about to come pushes the oldest out (counted)."""
        if len(self._buffer) >= self._capacity:
            self.dropped += 1
            self._unreported_drops += 1
        if not self._waking:
            self._waking = True
            self._wake.set()

    @property
    def waiting(self) -> int:
        """Entries recorded and not written yet."""
        return len(self._buffer)

    async def flush(self) -> None:
        """Write what waits now (the recorder does it on its own; useful in tests).

        What comes meanwhile waits for the next flush: written as it comes, it
        would go in batches of a few entries.
        """
        buffer = self._buffer
        left = len(buffer)
        while left and buffer:
            count = min(len(buffer), left, WRITE_BATCH)
            left -= count
            if count == len(buffer):
                rows = list(buffer)
                buffer.clear()
            else:
                rows = [buffer.popleft() for _ in range(count)]
            try:
                await self.trace.add(rows)
            except Exception as exc:
                if stops_work(exc):
                    raise
                self.failed += count
                self._unreported_failures += count
                self._warn(f"{type(exc).__name__}: {redact_error(exc)}")
            else:
                self.written += count
        if self._unreported_drops:
            self._warn()

    def _warn(self, failure: str | None = None) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            return
        self._last_warning = now
        if self._unreported_drops:
            logger.warning(
                "the flow trace dropped %d entries: more came than its buffer of %d holds "
                "while the store wrote (raise TraceOptions(buffer=...), or the store is slow)",
                self._unreported_drops,
                self._capacity,
            )
            self._unreported_drops = 0
        if self._unreported_failures:
            logger.warning(
                "the flow trace could not write %d entries to the store%s",
                self._unreported_failures,
                f" ({failure})" if failure else "",
            )
            self._unreported_failures = 0

    # -- running -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("this TraceRecorder is already running")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            group = await stack.enter_async_context(anyio.create_task_group())
            self._scope = group.cancel_scope
            group.start_soon(self._flushing)
            if self._prune:
                group.start_soon(self._pruning)
            if self._expectations:
                from ._trace_expect import watch

                group.start_soon(watch, self.trace, self._expectations, self)
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, scope = self._stack, self._scope
        self._stack = self._scope = None
        if stack is None or scope is None:
            return
        scope.cancel()
        try:
            await stack.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_WITHIN):
                await self.flush()
            if self._buffer:
                logger.warning(
                    "the flow trace could not write its last %d entries before stopping",
                    len(self._buffer),
                )
                self._buffer.clear()

    async def _flushing(self) -> None:
        interval = self.options.flush_interval
        while True:
            with anyio.move_on_after(interval):
                await self._wake.wait()
            if self._waking:
                self._wake = anyio.Event()
                self._waking = False
            await self.flush()

    async def _pruning(self) -> None:
        """Remove the old entries, and the oldest beyond the bound, now and then
        (every process does; pruning twice is harmless)."""
        retention = self.options.retention.total_seconds()
        interval = min(max(retention / 10, 1.0), 60.0)
        while True:
            try:
                removed = await self._prune_once()
            except Exception as exc:  # never the bus's failure: the trace waits
                if stops_work(exc):
                    raise
                logger.warning(
                    "could not prune the flow trace (%s: %s); trying again later",
                    type(exc).__name__,
                    redact_error(exc),
                )
            else:
                if removed:
                    logger.debug("pruned %d flow trace entries", removed)
            await anyio.sleep(interval)

    async def _prune_once(self) -> int:
        cutoff = datetime.now(UTC) - self.options.retention
        trace = self.trace
        removed = await _in_batches(lambda n: trace.prune(cutoff, limit=n))
        most = self.options.max_entries
        if most is not None:
            removed += await _in_batches(lambda n: trace.cap(most, limit=n))
        return removed

    # -- the bus -------------------------------------------------------------------

    # ``published`` and ``handled`` come for every message: they build the row
    # and push it inline, with nothing looked up twice.

    def published(self, envelope: Envelope) -> None:
        service = handler = workflow = workflow_id = step = detail = None
        handling = _HANDLING.get()
        if handling is not None:
            service, handler = handling.service, handling.handler
        else:
            running = _STEP.get()
            if running is not None:
                workflow, workflow_id, step = running.workflow, running.workflow_id, running.step
                if running.compensating:
                    detail = "compensation"
            else:
                workflow_id = FLOW.get()
        message = envelope._message
        row = (
            _now(),
            envelope.correlation_id,
            "publish",
            "published",
            envelope.message_id,
            envelope.causation_id,
            envelope.type,
            service,
            handler,
            workflow,
            workflow_id,
            step,
            None,
            None,
            None,
            None,
            None
            if message is None or type(message).__flowkit_correlate_by__ is None
            else business_key(message),
            detail,
        )
        buffer = self._buffer
        if len(buffer) >= self._flush_size:
            self._full()
        buffer.append(row)

    def before_handle(self, ctx: Context) -> None:
        _HANDLING.set(ctx)

    def handled(self, ctx: Context, duration: float) -> None:
        # _HANDLING keeps this context until the task's next handling: nothing
        # is published in between, and clearing it would cost every handling.
        envelope = ctx.envelope
        message = envelope._message
        spec = ctx._spec
        row = (
            _now(),
            envelope.correlation_id,
            "handle",
            "handled",
            envelope.message_id,
            envelope.causation_id,
            envelope.type,
            spec.service,
            spec.name,
            None,
            None,
            None,
            ctx.attempt,
            duration,
            None,
            None,
            None
            if message is None or type(message).__flowkit_correlate_by__ is None
            else business_key(message),
            None,
        )
        buffer = self._buffer
        if len(buffer) >= self._flush_size:
            self._full()
        buffer.append(row)

    def attempt_failed(
        self, ctx: Context, error: BaseException, duration: float, *, will_retry: bool
    ) -> None:
        envelope = ctx.envelope
        key = envelope_key(envelope)
        try:
            values: object = envelope.payload
        except Exception:  # a payload that cannot be dumped: mask by pattern only
            values = None
        self._push(
            (
                time.time(),
                envelope.correlation_id,
                "handle",
                "retried" if will_retry else "failed",
                envelope.message_id,
                envelope.causation_id,
                envelope.type,
                ctx.service,
                ctx.handler,
                None,
                None,
                None,
                ctx.attempt,
                duration,
                _qualified(error),
                redact_error(error, values, keep=(envelope.correlation_id, key or "")),
                key,
                None,
            )
        )

    def dead_lettered(self, letter: DeadLetter) -> None:
        try:
            envelope = decode_envelope(letter.body)
        except DecodeError:
            return  # not even an envelope: it belongs to no flow
        service, _, handler = letter.consumer.partition(":")
        # A letter of a message that was never handled (it did not decode or was
        # too large) says why in its error; otherwise the failed attempt said it.
        error = None
        if not letter.attempts:
            error = redact_error(letter.error, envelope.payload, keep=(envelope.correlation_id,))
        self._push(
            (
                time.time(),
                envelope.correlation_id,
                "dead_letter",
                "dead_lettered",
                letter.message_id or envelope.message_id,
                envelope.causation_id,
                envelope.type,
                service,
                handler,
                None,
                None,
                None,
                letter.attempts,
                None,
                letter.error_type,
                error,
                None,
                letter.id,
            )
        )

    # -- the saga engine ----------------------------------------------------------------

    def _workflow(
        self,
        event: WorkflowEvent,
        outcome: str,
        correlation_id: str | None = None,
        handling: Context | None = None,
    ) -> None:
        error = event.error
        self._push(
            (
                time.time(),
                correlation_id or event.workflow_id,
                "workflow",
                outcome,
                None,
                handling.envelope.message_id if handling is not None else None,
                None,
                handling.service if handling is not None else None,
                handling.handler if handling is not None else None,
                event.workflow,
                event.workflow_id,
                None,
                None,
                event.duration,
                error.type if error is not None else None,
                redact_error(error.message) if error is not None else None,
                None,
                redact_error(event.reason) if event.reason else None,
            )
        )

    def workflow_started(self, event: WorkflowEvent) -> None:
        outcome = "resumed" if event.resumed else "started"
        handling = _HANDLING.get()
        self._workflow(event, outcome, handling=handling)
        if handling is not None and handling.envelope.correlation_id != event.workflow_id:
            # A handler started it: the handled message's flow links to the workflow's.
            self._workflow(event, outcome, handling.envelope.correlation_id, handling)

    def workflow_finished(self, event: WorkflowEvent) -> None:
        self._at_step.pop((event.workflow, event.workflow_id), None)
        self._workflow(event, event.status.value.lower())

    def workflow_stopped(self, event: WorkflowEvent) -> None:
        step = self._at_step.pop((event.workflow, event.workflow_id), None)
        if event.status is WorkflowStatus.WAITING:
            # Parked until its wait is due: it did not stop, it waits (at ``step``).
            self._push(
                (
                    time.time(),
                    event.workflow_id,
                    "workflow",
                    "waiting",
                    None,
                    None,
                    None,
                    None,
                    None,
                    event.workflow,
                    event.workflow_id,
                    step,
                    None,
                    event.duration,
                    None,
                    None,
                    None,
                    _waiting_detail(event),
                )
            )
        else:
            self._workflow(event, "stopped")

    def _step(
        self,
        event: StepEvent,
        outcome: str,
        error: BaseException | None = None,
        detail: str | None = None,
    ) -> None:
        self._push(
            (
                time.time(),
                event.workflow_id,
                "compensation" if event.compensating else "step",
                outcome,
                None,
                None,
                None,
                None,
                None,
                event.workflow,
                event.workflow_id,
                event.step,
                event.attempt,
                event.duration,
                _qualified(error) if error is not None else None,
                redact_error(error, keep=(event.workflow_id,)) if error is not None else None,
                None,
                detail,
            )
        )

    def step_started(self, event: StepEvent) -> None:
        if not event.compensating:
            at, key = self._at_step, (event.workflow, event.workflow_id)
            if key not in at and len(at) >= MAX_RUNNING:
                del at[next(iter(at))]  # one whose end this recorder was not told
            at[key] = event.step
        self._step(event, "started")

    def step_succeeded(self, event: StepEvent) -> None:
        self._step(event, "succeeded")

    def step_failed(self, event: StepEvent) -> None:
        if event.will_retry:
            delay = event.retry_delay
            detail = None if delay is None else f"retrying in {delay:.3f}s"
            self._step(event, "retried", event.error, detail)
        else:
            self._step(event, "failed", event.error)

    def step_interrupted(self, event: StepEvent) -> None:
        self._step(event, "interrupted")

    async def intercept(self, ctx: StepContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        token = _STEP.set(ctx)
        try:
            return await proceed()
        finally:
            _STEP.reset(token)


async def _in_batches(remove: Callable[[int], Awaitable[int]]) -> int:
    """Call ``remove(limit)`` until it removes less than a batch (100 batches at most)."""
    total = 0
    for _ in range(100):
        removed = await remove(PRUNE_BATCH)
        total += removed
        if removed < PRUNE_BATCH:
            break
        await anyio.lowlevel.checkpoint()  # let the others write between two batches
    return total


def recorder_for(
    store: object,
    trace: bool | TraceOptions,
    *,
    expectations: Sequence[Expectation] = (),
    prune: bool = True,
) -> TraceRecorder | None:
    """The recorder of a bus or an orchestrator, or None when it records nothing.

    Args:
        store: its store (None: no store). A store opened read-only is
            recorded to by nobody.
        trace: its ``trace`` argument: True records when the store keeps a
            trace, False never; options record with them (and require a store
            that keeps a trace).
        expectations: the bus's expectations, checked while it runs.
        prune: prune the trace while it runs.

    Raises:
        DefinitionError: if ``trace`` is neither a bool nor TraceOptions.
        StoreError: if options were given and the store keeps no trace.
    """
    if getattr(store, "read_only", False) is True:
        return None  # opened to be read (by the command line): nothing is written to it
    if isinstance(trace, bool):
        if not trace or store is None or not callable(getattr(store, "trace_ops", None)):
            if expectations:
                logger.warning(
                    "%d expectation(s) are not checked: they are checked against the flow "
                    "trace, and %s",
                    len(expectations),
                    "tracing is off (trace=False)"
                    if not trace
                    else "there is no store that keeps one (give the bus a store)",
                )
            return None
        return TraceRecorder(trace_of(store), expectations=expectations, prune=prune)
    if not isinstance(trace, TraceOptions):
        raise DefinitionError(f"trace must be True, False or TraceOptions, not {trace!r}")
    return TraceRecorder(trace_of(store), trace, expectations=expectations, prune=prune)


def check_trace_argument(trace: object) -> None:
    """Check a ``trace=`` argument at construction.

    Raises:
        DefinitionError: if it is neither a bool nor :class:`TraceOptions`.
    """
    if not isinstance(trace, bool | TraceOptions):
        raise DefinitionError(f"trace must be True, False or TraceOptions(...), not {trace!r}")


def _waiting_detail(event: WorkflowEvent) -> str | None:
    """What a parked workflow waits for, and until when."""
    if event.waiting_for is None:
        return None
    if event.wake_at is None:
        return f"for {event.waiting_for} with no time limit"
    return f"for {event.waiting_for} until {event.wake_at.isoformat(timespec='seconds')}"
