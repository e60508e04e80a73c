"""The flow trace: correlation ids a user can find again, what the bus and the saga
engine record, the causal tree read back, retention and bounds, and expectations."""

from __future__ import annotations

import json
import logging
import time
import uuid  # noqa: TC003 - pydantic reads the annotation at run time
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest

from flowkit import (
    BusObserver,
    Choreography,
    Context,
    DefinitionError,
    Event,
    NonRetryableError,
    Orchestrator,
    Retry,
    Step,
    StepContext,
    StoreError,
    WaitForEvent,
)
from flowkit.cli import main
from flowkit.observability import (
    StalledFlow,
    TraceOptions,
    TraceRecorder,
    flow_graph,
    load_flows,
    trace_json,
    trace_mermaid,
    trace_of,
    trace_text,
)
from flowkit.observability._trace import redact_error
from flowkit.orchestration import WorkflowStatus
from flowkit.stores import MemoryStore, SQLiteStore, StateStore
from flowkit.testing import run_in_memory
from flowkit.transports import InMemoryTransport

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from flowkit.choreography._observe import Outgoing
    from flowkit.stores._trace import TraceRow

pytestmark = pytest.mark.anyio


class OrderPlaced(Event, correlate_by="order_id"):
    order_id: str
    email: str
    total: float


class Shipped(Event):
    order_id: str


class Confirmed(Event):
    order_id: str


class Unkeyed(Event):
    n: int


