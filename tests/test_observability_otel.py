"""OpenTelemetry: spans, metrics and the trace context in the envelope's headers,
with the SDK's in-memory exporter and metric reader."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from flowkit import (
    BusObserver,
    Choreography,
    Command,
    Context,
    Event,
    Message,
    NonRetryableError,
    Outgoing,
    Retry,
)
from flowkit.observability import _otel
from flowkit.observability.otel import OpenTelemetry
from flowkit.orchestration import (
    Orchestrator,
    Remote,
    Step,
    StepContext,
    WaitForSignal,
    WorkflowStatus,
)
from flowkit.stores import MemoryStore, SQLiteStore
from flowkit.transports import InMemoryTransport, from_url

from ._util import wait_until
from .brokers import broker_url
from .otel_worker import Ping, Pong

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
# A payload value that must never reach a span or a metric.
CARD = "4242-4242-4242-4242"


class OrderPlaced(Event):
    order_id: str
    card: str = CARD


class Shipped(Event):
    order_id: str


class Telemetry:
    """An OpenTelemetry observer on SDK providers that keep everything in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[self.reader])
        self.otel = OpenTelemetry(tracer_provider=tracer_provider, meter_provider=meter_provider)

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [s for s in found if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        (found,) = self.spans(name)
        return found

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for m in scope.metrics
            if m.name == metric
            for point in m.data.data_points
        ]

    def count(self, metric: str, **attributes: object) -> int:
        return sum(
            int(point.value)
            for point in self.points(metric)
            if all(point.attributes.get(k) == v for k, v in attributes.items())
        )


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def attr(span: ReadableSpan, name: str) -> Any:
    """One attribute of a span."""
    return (span.attributes or {})[name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def everything_recorded(telemetry: Telemetry) -> str:
    """Every attribute and event of every span and metric point, as text."""
    parts: list[str] = []
    for span in telemetry.spans():
        parts.append(json.dumps(dict(span.attributes or {})))
        parts.extend(json.dumps(dict(event.attributes or {})) for event in span.events)
        parts.append(span.status.description or "")
    data = telemetry.reader.get_metrics_data()
    if data is not None:
        parts.append(data.to_json())
    return "\n".join(parts)


# -- the bus ------------------------------------------------------------------------------


async def test_each_handler_of_a_fan_out_is_a_child_of_the_one_publish(
    telemetry: Telemetry,
) -> None:
    bus = Choreography(InMemoryTransport(), observers=[telemetry.otel])
    seen: list[Context] = []
    for service in ("billing", "shipping", "mail"):

        @bus.on(OrderPlaced, service=service, name="on_order")
        async def on_order(event: OrderPlaced, ctx: Context) -> None:
            seen.append(ctx)

    async with bus:
        sent = await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_idle()

    publish = telemetry.span("publish OrderPlaced")
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is None
    assert dict(publish.attributes or {}) == {
        "messaging.system": "flowkit",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "OrderPlaced",
        "messaging.message.id": sent.message_id,
        "messaging.message.conversation_id": sent.correlation_id,
    }
    # The context travels in the envelope's headers (W3C trace context).
    traceparent = sent.headers["traceparent"]
    version, trace_part, parent, flags = traceparent.split("-")
    assert (version, trace_part, parent) == (
        "00",
        f"{trace_id(publish):032x}",
        f"{span_id(publish):016x}",
    )
    assert int(flags, 16) & 1  # sampled
    assert all(ctx.envelope.headers["traceparent"] == traceparent for ctx in seen)

    handlings = telemetry.spans("process OrderPlaced")
    assert len(handlings) == 3
    assert {attr(s, "flowkit.service") for s in handlings} == {
        "billing",
        "shipping",
        "mail",
    }
    for span in handlings:
        attributes = dict(span.attributes or {})
        service = attr(span, "flowkit.service")
        assert span.kind is SpanKind.CONSUMER
        assert trace_id(span) == trace_id(publish)
        assert parent_id(span) == span_id(publish)
        assert span.parent is not None and span.parent.is_remote
        assert span.status.status_code is StatusCode.UNSET
        assert attributes == {
            "messaging.system": "flowkit",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": "OrderPlaced",
            "messaging.consumer.group.name": f"{service}:on_order",
            "messaging.message.id": sent.message_id,
            "messaging.message.conversation_id": sent.correlation_id,
            "flowkit.service": service,
            "flowkit.handler": "on_order",
            "flowkit.attempt": 1,
            "flowkit.outcome": "handled",
        }
    assert telemetry.count("flowkit.messages.handled", **{"flowkit.service": "mail"}) == 1
    assert telemetry.count("flowkit.messages.handled") == 3
    durations = telemetry.points("messaging.process.duration")
    assert sum(p.count for p in durations) == 3
    assert {p.attributes["flowkit.outcome"] for p in durations} == {"handled"}
    assert CARD not in everything_recorded(telemetry)


async def test_a_publish_inside_a_handler_is_a_child_of_its_handling(
    telemetry: Telemetry,
) -> None:
    bus = Choreography(InMemoryTransport(), observers=[telemetry.otel])

    @bus.on(OrderPlaced, service="shipping", emits=[Shipped])
    async def ship(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(Shipped(order_id=event.order_id))

    @bus.on(Shipped, service="mail")
    async def mail(event: Shipped) -> None:
        pass

    async with bus:
        sent = await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_idle()

    first = telemetry.span("publish OrderPlaced")
    handling = telemetry.span("process OrderPlaced")
    second = telemetry.span("publish Shipped")
    mailing = telemetry.span("process Shipped")
    assert parent_id(handling) == span_id(first)
    assert parent_id(second) == span_id(handling)
    assert parent_id(mailing) == span_id(second)
    assert {trace_id(s) for s in telemetry.spans()} == {trace_id(first)}
    attributes = dict(second.attributes or {})
    assert attributes["messaging.message.conversation_id"] == sent.correlation_id
    assert attributes["flowkit.causation_id"] == sent.message_id
    assert attr(mailing, "flowkit.causation_id") == sent.message_id


async def test_a_handling_without_trace_context_starts_a_trace_of_its_own(
    telemetry: Telemetry,
) -> None:
    """The consumer's own task may have a current span (the bus was started in
    one): a message that carries no context must not become its child."""
    transport = InMemoryTransport()
    tracer = TracerProvider().get_tracer("app")
    bus = Choreography(transport, observers=[telemetry.otel])

    @bus.on(OrderPlaced, service="shipping")
    async def ship(event: OrderPlaced) -> None:
        pass

    plain = Choreography(transport)  # publishes without an observer: no trace context
    with tracer.start_as_current_span("starting the service"):
        async with bus, plain.run(services=[]):
            await plain.publish(OrderPlaced(order_id="o-1"))
            await bus.wait_idle()
    handling = telemetry.span("process OrderPlaced")
    assert handling.parent is None


async def test_the_outbox_carries_the_context_of_the_handler_that_wrote_it(
    telemetry: Telemetry, tmp_path: Path
) -> None:
    db = str(tmp_path / "shop.db")
    bus = Choreography(InMemoryTransport(), store=SQLiteStore(db), observers=[telemetry.otel])
    conn = sqlite3.connect(db, isolation_level=None)
    mailed: list[Context] = []

    @bus.on(OrderPlaced, service="shipping", emits=[Shipped])
    async def ship(event: OrderPlaced, ctx: Context) -> None:
        conn.execute("BEGIN IMMEDIATE")
        await ctx.outbox_publish(conn, Shipped(order_id=event.order_id))
        conn.execute("COMMIT")

    @bus.on(Shipped, service="mail")
    async def mail(event: Shipped, ctx: Context) -> None:
        mailed.append(ctx)

    try:
        async with bus:
            await bus.publish(OrderPlaced(order_id="o-1"))
            await wait_until(lambda: len(mailed) == 1)
            await bus.wait_idle()
    finally:
        conn.close()
    handling = telemetry.span("process OrderPlaced")
    written = telemetry.span("create Shipped")
    mailing = telemetry.span("process Shipped")
    assert written.kind is SpanKind.PRODUCER
    assert attr(written, "messaging.operation.type") == "create"
    assert attr(written, "messaging.message.id") == mailed[0].envelope.message_id
    assert parent_id(written) == span_id(handling)
    assert parent_id(mailing) == span_id(written)
    assert trace_id(mailing) == trace_id(telemetry.span("publish OrderPlaced"))


async def test_a_retry_then_a_dead_letter_are_recorded_on_spans_and_counters(
    telemetry: Telemetry,
) -> None:
    bus = Choreography(InMemoryTransport(), observers=[telemetry.otel])

    @bus.on(OrderPlaced, service="billing", retry=Retry(attempts=2, backoff=0.01, jitter=0))
    async def charge(event: OrderPlaced) -> None:
        raise ConnectionError("cannot reach redis://:hunter2@payments:6379/0")

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_idle()
        (letter,) = await bus.dead_letters()

    first, second = sorted(
        telemetry.spans("process OrderPlaced"),
        key=lambda s: attr(s, "flowkit.attempt"),
    )
    publish = telemetry.span("publish OrderPlaced")
    assert parent_id(first) == parent_id(second) == span_id(publish)
    assert attr(first, "flowkit.outcome") == "retried"
    assert attr(second, "flowkit.outcome") == "dead_lettered"
    assert attr(second, "flowkit.attempt") == 2
    for span in (first, second):
        assert span.status.status_code is StatusCode.ERROR
        assert (
            span.status.description == "ConnectionError: cannot reach redis://:***@payments:6379/0"
        )
        assert attr(span, "error.type") == "ConnectionError"
        (exception,) = [e for e in span.events if e.name == "exception"]
        recorded = dict(exception.attributes or {})
        assert recorded["exception.type"] == "ConnectionError"
        assert "redis://:***@payments" in str(recorded["exception.message"])
        assert "redis://:***@payments" in str(recorded["exception.stacktrace"])
    assert [e.attributes for e in second.events if e.name == "dead_lettered"] == [
        {"flowkit.dead_letter.id": letter.id}
    ]
    assert "hunter2" not in everything_recorded(telemetry)
    assert CARD not in everything_recorded(telemetry)

    labels = {"flowkit.service": "billing", "messaging.destination.name": "OrderPlaced"}
    assert telemetry.count("flowkit.messages.handled") == 0
    assert telemetry.count("flowkit.messages.retried", **labels) == 1
    assert telemetry.count("flowkit.messages.dead_lettered", **labels) == 1
    outcomes = sorted(
        (p.attributes["flowkit.outcome"], p.attributes["error.type"], p.count)
        for p in telemetry.points("messaging.process.duration")
    )
    assert outcomes == [
        ("dead_lettered", "ConnectionError", 1),
        ("retried", "ConnectionError", 1),
    ]


class Quote(Message):
    price: float


class AskQuote(Command[Quote]):
    order_id: str


async def test_a_request_and_its_handling_are_traced(telemetry: Telemetry) -> None:
    bus = Choreography(InMemoryTransport(), observers=[telemetry.otel])

    @bus.handles(AskQuote, service="pricing")
    async def quote(command: AskQuote) -> Quote:
        return Quote(price=12.5)

    async with bus:
        assert await bus.request(AskQuote(order_id="o-1"), timeout=5) == Quote(price=12.5)

    sent = telemetry.span("send AskQuote")
    handling = telemetry.span("process AskQuote")
    assert sent.kind is SpanKind.PRODUCER
    assert attr(sent, "messaging.operation.name") == "send"
    assert parent_id(handling) == span_id(sent)
    assert attr(handling, "flowkit.outcome") == "handled"


async def test_an_observer_failing_in_its_context_manager_is_logged_and_skipped(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(BusObserver):
        def sending(self, outgoing: Outgoing) -> Any:
            raise RuntimeError("broken observer")

        def handling(self, ctx: Context) -> Any:
            raise RuntimeError("broken observer")

    bus = Choreography(InMemoryTransport(), observers=[Broken(), telemetry.otel])
    got: list[str] = []

    @bus.on(OrderPlaced, service="shipping")
    async def ship(event: OrderPlaced) -> None:
        got.append(event.order_id)

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_idle()
    assert got == ["o-1"]
    assert parent_id(telemetry.span("process OrderPlaced")) == span_id(
        telemetry.span("publish OrderPlaced")
    )
    failed = [r for r in caplog.records if "failed in" in r.getMessage()]
    assert {r.getMessage().rsplit(" ", 1)[-1] for r in failed} == {"sending", "handling"}


# -- without an SDK -------------------------------------------------------------------------


async def test_without_providers_it_records_nothing_and_lets_handlers_run_plainly() -> None:
    otel = OpenTelemetry(
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=metrics.NoOpMeterProvider()
    )
    assert not otel.watching()
    bus = Choreography(InMemoryTransport(), observers=[otel])
    seen: list[Context] = []

    @bus.on(OrderPlaced, service="shipping")
    async def ship(event: OrderPlaced, ctx: Context) -> None:
        seen.append(ctx)

    async with bus:
        sent = await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_idle()
    assert "traceparent" not in sent.headers
    assert "traceparent" not in seen[0].envelope.headers
    assert repr(otel) == "OpenTelemetry(tracing=False, metrics=False)"


async def test_providers_set_after_the_observer_was_made_are_used(
    monkeypatch: pytest.MonkeyPatch, telemetry: Telemetry
) -> None:
    """With no provider given it looks up the global ones, again while none is set."""
    monkeypatch.setattr(_otel, "_LOOK_EVERY", 1)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    monkeypatch.setattr(metrics, "get_meter_provider", metrics.NoOpMeterProvider)
    otel = OpenTelemetry()
    assert not otel.watching()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(telemetry.exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: tracer_provider)
    assert otel.watching()
    bus = Choreography(InMemoryTransport(), observers=[otel])

    @bus.on(OrderPlaced, service="shipping")
    async def ship(event: OrderPlaced) -> None:
        pass

    async with bus:
        await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.wait_idle()
    assert parent_id(telemetry.span("process OrderPlaced")) == span_id(
        telemetry.span("publish OrderPlaced")
    )


def test_a_missing_opentelemetry_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import flowkit.observability.otel\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.startswith("MissingDependency ")
    assert "pip install 'flowkit[otel]'" in out.stdout


# -- the saga engine ------------------------------------------------------------------------


class Shipment(Message):
    tracking: str


class Ship(Command[Shipment]):
    order_id: str


async def reserve(ctx: StepContext, order: OrderPlaced) -> str:
    return f"r-{order.order_id}"


async def release(ctx: StepContext, order: OrderPlaced) -> None:
    pass


class Checkout(Orchestrator[OrderPlaced]):
    steps = (
        Step(reserve, compensate=release),
        Remote(Ship, timeout=5, retry=Retry(attempts=2, backoff=0)),
    )


async def test_an_orchestrated_saga_and_its_compensation_are_one_trace(
    telemetry: Telemetry,
) -> None:
    transport = InMemoryTransport()
    services = Choreography(transport, observers=[telemetry.otel])
    calls = 0

    @services.handles(Ship, service="logistics", retry=Retry(attempts=1))
    async def ship(command: Ship) -> Shipment:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("carrier busy")
        raise NonRetryableError("no carrier for that region")

    async with (
        services,
        Checkout(MemoryStore(), transport=transport, observers=[telemetry.otel]) as checkout,
    ):
        with anyio.fail_after(10):
            outcome = await checkout.run(OrderPlaced(order_id="o-2"), workflow_id="w-2")
    assert outcome.status is WorkflowStatus.COMPENSATED

    workflow = telemetry.span("workflow Checkout")
    assert dict(workflow.attributes or {}) == {
        "flowkit.workflow": "Checkout",
        "flowkit.workflow.id": "w-2",
        "flowkit.workflow.resumed": False,
        "flowkit.workflow.status": "COMPENSATED",
        "flowkit.workflow.reason": outcome.reason,
    }
    reserved = telemetry.span("step Checkout.reserve")
    shipping = sorted(
        telemetry.spans("step Checkout.ship"),
        key=lambda s: attr(s, "flowkit.attempt"),
    )
    compensation = telemetry.span("compensate Checkout.reserve")
    assert [attr(s, "flowkit.outcome") for s in shipping] == ["retried", "failed"]
    assert all(s.status.status_code is StatusCode.ERROR for s in shipping)
    assert attr(reserved, "flowkit.outcome") == "succeeded"
    assert attr(compensation, "flowkit.compensating") is True
    assert attr(compensation, "flowkit.outcome") == "succeeded"
    for step in (reserved, *shipping, compensation):
        assert parent_id(step) == span_id(workflow)
    # The compensation comes after the failure it undoes.
    assert compensation.start_time is not None and shipping[-1].end_time is not None
    assert compensation.start_time >= shipping[-1].end_time

    # Each attempt's command is sent inside its step's span, and handled below it.
    sends = sorted(telemetry.spans("send Ship"), key=lambda s: s.start_time or 0)
    handlings = sorted(telemetry.spans("process Ship"), key=lambda s: s.start_time or 0)
    assert [parent_id(s) for s in sends] == [span_id(s) for s in shipping]
    assert [parent_id(s) for s in handlings] == [span_id(s) for s in sends]
    assert all(attr(s, "messaging.message.conversation_id") == "w-2" for s in sends)
    assert {trace_id(s) for s in telemetry.spans()} == {trace_id(workflow)}

    steps = {
        (
            p.attributes["flowkit.step"],
            p.attributes["flowkit.compensating"],
            p.attributes["flowkit.outcome"],
        ): p.count
        for p in telemetry.points("flowkit.step.duration")
    }
    assert steps == {
        ("reserve", False, "succeeded"): 1,
        ("ship", False, "retried"): 1,
        ("ship", False, "failed"): 1,
        ("reserve", True, "succeeded"): 1,
    }


class Approve(Event):
    ok: bool


class Approval(Orchestrator[OrderPlaced]):
    steps = (Step(reserve, compensate=release), WaitForSignal(Approve))


async def test_a_workflow_parked_at_a_wait_ends_its_span_waiting_not_failed(
    telemetry: Telemetry,
) -> None:
    async with Approval(MemoryStore(), observers=[telemetry.otel]) as approval:
        await approval.start(OrderPlaced(order_id="o-4"), workflow_id="w-4")
        await wait_until(lambda: bool(telemetry.spans("workflow Approval")), timeout=10)
        (parked,) = telemetry.spans("workflow Approval")
        assert attr(parked, "flowkit.workflow.status") == "WAITING"
        assert attr(parked, "flowkit.workflow.waiting") is True
        assert "flowkit.workflow.stopped" not in (parked.attributes or {})
        assert parked.status.status_code is StatusCode.UNSET
        wait = telemetry.span("step Approval.wait_for_approve")
        assert attr(wait, "flowkit.outcome") == "waiting"
        assert wait.status.status_code is StatusCode.UNSET
        assert parent_id(wait) == span_id(parked)

        assert await approval.signal("w-4", Approve(ok=True))
        with anyio.fail_after(10):
            outcome = await approval.wait("w-4")
    assert outcome.status is WorkflowStatus.COMPLETED
    woken = next(s for s in telemetry.spans("workflow Approval") if s is not parked)
    assert attr(woken, "flowkit.workflow.resumed") is True
    assert attr(woken, "flowkit.workflow.status") == "COMPLETED"
    assert "flowkit.workflow.waiting" not in (woken.attributes or {})


# -- across processes, on Redis -------------------------------------------------------------


@pytest.fixture
def redis_prefixed() -> str:
    url = broker_url("Redis", "FLOWKIT_REDIS_URL")
    return f"{url}{'&' if '?' in url else '?'}prefix=otel-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def worker(redis_prefixed: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.otel_worker", redis_prefixed],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the Redis transport runs on asyncio
async def test_the_trace_crosses_redis_and_processes(
    telemetry: Telemetry, redis_prefixed: str, worker: subprocess.Popen[str]
) -> None:
    assert worker.stdout is not None
    line = await anyio.to_thread.run_sync(worker.stdout.readline)
    assert line.strip() == "ready", line + (worker.stderr.read() if worker.stderr else "")
    bus = Choreography(from_url(redis_prefixed), observers=[telemetry.otel])
    answered = anyio.Event()

    @bus.on(Pong, service="origin")
    async def pong(event: Pong) -> None:
        answered.set()

    async with bus:
        with anyio.fail_after(30):
            await bus.publish(Ping(n=1))
            await answered.wait()
    out, err = await anyio.to_thread.run_sync(worker.communicate, None, 30)
    assert worker.returncode == 0, err
    remote = {row["name"]: row for row in json.loads(out.strip().splitlines()[-1])}

    ping = telemetry.span("publish otel_test.Ping")
    back = telemetry.span("process otel_test.Pong")
    the_trace = f"{trace_id(ping):032x}"
    assert remote["process otel_test.Ping"]["trace_id"] == the_trace
    assert remote["process otel_test.Ping"]["parent_id"] == f"{span_id(ping):016x}"
    assert remote["process otel_test.Ping"]["remote_parent"] is True
    assert remote["process otel_test.Ping"]["kind"] == "CONSUMER"
    assert (
        remote["publish otel_test.Pong"]["parent_id"] == remote["process otel_test.Ping"]["span_id"]
    )
    assert f"{trace_id(back):032x}" == the_trace
    assert f"{parent_id(back):016x}" == remote["publish otel_test.Pong"]["span_id"]
