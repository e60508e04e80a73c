"""Workflows that wait: durable timers, events, signals, and what a wait that runs
out does, on every store.

A waiting workflow is stored WAITING with no owner and leaves the process; the
waker of whichever started orchestrator takes it up when it is due.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from pydantic import BaseModel

from flowkit import (
    Choreography,
    DefinitionError,
    Event,
    InvalidWorkflowState,
    Message,
    MessageTooLarge,
    ResultNotAvailable,
    WorkflowNotFound,
)
from flowkit.orchestration import (
    Orchestrator,
    Parallel,
    Sleep,
    Step,
    StepContext,
    WaitForEvent,
    WaitForSignal,
    WorkflowStatus,
)
from flowkit.stores import MemoryStore, PostgresStore
from flowkit.stores._waits import waits_of
from flowkit.transports import InMemoryTransport

from .brokers import drop_schema
from .brokers import every_store as every_store
from .brokers import postgres_url as postgres_url

if TYPE_CHECKING:
    from flowkit.stores import StateStore

pytestmark = pytest.mark.anyio

JOURNAL: list[tuple[str, str]] = []


class Order(BaseModel):
    order_id: str
    total: float = 10.0


class SellerAccepted(Event, correlate_by="order_id"):
    order_id: str
    seller: str


class Approval(Message):
    by: str


class Other(Message):
    n: int = 0


@pytest.fixture(autouse=True)
def _clean() -> None:
    JOURNAL.clear()


async def reserve(ctx: StepContext, order: Order) -> str:
    JOURNAL.append(("reserve", ctx.workflow_id))
    return "reserved"


async def release(ctx: StepContext, order: Order) -> None:
    JOURNAL.append(("release", ctx.workflow_id))


async def charge(ctx: StepContext, order: Order) -> str:
    JOURNAL.append(("charge", ctx.workflow_id))
    return "charged"


async def refund(ctx: StepContext, order: Order) -> None:
    JOURNAL.append(("refund", ctx.workflow_id))


async def ship(ctx: StepContext, order: Order) -> str:
    JOURNAL.append(("ship", ctx.workflow_id))
    return f"shipped at {time.time()}"


def _ship_time(outcome: Any) -> float:
    return float(outcome.results["ship"].removeprefix("shipped at "))


class Nap(Orchestrator[Order]):
    steps = (Step(reserve, compensate=release), Sleep(0.4), Step(ship))


class NapUntil(Orchestrator[Order]):
    steps = (
        Sleep(until=lambda ctx, order: datetime.now(UTC) + timedelta(seconds=order.total)),
        Step(ship),
    )


class NaiveUntil(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        Sleep(until=lambda ctx, order: datetime(2030, 1, 1)),
        Step(ship),
    )


class AwaitSeller(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        Step(charge, compensate=refund),
        WaitForEvent(SellerAccepted, timeout=0.6),
        Step(ship),
    )


class AwaitApproval(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        WaitForSignal(Approval, timeout=30),
        Step(ship),
    )


class MaybeApproval(Orchestrator[Order]):
    steps = (WaitForSignal(Approval, timeout=0.3, on_timeout="continue"), Step(ship))


class MustApprove(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        WaitForSignal(Approval, timeout=0.3, on_timeout="fail"),
        Step(ship),
    )


class Patient(Orchestrator[Order]):
    steps = (Step(reserve, compensate=release), WaitForSignal(Approval), Step(ship))
    deadline = 0.5


async def _status(orchestrator: Orchestrator[Any], wid: str, wanted: WorkflowStatus) -> None:
    with anyio.fail_after(10):
        while (await orchestrator.get(wid)).status is not wanted:
            await anyio.sleep(0.01)


# -- timers -------------------------------------------------------------------------------


async def test_a_sleep_waits_in_the_store_then_goes_on(store: StateStore) -> None:
    async with Nap(store) as naps:
        started = time.time()
        await naps.start(Order(order_id="o-1"), workflow_id="o-1")
        await _status(naps, "o-1", WorkflowStatus.WAITING)
        info = await naps.get("o-1")
        assert info.waiting_for == "timer"
        assert info.wake_at is not None
        assert abs(info.wake_at.timestamp() - (started + 0.4)) < 0.3
        assert info.steps["sleep"].status == "waiting"
        assert "running=0" in repr(naps)  # it holds no task
        record = await store.load_workflow("o-1")
        assert (record.owner, record.lease_until) == (None, None)  # nor a lease
        outcome = await naps.wait("o-1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert 0.4 <= _ship_time(outcome) - started < 1.5
    events = [t.event for t in (await _info(store, Nap, "o-1")).history]
    assert events.count("waiting") == 1 and "woken" in events


async def _info(store: StateStore, cls: type[Orchestrator[Any]], wid: str) -> Any:
    async with cls(store, recover=False) as reader:
        return await reader.get(wid)


async def test_run_returns_once_a_waiting_workflow_finishes(store: StateStore) -> None:
    async with Nap(store) as naps:
        outcome = await naps.run(Order(order_id="o-1"), workflow_id="o-1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert JOURNAL == [("reserve", "o-1"), ("ship", "o-1")]


async def test_sleep_until_a_time(store: StateStore) -> None:
    async with NapUntil(store) as naps:
        started = time.time()
        soon = await naps.run(Order(order_id="a", total=0.3), workflow_id="a")
        past = await naps.run(Order(order_id="b", total=-5), workflow_id="b")
    assert 0.3 <= _ship_time(soon) - started < 1.5
    assert past.status is WorkflowStatus.COMPLETED  # a time already past goes on at once
    async with NaiveUntil(store) as naive:
        outcome = await naive.run(Order(order_id="c"), workflow_id="c")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None
    assert "timezone-aware datetime" in outcome.error.message
    assert JOURNAL[-2:] == [("reserve", "c"), ("release", "c")]


async def test_a_restart_during_a_wait_neither_loses_it_nor_restarts_its_clock(
    store: StateStore,
) -> None:
    class LongNap(Orchestrator[Order]):
        name = "Nap"
        steps = (Step(reserve, compensate=release), Sleep(1.2), Step(ship))

    started = time.time()
    async with LongNap(store, owner="first") as first:
        await first.start(Order(order_id="o-1"), workflow_id="o-1")
        await _status(first, "o-1", WorkflowStatus.WAITING)
    await anyio.sleep(0.3)  # no process runs it
    async with LongNap(store, owner="second") as second:
        outcome = await second.wait("o-1")
    assert 1.2 <= _ship_time(outcome) - started < 2.2  # not 1.2 s after the restart
    assert JOURNAL == [("reserve", "o-1"), ("ship", "o-1")]


# -- events -------------------------------------------------------------------------------


async def test_an_event_ends_the_wait_with_its_payload(store: StateStore) -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)
    async with transport, bus, AwaitSeller(store, transport=transport) as sagas:
        await sagas.start(Order(order_id="o-1"), workflow_id="w-1")
        await sagas.start(Order(order_id="o-2"), workflow_id="w-2")
        await _status(sagas, "w-1", WorkflowStatus.WAITING)
        info = await sagas.get("w-1")
        assert info.waiting_for == "event SellerAccepted"
        await bus.publish(SellerAccepted(order_id="o-1", seller="s-9"))
        outcome = await sagas.wait("w-1")
        assert (await sagas.get("w-2")).status is WorkflowStatus.WAITING  # another key
        other = await sagas.wait("w-2")
    assert outcome.status is WorkflowStatus.COMPLETED
    accepted = outcome.result(AwaitSeller.steps[2])
    assert accepted == SellerAccepted(order_id="o-1", seller="s-9")
    assert other.status is WorkflowStatus.COMPENSATED


async def test_an_early_event_is_not_lost(store: StateStore) -> None:
    transport = InMemoryTransport()
    bus = Choreography(transport)
    async with transport, bus, AwaitSeller(store, transport=transport) as sagas:
        await bus.publish(SellerAccepted(order_id="o-1", seller="s-1"))  # before it starts
        await bus.wait_idle()
        await anyio.sleep(0.05)
        outcome = await sagas.run(Order(order_id="o-1"), workflow_id="w-1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.results["wait_for_seller_accepted"].seller == "s-1"


async def test_a_redelivered_event_is_taken_once(store: StateStore) -> None:
    async with AwaitSeller(store, transport=InMemoryTransport()) as sagas:
        waits = waits_of(store)
        channel = "event:SellerAccepted.order_id"
        body = {"order_id": "o-1", "seller": "s-1"}
        for _ in range(2):  # the same message delivered twice
            await waits.deliver("AwaitSeller", channel, "o-1", "m-1", body)
        first = await sagas.run(Order(order_id="o-1"), workflow_id="w-1")
        second = await sagas.run(Order(order_id="o-1"), workflow_id="w-2")
    assert first.status is WorkflowStatus.COMPLETED
    assert second.status is WorkflowStatus.COMPENSATED  # nothing was left for it


async def test_a_message_that_no_longer_matches_its_class_fails_the_wait(
    store: StateStore,
) -> None:
    async with AwaitSeller(store, transport=InMemoryTransport()) as sagas:
        body = {"order_id": "o-1", "seller": {"secret": "card 4242"}}
        await waits_of(store).deliver(
            "AwaitSeller", "event:SellerAccepted.order_id", "o-1", "m-1", body
        )
        outcome = await sagas.run(Order(order_id="o-1"), workflow_id="w-1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None
    assert "does not match its class" in outcome.error.message
    assert "4242" not in outcome.error.message  # no value of the payload
    assert JOURNAL[-2:] == [("refund", "w-1"), ("release", "w-1")]


async def test_a_timeout_compensates_in_reverse(store: StateStore) -> None:
    async with AwaitSeller(store, transport=InMemoryTransport()) as sagas:
        outcome = await sagas.run(Order(order_id="o-1"), workflow_id="w-1")
        info = await sagas.get("w-1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.type == "WaitTimeout"
    assert "waited 0.6s for event SellerAccepted" in (outcome.reason or "")
    assert outcome.compensated == ("charge", "reserve")
    assert JOURNAL == [("reserve", "w-1"), ("charge", "w-1"), ("refund", "w-1"), ("release", "w-1")]
    assert "wait_timed_out" in [t.event for t in info.history]
    assert info.steps["wait_for_seller_accepted"].status == "failed"


# -- signals ------------------------------------------------------------------------------


async def test_a_signal_wakes_the_waiting_workflow(store: StateStore) -> None:
    async with AwaitApproval(store) as approvals:
        await approvals.start(Order(order_id="o-1"), workflow_id="w-1")
        await approvals.start(Order(order_id="o-2"), workflow_id="w-2")
        await _status(approvals, "w-1", WorkflowStatus.WAITING)
        await _status(approvals, "w-2", WorkflowStatus.WAITING)
        sent = time.time()
        assert await approvals.signal("w-1", Approval(by="ann")) is True
        outcome = await approvals.wait("w-1")
        assert (await approvals.get("w-2")).status is WorkflowStatus.WAITING
    assert outcome.status is WorkflowStatus.COMPLETED
    assert outcome.results["wait_for_approval"] == Approval(by="ann")
    assert _ship_time(outcome) - sent < 1.0


async def test_a_signal_sent_before_the_wait_is_kept_for_it(store: StateStore) -> None:
    class SlowStart(Orchestrator[Order]):
        steps = (Sleep(0.3), WaitForSignal(Approval), Step(ship))

    async with SlowStart(store) as sagas:
        await sagas.start(Order(order_id="o-1"), workflow_id="w-1")
        assert await sagas.signal("w-1", Approval(by="bo"), signal_id="s-1") is False
        assert await sagas.signal("w-1", Approval(by="bo"), signal_id="s-1") is False  # once
        outcome = await sagas.wait("w-1")
        with pytest.raises(InvalidWorkflowState, match="COMPLETED"):
            await sagas.signal("w-1", Approval(by="late"))
    assert outcome.results["wait_for_approval"] == Approval(by="bo")


async def test_signals_that_cannot_be_taken_are_refused(store: StateStore) -> None:
    async with AwaitApproval(store) as approvals:
        with pytest.raises(
            DefinitionError, match="waits for no signal Other; it waits for Approval"
        ):
            await approvals.signal("w-1", Other())
        with pytest.raises(WorkflowNotFound):
            await approvals.signal("nobody", Approval(by="x"))
        await approvals.start(Order(order_id="o-1"), workflow_id="w-1")
        await _status(approvals, "w-1", WorkflowStatus.WAITING)
        with pytest.raises(MessageTooLarge):
            await approvals.signal("w-1", Approval(by="x" * (1024 * 1024)))
        cancelled = await approvals.cancel("w-1")
        assert cancelled.status is WorkflowStatus.COMPENSATED
        with pytest.raises(InvalidWorkflowState, match="COMPENSATED"):
            await approvals.signal("w-1", Approval(by="x"))


async def test_a_reader_signals_and_a_running_process_takes_it_up(store: StateStore) -> None:
    async with (
        AwaitApproval(store, owner="worker", wait_poll=0.1) as worker,
        AwaitApproval(store, owner="web", recover=False) as web,
    ):
        await worker.start(Order(order_id="o-1"), workflow_id="w-1")
        await _status(worker, "w-1", WorkflowStatus.WAITING)
        assert await web.signal("w-1", Approval(by="web")) is True
        outcome = await worker.wait("w-1")
    assert outcome.status is WorkflowStatus.COMPLETED


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # asyncpg
async def test_a_signal_from_another_process_wakes_at_once_on_postgres(postgres_url: str) -> None:
    schema = f"flowkit_test_{uuid.uuid4().hex[:12]}"
    try:
        async with (
            PostgresStore(postgres_url, schema=schema) as held,
            PostgresStore(postgres_url, schema=schema) as other,
            AwaitApproval(held, owner="worker", wait_poll=30) as worker,
            AwaitApproval(other, owner="web", recover=False) as web,
        ):
            await worker.start(Order(order_id="o-1"), workflow_id="w-1")
            await _status(worker, "w-1", WorkflowStatus.WAITING)
            await anyio.sleep(0.2)  # the waker is asleep
            sent = time.time()
            assert await web.signal("w-1", Approval(by="web")) is True
            outcome = await worker.wait("w-1")
    finally:
        await drop_schema(postgres_url, schema)
    assert outcome.status is WorkflowStatus.COMPLETED
    assert _ship_time(outcome) - sent < 0.5  # not the 30 s of wait_poll


# -- what a wait that runs out does ---------------------------------------------------


async def test_on_timeout_continue_goes_on_without_a_result(store: StateStore) -> None:
    seen: list[Any] = []

    async def look(ctx: StepContext, order: Order) -> None:
        seen.append(ctx.results.get("wait_for_approval"))
        with pytest.raises(ResultNotAvailable):
            ctx.result("wait_for_approval")

    class Branching(Orchestrator[Order]):
        steps = (WaitForSignal(Approval, timeout=0.3, on_timeout="continue"), Step(look))

    async with Branching(store) as sagas:
        outcome = await sagas.run(Order(order_id="o-1"), workflow_id="w-1")
        info = await sagas.get("w-1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert seen == [None]
    assert info.steps["wait_for_approval"].status == "expired"


async def test_on_timeout_fail_then_retry_forward_waits_again(store: StateStore) -> None:
    async with MustApprove(store) as sagas:
        failed = await sagas.run(Order(order_id="o-1"), workflow_id="w-1")
        assert failed.status is WorkflowStatus.FAILED
        assert "on_timeout='fail'" in (failed.reason or "")
        assert failed.remaining == ("wait_for_approval", "ship")
        assert JOURNAL == [("reserve", "w-1")]  # nothing compensated

        async def approve_soon() -> None:
            await _status(sagas, "w-1", WorkflowStatus.WAITING)
            await sagas.signal("w-1", Approval(by="ops"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(approve_soon)
            retried = await sagas.retry_forward("w-1")
    assert retried.status is WorkflowStatus.COMPLETED


async def test_the_deadline_applies_while_waiting(store: StateStore) -> None:
    async with Patient(store) as sagas:
        started = time.time()
        outcome = await sagas.run(Order(order_id="o-1"), workflow_id="w-1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.type == "DeadlineExceeded"
    assert time.time() - started < 2.0
    assert JOURNAL == [("reserve", "w-1"), ("release", "w-1")]


async def test_cancel_compensates_a_waiting_workflow(store: StateStore) -> None:
    async with AwaitApproval(store) as sagas:
        await sagas.start(Order(order_id="o-1"), workflow_id="w-1")
        await _status(sagas, "w-1", WorkflowStatus.WAITING)
        outcome = await sagas.cancel("w-1")
        info = await sagas.get("w-1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.compensated == ("reserve",)
    assert info.steps["wait_for_approval"].status == "interrupted"
    assert info.steps["wait_for_approval"].may_have_acted is False


async def test_cancel_reaches_a_waiting_workflow_another_process_holds(store: StateStore) -> None:
    async with AwaitApproval(store, owner="a") as a, AwaitApproval(store, owner="b") as b:
        await a.start(Order(order_id="o-1"), workflow_id="w-1")
        await _status(a, "w-1", WorkflowStatus.WAITING)
        outcome = await b.cancel("w-1")
    assert outcome.status is WorkflowStatus.COMPENSATED


async def test_a_key_function_that_fails_turns_the_workflow_back(store: StateStore) -> None:
    def broken(ctx: StepContext, order: Order) -> str:
        raise ValueError("no key here")

    class BrokenKey(Orchestrator[Order]):
        steps = (
            Step(reserve, compensate=release),
            WaitForEvent(SellerAccepted, key=broken, timeout=5),
        )

    class NoKey(Orchestrator[Order]):
        steps = (
            Step(reserve, compensate=release),
            WaitForEvent(SellerAccepted, key=lambda ctx, order: None, timeout=5),
        )

    transport = InMemoryTransport()
    async with (
        transport,
        BrokenKey(store, transport=transport) as a,
        NoKey(store, transport=transport) as b,
    ):
        first = await a.run(Order(order_id="o-1"), workflow_id="w-1")
        second = await b.run(Order(order_id="o-1"), workflow_id="w-2")
    assert first.status is WorkflowStatus.COMPENSATED
    assert first.error is not None and first.error.type == "ValueError"
    assert second.status is WorkflowStatus.COMPENSATED
    assert second.error is not None and "is None" in second.error.message


# -- listing, resuming, several processes ---------------------------------------------


async def test_waiting_workflows_are_listed_as_such(store: StateStore) -> None:
    async with AwaitApproval(store) as sagas:
        for n in range(3):
            await sagas.start(Order(order_id=f"o-{n}"), workflow_id=f"w-{n}")
        for n in range(3):
            await _status(sagas, f"w-{n}", WorkflowStatus.WAITING)
        listed = await sagas.list(status="WAITING")
        resumed = await sagas.resume()
    assert [i.id for i in listed] == ["w-0", "w-1", "w-2"]
    assert {i.waiting_for for i in listed} == {"signal Approval"}
    assert all(i.wake_at is not None and i.owner is None for i in listed)
    assert resumed == []  # not due: they go on waiting


async def test_each_due_workflow_is_taken_up_by_one_process(store: StateStore) -> None:
    class Many(Orchestrator[Order]):
        steps = (Sleep(0.3), Step(ship))

    async with Many(store, owner="a") as a, Many(store, owner="b") as b:
        for n in range(40):
            await (a if n % 2 else b).start(Order(order_id=f"o-{n}"), workflow_id=f"w-{n}")
        outcomes = [await a.wait(f"w-{n}") for n in range(40)]
    assert all(o.status is WorkflowStatus.COMPLETED for o in outcomes)
    assert sorted(JOURNAL) == sorted(("ship", f"w-{n}") for n in range(40))


# -- declarations ---------------------------------------------------------------------


def test_waits_are_checked_when_declared() -> None:
    with pytest.raises(DefinitionError, match="cannot be part of a Parallel group"):
        Parallel(Step(reserve), Sleep(1))  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="exactly one"):
        Sleep()
    with pytest.raises(DefinitionError, match="exactly one"):
        Sleep(1, until=lambda ctx, order: datetime.now(UTC))
    with pytest.raises(DefinitionError, match="positive number of seconds"):
        Sleep(-1)
    with pytest.raises(DefinitionError, match="on_timeout"):
        WaitForSignal(Approval, on_timeout="retry")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="takes a Event class"):
        WaitForEvent(Approval)  # type: ignore[type-var]
    with pytest.raises(DefinitionError, match="has no field 'nope'"):
        WaitForEvent(SellerAccepted, match="nope")

    class Unkeyed(Event):
        order_id: str

    with pytest.raises(DefinitionError, match="match='order_id'"):
        WaitForEvent(Unkeyed)

    class Bought(BaseModel):
        sku: str

    with pytest.raises(DefinitionError, match="has no field 'order_id': pass key="):

        class _NoField(Orchestrator[Bought]):
            steps = (WaitForEvent(SellerAccepted),)

    with pytest.raises(DefinitionError, match="two steps named 'sleep'"):

        class _Twice(Orchestrator[Order]):
            steps = (Sleep(1), Sleep(2))


async def test_what_a_waiting_orchestrator_needs_is_checked() -> None:
    with pytest.raises(DefinitionError, match="pass transport="):
        AwaitSeller(MemoryStore())
    AwaitSeller(MemoryStore(), recover=False)  # a reader needs none

    class NoWaits(MemoryStore):
        wait_ops = None  # type: ignore[assignment]

    with pytest.raises(DefinitionError, match="keeps no waiting workflows"):
        async with AwaitApproval(NoWaits()):
            pass
    for bad in (0, -1, float("inf"), True):
        with pytest.raises(DefinitionError, match="wait_poll"):
            AwaitApproval(MemoryStore(), wait_poll=bad)
