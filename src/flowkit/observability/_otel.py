"""OpenTelemetry for buses and orchestrators: spans, metrics, and the W3C trace
context carried in the envelope's headers.

One observer, :class:`OpenTelemetry`, is both a
:class:`~flowkit.BusObserver` and a :class:`~flowkit.SagaObserver`:

- a PRODUCER span around each send (``publish``, ``send`` for a request,
  ``create`` for an outbox write), whose context is injected into the
  envelope's headers (``traceparent``, ``tracestate``, ``baggage`` with the
  default propagator), so it crosses every transport;
- a CONSUMER span around each handling, whose parent is the context the
  envelope carries: every handler of a fan-out is a child of the one publish,
  and what a handler sends is a child of its handling;
- an INTERNAL span per workflow run in this process, one per step attempt and
  one per compensation attempt; a remote step's command is sent inside its
  step's span; a run parked at a wait step ends ``flowkit.workflow.waiting``
  (not an error), and the run that goes on once it is woken has a span of its own;
- counters of messages handled, retried and dead-lettered, and histograms of
  the handling and step durations, with attributes of low cardinality.

Attributes follow OpenTelemetry's messaging semantic conventions, plus
``flowkit.*`` ones. No payload value is ever recorded; an exception's message
is, with the secrets of URLs in it masked.
"""

from __future__ import annotations