@pytest.fixture(params=["memory", "sqlite"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StateStore]:
    """A store that keeps a trace: one MemoryStore, or SQLite on one file."""
    if request.param == "memory":
        memory = MemoryStore()
        return lambda: memory
    return lambda: SQLiteStore(tmp_path / "trace.db")


async def _flows(store: StateStore, value: str, **options: Any) -> list[Any]:
    async with store:
        return await load_flows(trace_of(store), value, **options)


# -- correlation ids ---------------------------------------------------------------------


async def test_a_new_flow_is_named_by_its_business_key() -> None:
    bus = Choreography(InMemoryTransport())
    async with run_in_memory(bus) as harness:
        keyed = await bus.publish(OrderPlaced(order_id="o-7", email="a@b.c", total=1.0))
        given = await bus.publish(
            OrderPlaced(order_id="o-7", email="a@b.c", total=1.0), correlation_id="mine"
        )
        plain = await bus.publish(Unkeyed(n=1))
        assert len(harness.published) == 3
    assert keyed.correlation_id == "o-7"
    assert given.correlation_id == "mine"
    assert plain.correlation_id == plain.message_id


async def test_an_observer_wrapping_the_sending_sees_the_same_flow() -> None:
    seen: list[str] = []

    class Stamp(BusObserver):
        def sending(self, outgoing: Outgoing) -> None:
            seen.append(outgoing.correlation_id)

    bus = Choreography(InMemoryTransport(), observers=[Stamp()])
    async with run_in_memory(bus):
        keyed = await bus.publish(OrderPlaced(order_id="o-8", email="a@b.c", total=1.0))
        plain = await bus.publish(Unkeyed(n=1))
    assert seen == ["o-8", plain.message_id]
    assert keyed.correlation_id == "o-8"


async def test_a_handler_publishes_in_its_message_flow() -> None:
    bus = Choreography(InMemoryTransport())

    @bus.on(Unkeyed, service="s", emits=[OrderPlaced])
    async def react(event: Unkeyed, ctx: Context) -> None:
        await ctx.publish(OrderPlaced(order_id="o-9", email="x@y.z", total=2.0))

    async with run_in_memory(bus) as harness:
        first = await bus.publish(Unkeyed(n=1), correlation_id="flow-1")
        await harness.wait_for(OrderPlaced)
        caused = harness.published[-1]
    assert caused.correlation_id == "flow-1"  # the flow goes on: no new key
    assert caused.causation_id == first.message_id


def test_correlate_by_is_checked_when_the_class_is_made() -> None:
    with pytest.raises(DefinitionError, match=r"correlate_by='orderid' names no field.*order_id"):

        class Typo(Event, correlate_by="orderid"):
            order_id: str

    with pytest.raises(DefinitionError, match="str, int or UUID"):

        class Amount(Event, correlate_by="total"):
            total: float

    with pytest.raises(DefinitionError, match="must name a field, as a string"):

        class Number(Event, correlate_by=3):
            order_id: str

    class Inherited(OrderPlaced):
        extra: int = 0

    class Off(OrderPlaced, correlate_by=None):
        pass

    class Optional(Event, correlate_by="ref"):
        ref: uuid.UUID | None = None

    assert Inherited.__flowkit_correlate_by__ == "order_id"
    assert Off.__flowkit_correlate_by__ is None
    assert Optional.__flowkit_correlate_by__ == "ref"


class Work(Event):
    job: str


async def test_what_a_workflow_step_publishes_joins_the_workflow_flow() -> None:
    bus = Choreography(InMemoryTransport())

    async def announce(ctx: StepContext, work: Work) -> None:
        await bus.publish(OrderPlaced(order_id="o-1", email="a@b.c", total=1.0))

    class Announce(Orchestrator[Work]):
        steps = (Step(announce),)

    async with run_in_memory(bus) as harness, Announce(MemoryStore()) as saga:
        await saga.run(Work(job="j"), workflow_id="wf-42")
        await harness.wait_for(OrderPlaced)
    assert harness.published[-1].correlation_id == "wf-42"


# -- recording a choreographed flow ------------------------------------------------------


def _shop(store: StateStore, failures: dict[str, int], **options: Any) -> Choreography:
    bus = Choreography(InMemoryTransport(), store=store, **options)

    @bus.on(
        OrderPlaced,
        service="logistics",
        emits=[Shipped],
        name="assign",
        retry=Retry(attempts=5, backoff=0.001),
    )
    async def assign(event: OrderPlaced, ctx: Context) -> None:
        if failures.get("partner", 0):
            failures["partner"] -= 1
            raise ConnectionError(f"partner down for {event.email}, card 4111111111111111")
        await ctx.publish(Shipped(order_id=event.order_id))

    @bus.on(OrderPlaced, service="notification", emits=[Confirmed], name="confirm")
    async def confirm(event: OrderPlaced, ctx: Context) -> None:
        if "@" not in event.email or failures.get("mail"):
            raise NonRetryableError(f"cannot email {event.email} about {event.order_id}")
        await ctx.publish(Confirmed(order_id=event.order_id))

    @bus.on(Shipped, service="history", name="record")
    async def record(event: Shipped) -> None:
        pass

    return bus


async def test_a_choreographed_flow_is_recorded_and_read_back_as_a_tree(
    store_factory: Callable[[], StateStore],
) -> None:
    bus = _shop(store_factory(), {"partner": 2, "mail": 1})
    async with bus:
        await bus.publish(OrderPlaced(order_id="o-2", email="bob@example.com", total=40.5))
        await bus.wait_idle(10)
    (flow,) = await _flows(store_factory(), "o-2")
    kinds = [(e.kind, e.outcome, e.consumer or e.message_type) for e in flow.entries]
    assert ("publish", "published", "OrderPlaced") in kinds
    assert kinds.count(("handle", "retried", "logistics:assign")) == 2
    assert ("handle", "handled", "logistics:assign") in kinds
    assert ("handle", "failed", "notification:confirm") in kinds
    assert ("dead_letter", "dead_lettered", "notification:confirm") in kinds
    assert ("handle", "handled", "history:record") in kinds
    retried = next(e for e in flow.entries if e.outcome == "retried")
    assert retried.error_type == "ConnectionError"
    # no payload value in the trace, but the flow's own key
    assert retried.error == "partner down for ***, card ***"
    failed = next(e for e in flow.entries if e.outcome == "failed")
    assert failed.error == "cannot email *** about o-2"
    assert all(
        e.key == "o-2"
        for e in flow.entries
        if e.message_type == "OrderPlaced" and e.kind in ("publish", "handle")
    )

    text = trace_text(flow)
    assert text.startswith("flow o-2: ")
    assert "logistics:assign  handled at attempt 3" in text
    assert "attempt 1: retried" in text and "attempt 2: retried" in text
    assert "notification:confirm  DEAD-LETTERED after 1 attempt(s)" in text
    # what the retried handler published hangs under it, and what that caused under it
    lines = text.splitlines()
    assign = next(i for i, line in enumerate(lines) if "logistics:assign  handled" in line)
    shipped = next(i for i, line in enumerate(lines) if "Shipped  published" in line)
    record = next(i for i, line in enumerate(lines) if "history:record  handled" in line)
    assert assign < shipped < record
    assert "by logistics:assign" in lines[shipped]
    assert "where it stopped:" in text
    assert "notification:confirm  DEAD-LETTERED" in text.split("where it stopped:")[1]
    assert "bob@example.com" not in text and "4111" not in text

    mermaid = trace_mermaid(flow)
    assert mermaid.startswith("sequenceDiagram\n")
    assert "participant" in mermaid and "->>" in mermaid
    assert "confirm: dead-lettered after 1 attempt(s)" in mermaid
    assert "assign: 2 attempt(s) failed, ConnectionError, then handled" in mermaid

    data = trace_json(flow)
    assert json.loads(json.dumps(data)) == data
    assert data["correlation_id"] == "o-2" and data["total"] == len(flow.entries)
    (root,) = data["tree"]
    assert root["type"] == "OrderPlaced"
    outcomes = {h["consumer"]: h["outcome"] for h in root["handlings"]}
    assert outcomes == {"logistics:assign": "handled", "notification:confirm": "dead-lettered"}


async def test_an_unkeyed_flow_is_found_by_its_correlation_id(
    store_factory: Callable[[], StateStore],
) -> None:
    bus = Choreography(InMemoryTransport(), store=store_factory())

    @bus.on(Unkeyed, service="s", name="h")
    async def handle(event: Unkeyed) -> None:
        pass

    async with bus:
        envelope = await bus.publish(Unkeyed(n=1))
        await bus.wait_idle(10)
    (flow,) = await _flows(store_factory(), envelope.correlation_id)
    assert [(e.kind, e.outcome) for e in flow.entries] == [
        ("publish", "published"),
        ("handle", "handled"),
    ]
    assert await _flows(store_factory(), "nothing-by-this-name") == []


async def test_tracing_can_be_turned_off_and_is_checked() -> None:
    store = MemoryStore()
    bus = _shop(store, {}, trace=False)
    async with bus:
        assert bus.trace_recorder is None
        await bus.publish(OrderPlaced(order_id="o-1", email="a@b.c", total=1.0))
        await bus.wait_idle(10)
    assert await _flows(store, "o-1") == []
    with pytest.raises(DefinitionError, match="trace must be"):
        Choreography(InMemoryTransport(), trace="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffer"):
        TraceOptions(buffer=0)
    with pytest.raises(ValueError, match="flush_size"):
        TraceOptions(buffer=10, flush_size=20)


class _NoTrace(MemoryStore):
    """A store that keeps no trace."""

    trace_ops = None  # type: ignore[assignment]


async def test_options_on_a_store_without_a_trace_fail_when_the_bus_starts() -> None:
    quiet = Choreography(InMemoryTransport(), store=_NoTrace())
    async with quiet:  # the default records where it can: here nowhere
        assert quiet.trace_recorder is None
    asked = Choreography(InMemoryTransport(), store=_NoTrace(), trace=TraceOptions())
    with pytest.raises(StoreError, match="the flow trace needs a store that keeps one"):
        async with asked:
            pass
    assert not asked.running


# -- recording an orchestrated flow ------------------------------------------------------


async def test_an_orchestrated_flow_records_steps_and_compensations_in_order(
    store_factory: Callable[[], StateStore],
) -> None:
    async def reserve(ctx: StepContext, work: Work) -> None:
        pass

    async def charge(ctx: StepContext, work: Work) -> None:
        if ctx.attempt < 2:
            raise ConnectionError("payment provider busy")

    async def ship(ctx: StepContext, work: Work) -> None:
        raise NonRetryableError("no partner for 12345.67")

    async def undo(ctx: StepContext, work: Work) -> None:
        pass

    class Order(Orchestrator[Work]):
        name = "order"
        steps = (
            Step(reserve, compensate=undo),
            Step(charge, compensate=undo, retry=Retry(attempts=3, backoff=0.001)),
            Step(ship),
        )

    async with Order(store_factory()) as saga:
        outcome = await saga.run(Work(job="j"), workflow_id="wf-2")
    assert outcome.compensated == ("charge", "reserve")
    (flow,) = await _flows(store_factory(), "wf-2")
    kinds = [(e.kind, e.outcome, e.step) for e in flow.entries]
    assert kinds[0] == ("workflow", "started", None)
    assert ("step", "retried", "charge") in kinds
    assert ("step", "failed", "ship") in kinds
    compensations = [e.step for e in flow.entries if e.kind == "compensation"]
    assert compensations == ["charge", "charge", "reserve", "reserve"]  # started, succeeded
    assert kinds[-1] == ("workflow", "compensated", None)
    failed = next(e for e in flow.entries if e.outcome == "failed")
    assert failed.error_type == "flowkit.NonRetryableError" and failed.error == "no partner for ***"

    text = trace_text(flow)
    assert "workflow order wf-2  COMPENSATED" in text
    assert "step charge  succeeded at attempt 2" in text
    assert "step ship  FAILED at attempt 1" in text
    assert text.index("compensation 1: charge") < text.index("compensation 2: reserve")
    assert "compensated, in order: charge, reserve" in text
    assert "12345" not in text


async def test_a_workflow_started_by_a_handler_is_linked_to_the_handled_flow() -> None:
    store = MemoryStore()

    async def note(ctx: StepContext, work: Work) -> None:
        pass

    class Follow(Orchestrator[Work]):
        steps = (Step(note),)

    bus = Choreography(InMemoryTransport(), store=store)
    saga = Follow(store)

    @bus.on(OrderPlaced, service="orders", name="start")
    async def start(event: OrderPlaced) -> None:
        await saga.run(Work(job=event.order_id), workflow_id=f"wf-{event.order_id}")

    async with saga, bus:
        await bus.publish(OrderPlaced(order_id="o-5", email="a@b.c", total=1.0))
        await bus.wait_idle(10)
    flows = await _flows(store, "o-5")
    assert [f.correlation_id for f in flows] == ["o-5", "wf-o-5"]
    text = trace_text(flows[0])
    assert "started workflow wf-o-5 (flowkit trace wf-o-5)" in text
    assert flows[1].named_by == "workflow started in flow o-5"


# -- a workflow that waits -----------------------------------------------------------------


class SellerAccepted(Event, correlate_by="order_id"):
    order_id: str
    seller: str


async def _reserve(ctx: StepContext, order: OrderPlaced) -> None:
    pass


async def _charge(ctx: StepContext, order: OrderPlaced) -> None:
    pass


class WaitForSeller(Orchestrator[OrderPlaced]):
    name = "place-order"
    steps = (Step(_reserve), WaitForEvent(SellerAccepted), Step(_charge))


async def _status(saga: WaitForSeller, status: WorkflowStatus) -> None:
    with anyio.fail_after(10):
        while (await saga.get("o-1")).status is not status:
            await anyio.sleep(0.01)


async def _trace_once(store: StateStore, outcome: str) -> Any:
    """The flow o-1, once an entry with ``outcome`` is written."""
    with anyio.fail_after(10):
        while True:
            flows = await _flows(store, "o-1")
            if flows and any(e.outcome == outcome for e in flows[0].entries):
                return flows[0]
            await anyio.sleep(0.02)


async def _seller_accepts(bus_store: StateStore, saga_store: StateStore, *, accept: bool) -> None:
    """Order o-1 is reserved and waits for its seller, who accepts (if ``accept``)."""
    transport = InMemoryTransport()
    async with (
        Choreography(transport, store=bus_store) as bus,
        WaitForSeller(saga_store, transport=transport) as saga,
    ):
        await saga.start(OrderPlaced(order_id="o-1", email="a@b.c", total=3.0), workflow_id="o-1")
        await _status(saga, WorkflowStatus.WAITING)
        if accept:
            await bus.publish(SellerAccepted(order_id="o-1", seller="s-9"))
            await _status(saga, WorkflowStatus.COMPLETED)


async def test_a_parked_workflow_is_recorded_waiting_and_goes_on_in_its_flow(
    store_factory: Callable[[], StateStore],
) -> None:
    async with anyio.create_task_group() as group:
        group.start_soon(partial(_seller_accepts, store_factory(), store_factory(), accept=False))
        waiting = await _trace_once(store_factory(), "waiting")
    parked = [e for e in waiting.entries if e.kind == "workflow"][-1]
    assert (parked.outcome, parked.step, parked.workflow) == (
        "waiting",
        "wait_for_seller_accepted",
        "place-order",
    )
    assert not any(e.outcome == "stopped" for e in waiting.entries)
    text = trace_text(waiting)
    assert (
        "workflow place-order o-1  waiting at step wait_for_seller_accepted "
        "for event SellerAccepted with no time limit, since " in text
    )
    assert "step wait_for_seller_accepted  waiting" in text
    assert "STOPPED" not in text
    stopped = text.split("where it stopped:")[1]
    assert "workflow place-order o-1  waiting at step wait_for_seller_accepted" in stopped
    tree = trace_json(waiting)["tree"][0]
    assert (tree["outcome"], tree["waiting_at"]) == ("waiting", "wait_for_seller_accepted")
    assert tree["steps"][-1]["outcome"] == "waiting"
    assert "o-1 waiting" in trace_mermaid(waiting)

    # the seller accepts: the workflow is woken and its steps go on in the same flow
    await _seller_accepts(store_factory(), store_factory(), accept=True)
    flow = await _trace_once(store_factory(), "completed")
    in_time = sorted(flow.entries, key=lambda e: (e.at, e.seq))  # several recorders wrote them
    entries = [(e.kind, e.outcome, e.step) for e in in_time if e.kind != "handle"]
    wait = entries.index(("step", "succeeded", "wait_for_seller_accepted"))
    assert entries.index(("workflow", "waiting", "wait_for_seller_accepted")) < wait
    assert entries.index(("publish", "published", None)) < wait
    assert wait < entries.index(("step", "succeeded", "_charge"))
    handlings = {(e.service, e.handler, e.outcome) for e in flow.entries if e.kind == "handle"}
    assert handlings == {("place-order", "wait.SellerAccepted.order_id", "handled")}
    text = trace_text(flow)
    assert "workflow place-order o-1  COMPLETED" in text
    assert "step wait_for_seller_accepted  succeeded (waited " in text
    accepted = text.split("SellerAccepted  published")[1]
    assert "place-order:wait.SellerAccepted.order_id  handled" in accepted
    assert "nowhere, every handling and step that ran succeeded" in text


def test_flowkit_trace_shows_the_seller_accepting_and_the_wait_going_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shop.db"
    anyio.run(partial(_seller_accepts, SQLiteStore(path), SQLiteStore(path), accept=True))
    assert main(["trace", "o-1", "--store", f"sqlite:///{path}"]) == 0
    out = capsys.readouterr().out
    workflow, accepted = out.split("SellerAccepted  published")
    assert "workflow place-order o-1  COMPLETED" in workflow
    assert workflow.index("step _reserve  succeeded") < workflow.index(
        "step wait_for_seller_accepted  succeeded (waited "
    )
    assert workflow.index("step wait_for_seller_accepted") < workflow.index("step _charge")
    # the orchestrator took the event as its graph and AsyncAPI document say it does
    ((event, handler),) = flow_graph(orchestrators=[WaitForSeller]).orchestrators[0].receives
    assert f"key o-1\n    └── place-order:{handler}  handled" in accepted
    assert event == "SellerAccepted"


async def test_the_orchestrator_s_handling_of_a_waited_event_is_recorded_once() -> None:
    store = MemoryStore()
    await _seller_accepts(store, store, accept=True)
    flow = await _trace_once(store, "completed")
    assert len([e for e in flow.entries if e.kind == "handle"]) == 1


# -- the recorder's bounds -------------------------------------------------------------


class _SlowTrace:
    """A trace that keeps what it is given, and may fail."""

    def __init__(self) -> None:
        self.rows: list[TraceRow] = []
        self.fail = False

    async def add(self, rows: Sequence[TraceRow]) -> None:
        if self.fail:
            raise StoreError("the disk is full")
        self.rows.extend(rows)


def _row(i: int) -> TraceRow:
    return (time.time(), f"flow-{i}", "publish", "published", *([None] * 14))  # type: ignore[return-value]


async def test_a_full_buffer_drops_the_oldest_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    trace = _SlowTrace()
    recorder = TraceRecorder(trace, TraceOptions(buffer=10, flush_size=10))  # type: ignore[arg-type]
    for i in range(25):
        recorder._push(_row(i))
    assert recorder.dropped == 15 and recorder.waiting == 10
    with caplog.at_level(logging.WARNING, logger="flowkit.trace"):
        await recorder.flush()
    assert [row[1] for row in trace.rows] == [f"flow-{i}" for i in range(15, 25)]
    assert recorder.written == 10 and recorder.waiting == 0
    assert "dropped 15 entries" in caplog.text

    trace.fail = True
    recorder._last_warning = -1e9
    recorder._push(_row(99))
    with caplog.at_level(logging.WARNING, logger="flowkit.trace"):
        await recorder.flush()
    assert recorder.failed == 1
    assert "could not write 1 entries" in caplog.text and "the disk is full" in caplog.text


async def test_entries_are_written_in_batches_while_the_bus_runs_and_at_its_end() -> None:
    store = MemoryStore()
    bus = Choreography(
        InMemoryTransport(),
        store=store,
        trace=TraceOptions(flush_interval=60.0, flush_size=50, buffer=1000),
    )

    @bus.on(Unkeyed, service="s", name="h")
    async def handle(event: Unkeyed) -> None:
        pass

    async with bus:
        recorder = bus.trace_recorder
        assert recorder is not None
        for n in range(30):
            await bus.publish(Unkeyed(n=n))
        await bus.wait_idle(10)
        await anyio.sleep(0.05)
        # the first 50 or so went as soon as they were there; the rest waits
        assert recorder.written >= 50 and recorder.waiting > 0
        assert recorder.written + recorder.waiting == 60
    assert recorder.written == 60 and recorder.waiting == 0  # the rest at the end
    assert len(trace_of(store)) == 60  # type: ignore[arg-type]


async def test_old_entries_are_pruned_and_the_trace_is_capped(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "prune.db")
    now = time.time()
    async with store:
        trace = trace_of(store)
        await trace.add([(now - 3600, "old", "publish", "published", *([None] * 14))])  # type: ignore[list-item]
        await trace.add([_row(i) for i in range(20)])
    options = TraceOptions(retention=timedelta(seconds=60), max_entries=5)
    async with store, TraceRecorder(trace_of(store), options) as recorder:
        with anyio.fail_after(10):
            while await trace.count("old") or await trace.count("flow-10"):
                await anyio.sleep(0.05)
        assert recorder.dropped == 0
        assert [await trace.count(f"flow-{i}") for i in range(15, 20)] == [1] * 5


def test_error_messages_lose_the_values_they_quote() -> None:
    values = {"email": "bob@example.com", "name": "Bob Stone", "total": 40.5, "items": ["lamp"]}
    error = ValueError("Bob Stone (bob@example.com) owes 40.5 for lamp; see https://u:pw@x/y")
    assert redact_error(error, values) == "*** (***) owes *** for ***; see https://u:***@x/y"
    assert (
        redact_error("order o-1 failed: 1234567 left", keep=["o-1"]) == "order o-1 failed: *** left"
    )
    assert redact_error("retry 3 of 5 got status 503") == "retry 3 of 5 got status 503"
    assert redact_error("line one\nline two with secret") == "line one"
    assert redact_error("") is None
    assert len(redact_error("x" * 1000) or "") == 300


# -- expectations ----------------------------------------------------------------------


async def test_a_stalled_flow_is_reported_once_with_a_log_a_callback_and_an_entry(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    path = tmp_path / "expect.db"
    reported: list[StalledFlow] = []

    def build() -> Choreography:
        bus = Choreography(InMemoryTransport(), store=SQLiteStore(path))

        @bus.on(OrderPlaced, service="notification", emits=[Confirmed], name="confirm")
        async def confirm(event: OrderPlaced, ctx: Context) -> None:
            if "@" in event.email:
                await ctx.publish(Confirmed(order_id=event.order_id))

        bus.expect(
            OrderPlaced,
            leads_to=[Confirmed],
            within=timedelta(seconds=0.3),
            on_stalled=reported.append,
            name="confirmed",
        )
        return bus

    first, second = build(), build()  # two processes sharing one store
    with caplog.at_level(logging.WARNING, logger="flowkit.trace"):
        async with first, second:
            await first.publish(OrderPlaced(order_id="o-1", email="a@b.c", total=1.0))
            await first.publish(OrderPlaced(order_id="o-2", email="not-an-email", total=1.0))
            with anyio.fail_after(15):
                while not reported:
                    await anyio.sleep(0.1)
            await anyio.sleep(1.5)  # both checked again meanwhile
    (flow,) = reported
    assert (flow.expectation, flow.correlation_id, flow.message_type) == (
        "confirmed",
        "o-2",
        "OrderPlaced",
    )
    assert flow.expected == ("Confirmed",) and flow.within == timedelta(seconds=0.3)
    assert caplog.text.count("stalled: flow o-2") == 1
    assert "was not followed by Confirmed within 0.3s" in caplog.text
    (traced,) = await _flows(SQLiteStore(path), "o-2")
    assert [e.detail for e in traced.entries if e.kind == "stalled"] == ["confirmed"]
    assert "stalled: OrderPlaced" in trace_text(traced)


async def test_an_async_callback_is_awaited_and_its_failure_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    async def page(flow: StalledFlow) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(flow.correlation_id)
        raise RuntimeError("pager down")

    bus = Choreography(InMemoryTransport())

    @bus.on(OrderPlaced, service="s", name="h")
    async def handle(event: OrderPlaced) -> None:
        pass

    bus.expect(OrderPlaced, leads_to=[Confirmed], within=0.2, on_stalled=page)
    with caplog.at_level(logging.WARNING, logger="flowkit.trace"):
        async with run_in_memory(bus):
            await bus.publish(OrderPlaced(order_id="o-3", email="a@b.c", total=1.0))
            with anyio.fail_after(15):
                while not seen:
                    await anyio.sleep(0.1)
            await anyio.sleep(0.2)
    assert seen == ["o-3"]
    assert "the on_stalled callback of expectation 'OrderPlaced->Confirmed' failed" in caplog.text


def test_expect_checks_its_arguments() -> None:
    bus = Choreography(InMemoryTransport())
    with pytest.raises(DefinitionError, match="leads_to must be a non-empty list"):
        bus.expect(OrderPlaced, leads_to=Confirmed, within=1)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="leads_to must be a non-empty list"):
        bus.expect(OrderPlaced, leads_to=[], within=1)
    with pytest.raises(DefinitionError, match="must be an Event class"):
        bus.expect(OrderPlaced, leads_to=[str], within=1)  # type: ignore[list-item]
    with pytest.raises(DefinitionError, match="within must be longer than 0s"):
        bus.expect(OrderPlaced, leads_to=[Confirmed], within=timedelta(0))
    with pytest.raises(DefinitionError, match="cannot lead to itself"):
        bus.expect(OrderPlaced, leads_to=[OrderPlaced], within=1)
    with pytest.raises(DefinitionError, match="on_stalled must be callable"):
        bus.expect(OrderPlaced, leads_to=[Confirmed], within=1, on_stalled="log")  # type: ignore[arg-type]
    expectation = bus.expect(OrderPlaced, leads_to=[Confirmed, Shipped], within=60)
    assert expectation.name == "OrderPlaced->Confirmed|Shipped"
    assert expectation.within == timedelta(minutes=1)
    with pytest.raises(DefinitionError, match="already has an expectation named"):
        bus.expect(OrderPlaced, leads_to=[Confirmed, Shipped], within=5)
    assert bus.expectations == (expectation,)


async def test_expectations_without_a_trace_are_said_to_go_unchecked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Choreography(InMemoryTransport())

    @bus.on(OrderPlaced, service="s", name="h")
    async def handle(event: OrderPlaced) -> None:
        pass

    bus.expect(OrderPlaced, leads_to=[Confirmed], within=1)
    with caplog.at_level(logging.WARNING, logger="flowkit.trace"):
        async with bus:
            pass
    assert "1 expectation(s) are not checked" in caplog.text


async def test_a_long_flow_is_read_a_page_at_a_time(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "long.db")
    async with store:
        trace = trace_of(store)
        at = datetime.now(UTC).timestamp()
        await trace.add(
            [
                (at + i / 1000, "big", "publish", "published", f"m-{i}", *([None] * 13))  # type: ignore[misc]
                for i in range(3000)
            ]
        )
        (flow,) = await load_flows(trace, "big", limit=100)
        assert flow.total == 3000 and len(flow.entries) == 100 and flow.truncated
        text = trace_text(flow)
        page_note = "showing the first 100 of 3000 entries; --limit N for more, --after"
        assert f"{page_note} {flow.entries[-1].seq}" in text
        assert len(text.splitlines()) < 120
        (page,) = await load_flows(trace, "big", limit=100, after=flow.entries[-1].seq)
        assert page.entries[0].message_id == "m-100"
        assert trace_mermaid(flow).endswith("the diagram stops here (more in the trace)")