import logging
import traceback
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._errors import MissingDependency
from .._redact import redact_url
from ..choreography import BusObserver
from ..choreography._consumer import qualified_name
from ..orchestration import SagaObserver, WorkflowStatus

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - the message is tested in a subprocess
    raise MissingDependency(
        "opentelemetry-api", "otel", "flowkit.observability.otel.OpenTelemetry"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.util.types import AttributeValue

    from ..choreography import Context
    from ..choreography._observe import Outgoing
    from ..orchestration import StepContext, StepEvent, WorkflowEvent
    from ..stores import DeadLetter

__all__ = ["OpenTelemetry"]

logger = logging.getLogger("flowkit.observability")

#: The instrumentation scope of every span and instrument.
SCOPE = "flowkit"
#: Spans of workflows and steps kept open at once; past that the oldest are
#: ended (a workflow or step whose end was never told, such as an observer
#: added in the middle of a run).
MAX_OPEN_SPANS = 10_000
# While a provider is missing, look again for one set since, every so many calls.
_LOOK_EVERY = 256

_SYSTEM = "flowkit"
# OpenTelemetry's operation type and the span's verb, by the way a message is sent.
_SENDS: dict[str, tuple[str, str]] = {
    "publish": ("send", "publish"),
    "request": ("send", "send"),
    "outbox": ("create", "create"),
}

_NOOP_METER_PROVIDERS: tuple[type[Any], ...] = (metrics.NoOpMeterProvider,)
try:  # the proxy the API hands out until an SDK's provider is set
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    _NOOP_METER_PROVIDERS = (metrics.NoOpMeterProvider, _ProxyMeterProvider)
except ImportError:  # pragma: no cover - another API version
    pass
_NOOP_TRACER_PROVIDERS = (trace.NoOpTracerProvider, trace.ProxyTracerProvider)


def _record_error(span: trace.Span, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc``: its type, its message and traceback
    with the secrets of URLs masked."""
    if not span.is_recording():
        return
    kind = qualified_name(exc)
    message = redact_url(str(exc))
    span.record_exception(
        exc,
        attributes={
            "exception.message": message,
            "exception.stacktrace": redact_url("".join(traceback.format_exception(exc))),
        },
    )
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, f"{kind}: {message}" if message else kind))


class OpenTelemetry(BusObserver, SagaObserver):
    """Traces and measures buses and orchestrators with OpenTelemetry.

    Give the same instance to every bus and orchestrator of a process::

        from flowkit.observability.otel import OpenTelemetry

        otel = OpenTelemetry()
        bus = Choreography(transport, observers=[otel])
        orders = OrderSaga(store, transport=transport, observers=[otel])

    Without arguments it uses the global providers (what
    ``opentelemetry.trace.set_tracer_provider`` and
    ``opentelemetry.metrics.set_meter_provider`` set, or the
    ``opentelemetry-instrument`` launcher), looked up when used, so it may be
    made before they are set. While neither is set (the API alone, no SDK),
    the observer says so through :meth:`watching` and costs next to nothing.

    Args:
        tracer_provider: where spans go (the global one by default).
        meter_provider: where measurements go (the global one by default).
        propagator: how the trace context is written into and read from the
            envelope's headers (the global one by default: W3C trace context
            and baggage, unless ``OTEL_PROPAGATORS`` says otherwise).

    Raises:
        MissingDependency: at import, if ``opentelemetry-api`` is not
            installed (``pip install 'flowkit[otel]'``).
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self._given_tracers = tracer_provider
        self._given_meters = meter_provider
        self._propagator = propagator
        self._tracer: trace.Tracer | None = None
        self._meter: metrics.Meter | None = None
        self._on = self._settled = False
        self._unlooked = 1  # calls until the next look: the first one looks
        self._handles: dict[int, trace.Span] = {}
        self._workflows: dict[tuple[str, str], trace.Span] = {}
        self._steps: dict[tuple[str, str, str, bool], trace.Span] = {}
        self._look()

    # -- providers -----------------------------------------------------------------------

    def _look(self) -> None:
        """Find the providers; settled once both are real (a global provider is set once)."""
        tracers = self._given_tracers or trace.get_tracer_provider()
        meters = self._given_meters or metrics.get_meter_provider()
        if self._tracer is None and not isinstance(tracers, _NOOP_TRACER_PROVIDERS):
            self._tracer = tracers.get_tracer(SCOPE, __version__)
        if self._meter is None and not isinstance(meters, _NOOP_METER_PROVIDERS):
            self._meter = meter = meters.get_meter(SCOPE, __version__)
            self._handled = meter.create_counter(
                "flowkit.messages.handled", "{message}", "Messages a handler handled."
            )
            self._retried = meter.create_counter(
                "flowkit.messages.retried",
                "{message}",
                "Failed handling attempts that will be retried.",
            )
            self._dead_lettered = meter.create_counter(
                "flowkit.messages.dead_lettered",
                "{message}",
                "Messages a consumer gave up on and kept as dead letters.",
            )
            self._process_duration = meter.create_histogram(
                "messaging.process.duration", "s", "How long one handling attempt took."
            )
            self._step_duration = meter.create_histogram(
                "flowkit.step.duration",
                "s",
                "How long one attempt of a workflow step or compensation took.",
            )
        self._on = self._tracer is not None or self._meter is not None
        self._settled = self._tracer is not None and self._meter is not None

    @property
    def propagator(self) -> TextMapPropagator:
        """The propagator writing and reading the trace context in headers."""
        return self._propagator or propagate.get_global_textmap()

    # -- the bus -------------------------------------------------------------------------

    def watching(self) -> bool:
        """Whether a tracer or meter provider is set (the API alone records nothing).

        While one is missing, the global providers are looked up again at the
        first call and every 256 calls, so providers set after this observer
        was made (and after the bus started) are used from then on.
        """
        if self._settled:
            return True
        self._unlooked -= 1
        if self._unlooked <= 0:
            self._unlooked = _LOOK_EVERY
            self._look()
        return self._on

    def _tracing(self) -> trace.Tracer | None:
        """The tracer, if a tracer provider is set."""
        tracer = self._tracer
        if tracer is None and self.watching():
            tracer = self._tracer
        return tracer

    def sending(self, outgoing: Outgoing) -> _Sending | None:
        tracer = self._tracing()
        return None if tracer is None else _Sending(self, tracer, outgoing)

    def handling(self, ctx: Context) -> _Handling | None:
        tracer = self._tracing()
        return None if tracer is None else _Handling(self, tracer, ctx)

    def handled(self, ctx: Context, duration: float) -> None:
        span = self._handles.get(id(ctx))
        if span is not None:
            span.set_attribute("flowkit.outcome", "handled")
        if self._meter is not None:
            attributes = _handling_attributes(ctx)
            self._handled.add(1, attributes)
            attributes["flowkit.outcome"] = "handled"
            self._process_duration.record(duration, attributes)

    def attempt_failed(
        self, ctx: Context, error: BaseException, duration: float, *, will_retry: bool
    ) -> None:
        outcome = "retried" if will_retry else "dead_lettered"
        span = self._handles.get(id(ctx))
        if span is not None:
            span.set_attribute("flowkit.outcome", outcome)
            _record_error(span, error)
        if self._meter is not None:
            attributes = _handling_attributes(ctx)
            if will_retry:
                self._retried.add(1, attributes)
            attributes["flowkit.outcome"] = outcome
            attributes["error.type"] = qualified_name(error)
            self._process_duration.record(duration, attributes)

    def dead_lettered(self, letter: DeadLetter) -> None:
        span = trace.get_current_span()
        if span.is_recording() and span in self._handles.values():
            span.add_event("dead_lettered", {"flowkit.dead_letter.id": letter.id})
        if self._meter is not None:
            service, _, handler = letter.consumer.partition(":")
            self._dead_lettered.add(
                1,
                {
                    "messaging.system": _SYSTEM,
                    "messaging.destination.name": letter.topic,
                    "messaging.consumer.group.name": letter.consumer,
                    "flowkit.service": service,
                    "flowkit.handler": handler,
                    "error.type": letter.error_type,
                },
            )

    # -- the saga engine -----------------------------------------------------------------

    def workflow_started(self, event: WorkflowEvent) -> None:
        tracer = self._tracing()
        if tracer is None:
            return
        span = tracer.start_span(
            f"workflow {event.workflow}",
            kind=SpanKind.INTERNAL,
            attributes={
                "flowkit.workflow": event.workflow,
                "flowkit.workflow.id": event.workflow_id,
                "flowkit.workflow.resumed": event.resumed,
            },
        )
        _keep(self._workflows, (event.workflow, event.workflow_id), span)

    def workflow_finished(self, event: WorkflowEvent) -> None:
        self._end_workflow(event)

    def workflow_stopped(self, event: WorkflowEvent) -> None:
        self._end_workflow(event, stopped=True)

    def _end_workflow(self, event: WorkflowEvent, *, stopped: bool = False) -> None:
        # A workflow parked at a wait step is not stopped: it waits (held by no
        # process) until it is due, and a new span continues it when it is woken.
        waiting = stopped and event.status is WorkflowStatus.WAITING
        for key in [k for k in self._steps if k[0] == event.workflow and k[1] == event.workflow_id]:
            step = self._steps.pop(key)
            step.set_attribute("flowkit.outcome", "waiting" if waiting else "stopped")
            step.end()
        span = self._workflows.pop((event.workflow, event.workflow_id), None)
        if span is None:
            return
        span.set_attribute("flowkit.workflow.status", event.status.value)
        if waiting:
            span.set_attribute("flowkit.workflow.waiting", True)
        elif stopped:
            span.set_attribute("flowkit.workflow.stopped", True)
        if event.reason:
            span.set_attribute("flowkit.workflow.reason", redact_url(event.reason))
        if event.status is WorkflowStatus.FAILED:
            description = event.reason or "the workflow failed"
            span.set_status(Status(StatusCode.ERROR, redact_url(description)))
        span.end()

    def _step_span(
        self, workflow: str, workflow_id: str, step: str, compensating: bool, attempt: int
    ) -> trace.Span | None:
        tracer = self._tracer
        if tracer is None:
            return None
        key = (workflow, workflow_id, step, compensating)
        span = self._steps.get(key)
        if span is not None:
            return span
        parent = self._workflows.get((workflow, workflow_id))
        span = tracer.start_span(
            f"compensate {workflow}.{step}" if compensating else f"step {workflow}.{step}",
            context=trace.set_span_in_context(parent) if parent is not None else None,
            kind=SpanKind.INTERNAL,
            attributes={
                "flowkit.workflow": workflow,
                "flowkit.workflow.id": workflow_id,
                "flowkit.step": step,
                "flowkit.attempt": attempt,
                "flowkit.compensating": compensating,
            },
        )
        _keep(self._steps, key, span)
        return span

    def step_started(self, event: StepEvent) -> None:
        if self._tracing() is not None:
            self._step_span(
                event.workflow, event.workflow_id, event.step, event.compensating, event.attempt
            )

    def step_succeeded(self, event: StepEvent) -> None:
        self._end_step(event, "succeeded")

    def step_failed(self, event: StepEvent) -> None:
        self._end_step(event, "retried" if event.will_retry else "failed")

    def step_interrupted(self, event: StepEvent) -> None:
        self._end_step(event, "interrupted")

    def _end_step(self, event: StepEvent, outcome: str) -> None:
        key = (event.workflow, event.workflow_id, event.step, event.compensating)
        span = self._steps.pop(key, None)
        if span is not None:
            span.set_attribute("flowkit.outcome", outcome)
            if event.error is not None:
                _record_error(span, event.error)
            span.end()
        if self._meter is not None and event.duration is not None:
            attributes: dict[str, AttributeValue] = {
                "flowkit.workflow": event.workflow,
                "flowkit.step": event.step,
                "flowkit.compensating": event.compensating,
                "flowkit.outcome": outcome,
            }
            if event.error is not None:
                attributes["error.type"] = qualified_name(event.error)
            self._step_duration.record(event.duration, attributes)

    async def intercept(self, ctx: StepContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Call the step with its span as the current span, so that what it does
        (a remote step's command, the calls it makes) is traced inside it."""
        if self._tracing() is None:
            return await proceed()
        span = self._step_span(
            ctx.workflow, ctx.workflow_id, ctx.step, ctx.compensating, ctx.attempt
        )
        assert span is not None
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await proceed()
        finally:
            otel_context.detach(token)

    def __repr__(self) -> str:
        return (
            f"OpenTelemetry(tracing={self._tracer is not None}, metrics={self._meter is not None})"
        )


def _keep(spans: dict[Any, trace.Span], key: Any, span: trace.Span) -> None:
    """Keep an open span, ending the oldest when too many are open."""
    while len(spans) >= MAX_OPEN_SPANS:
        oldest = next(iter(spans))
        left = spans.pop(oldest)
        left.set_attribute("flowkit.outcome", "unknown")
        left.end()
        logger.warning("more than %d workflow or step spans open; ended the oldest", MAX_OPEN_SPANS)
    spans[key] = span


def _handling_attributes(ctx: Context) -> dict[str, AttributeValue]:
    return {
        "messaging.system": _SYSTEM,
        "messaging.destination.name": ctx.envelope.type,
        "messaging.consumer.group.name": f"{ctx.service}:{ctx.handler}",
        "flowkit.service": ctx.service,
        "flowkit.handler": ctx.handler,
    }


class _Scope:
    """A span current from ``__enter__`` to ``__exit__``, which ends it (failed
    with the exception that left the scope, if any)."""

    __slots__ = ("_handle", "_observer", "_span", "_token", "_tracer")

    def __init__(self, observer: OpenTelemetry, tracer: trace.Tracer) -> None:
        self._observer = observer
        self._tracer = tracer
        self._handle: int | None = None

    def _make_current(self, span: trace.Span, current: otel_context.Context) -> None:
        self._span = span
        self._token = otel_context.attach(current)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        try:
            if self._handle is not None:
                self._observer._handles.pop(self._handle, None)
            if exc is not None:
                _record_error(span, exc)
            span.end()
        finally:
            otel_context.detach(self._token)


class _Sending(_Scope):
    """The span of one send, current while the message is encoded and sent."""

    __slots__ = ("_outgoing",)

    def __init__(self, observer: OpenTelemetry, tracer: trace.Tracer, outgoing: Outgoing) -> None:
        super().__init__(observer, tracer)
        self._outgoing = outgoing

    def __enter__(self) -> None:
        outgoing = self._outgoing
        operation, verb = _SENDS[outgoing.via]
        attributes: dict[str, AttributeValue] = {
            "messaging.system": _SYSTEM,
            "messaging.operation.type": operation,
            "messaging.operation.name": verb,
            "messaging.destination.name": outgoing.type,
            "messaging.message.id": outgoing.message_id,
            "messaging.message.conversation_id": outgoing.correlation_id,
        }
        if outgoing.causation_id is not None:
            attributes["flowkit.causation_id"] = outgoing.causation_id
        span = self._tracer.start_span(
            f"{verb} {outgoing.type}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        current = trace.set_span_in_context(span)
        self._make_current(span, current)
        self._observer.propagator.inject(outgoing.headers, context=current)


class _Handling(_Scope):
    """The span of one handling, current while the handler runs and the message is settled."""

    __slots__ = ("_ctx",)

    def __init__(self, observer: OpenTelemetry, tracer: trace.Tracer, ctx: Context) -> None:
        super().__init__(observer, tracer)
        self._ctx = ctx

    def __enter__(self) -> None:
        ctx = self._ctx
        envelope = ctx.envelope
        # The parent is what the message carries, never what happens to be current
        # in the consumer's task: a message without trace context starts a trace.
        parent = self._observer.propagator.extract(envelope.headers, context=otel_context.Context())
        attributes = _handling_attributes(ctx)
        attributes["messaging.operation.type"] = "process"
        attributes["messaging.operation.name"] = "process"
        attributes["messaging.message.id"] = envelope.message_id
        attributes["messaging.message.conversation_id"] = envelope.correlation_id
        attributes["flowkit.attempt"] = ctx.attempt
        if envelope.causation_id is not None:
            attributes["flowkit.causation_id"] = envelope.causation_id
        span = self._tracer.start_span(
            f"process {envelope.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        self._handle = id(ctx)
        self._observer._handles[self._handle] = span
        self._make_current(span, trace.set_span_in_context(span, parent))
