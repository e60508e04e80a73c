"""Fault plans for sagas: failures, timeouts, crashes at every point, order assertions."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import anyio
import pytest
from pydantic import BaseModel

from flowkit import DefinitionError, Retry
from flowkit.orchestration import (
    Orchestrator,
    Outcome,
    Parallel,
    Step,
    StepContext,
    WorkflowStatus,
)
from flowkit.testing._sagas import (
    FaultPlan,
    InjectedFault,
    Injection,
    SimulatedCrash,
    assert_compensation_order,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from flowkit.stores._memory import MemoryStore

pytestmark = pytest.mark.anyio

CALLS: defaultdict[str, list[str]] = defaultdict(list)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    CALLS.clear()
    yield


class Trip(BaseModel):
    trip_id: str


async def book_flight(ctx: StepContext, trip: Trip) -> str:
    CALLS[ctx.workflow_id].append("book_flight")
    return "FL-1"


async def cancel_flight(ctx: StepContext, trip: Trip) -> None:
    CALLS[ctx.workflow_id].append("cancel_flight")


async def book_hotel(ctx: StepContext, trip: Trip) -> str:
    CALLS[ctx.workflow_id].append("book_hotel")
    return "HO-1"


async def cancel_hotel(ctx: StepContext, trip: Trip) -> None:
    CALLS[ctx.workflow_id].append("cancel_hotel")


async def book_car(ctx: StepContext, trip: Trip) -> str:
    CALLS[ctx.workflow_id].append("book_car")
    return "CA-1"


async def cancel_car(ctx: StepContext, trip: Trip) -> None:
    CALLS[ctx.workflow_id].append("cancel_car")


async def pay(ctx: StepContext, trip: Trip) -> None:
    CALLS[ctx.workflow_id].append("pay")


class BookTrip(Orchestrator[Trip]):
    steps = (
        Step(book_flight, compensate=cancel_flight),
        Parallel(Step(book_hotel, compensate=cancel_hotel), Step(book_car, compensate=cancel_car)),
        Step(pay, retry=Retry(attempts=2, backoff=0)),
    )
    compensation_retry = Retry(attempts=2, backoff=0)


TRIP = Trip(trip_id="t-1")


async def test_fail_times_then_the_real_step_runs(memory_store: MemoryStore) -> None:
    plan = FaultPlan().fail(pay)
    async with plan.install(BookTrip(store=memory_store)) as trips:
        outcome = await trips.run(TRIP, workflow_id="w1")
    assert outcome.ok
    assert plan.injected == [Injection("w1", "pay", "fail")]
    assert CALLS["w1"].count("pay") == 1


async def test_fail_always_with_a_given_error(memory_store: MemoryStore) -> None:
    plan = FaultPlan().fail("pay", times=None, error=ConnectionError("bank down"))
    async with plan.install(BookTrip(store=memory_store)) as trips:
        outcome = await trips.run(TRIP, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.type == "ConnectionError"
    assert_compensation_order(outcome, [{"book_hotel", "book_car"}, "book_flight"])
    assert len(plan.injected) == 2


async def test_a_fault_can_target_one_workflow(memory_store: MemoryStore) -> None:
    plan = FaultPlan().fail(book_flight, error=ValueError, workflow_id="w2")
    async with plan.install(BookTrip(store=memory_store)) as trips:
        first = await trips.run(TRIP, workflow_id="w1")
        second = await trips.run(TRIP, workflow_id="w2")
    assert first.ok
    assert second.status is WorkflowStatus.COMPENSATED and second.compensated == ()


async def test_time_out_after_acting_is_compensated(memory_store: MemoryStore) -> None:
    plan = FaultPlan().time_out(book_car).fail(pay, times=2)
    async with plan.install(BookTrip(store=memory_store)) as trips:
        outcome = await trips.run(TRIP, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.type == "StepTimeout"
    assert "book_car" in CALLS["w1"] and "cancel_car" in CALLS["w1"]
    assert "pay" not in CALLS["w1"]


async def test_time_out_without_acting_still_counts_as_may_have_acted(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().time_out(book_car, acted=False)
    async with plan.install(BookTrip(store=memory_store)) as trips:
        outcome = await trips.run(TRIP, workflow_id="w1")
        info = await trips.get("w1")
    assert "book_car" not in CALLS["w1"]
    assert info.steps["book_car"].status == "timed_out" and info.steps["book_car"].may_have_acted
    assert "book_car" in outcome.compensated


async def test_compensation_faults(memory_store: MemoryStore) -> None:
    plan = (
        FaultPlan()
        .fail(pay, times=None)
        .fail_compensation(book_hotel, times=None)
        .time_out_compensation(book_car)
    )
    async with plan.install(BookTrip(store=memory_store)) as trips:
        outcome = await trips.run(TRIP, workflow_id="w1")
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.compensated == ("book_car",)  # its second attempt succeeded
    assert outcome.remaining == ("book_hotel", "book_flight")
    kinds = [(i.step, i.kind, i.compensation) for i in plan.injected]
    assert kinds.count(("book_hotel", "fail", True)) == 2
    assert ("book_car", "timeout", True) in kinds


async def test_installing_checks_the_step_names() -> None:
    with pytest.raises(DefinitionError, match="no step named 'nope'"):
        FaultPlan().fail("nope").install(BookTrip(store=_store()))
    with pytest.raises(DefinitionError, match="has no compensation"):
        FaultPlan().fail_compensation(pay).install(BookTrip(store=_store()))
    with pytest.raises(DefinitionError, match="unknown crash point"):
        FaultPlan().crash(pay, at="later")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="times must be"):
        FaultPlan().fail(pay, times=0)
    with pytest.raises(DefinitionError, match="error must be"):
        FaultPlan().fail(pay, error="boom")  # type: ignore[arg-type]


def _store() -> MemoryStore:
    from flowkit.stores._memory import MemoryStore

    return MemoryStore()


POINTS = [
    ("book_flight", "started"),
    ("book_flight", "acted"),
    ("book_flight", "succeeded"),
    ("book_hotel", "started"),
    ("book_car", "acted"),
    ("book_hotel", "succeeded"),
    ("pay", "started"),
    ("pay", "acted"),
]


@pytest.mark.parametrize(("step", "point"), POINTS)
async def test_a_crash_at_any_forward_point_resumes_to_completion(
    memory_store: MemoryStore, step: str, point: str
) -> None:
    plan = FaultPlan().crash(step, at=point)  # type: ignore[arg-type]
    async with plan.install(BookTrip(store=memory_store)) as trips:
        with pytest.raises(SimulatedCrash, match=f"at '{point}' of step '{step}'"):
            await trips.run(TRIP, workflow_id="w1")
    async with BookTrip(store=memory_store) as trips:
        [outcome] = await trips.resume()
    assert outcome.ok
    acted_before_crash = point != "started"
    expected_calls = 2 if point == "acted" else 1
    assert CALLS["w1"].count(step) == (expected_calls if acted_before_crash else 1)


COMPENSATION_POINTS = ["compensation_started", "compensation_acted", "compensated"]


@pytest.mark.parametrize("point", COMPENSATION_POINTS)
async def test_a_crash_while_compensating_resumes_the_compensation(
    memory_store: MemoryStore, point: str
) -> None:
    plan = FaultPlan().fail(pay, times=None).crash(book_flight, at=point)  # type: ignore[arg-type]
    async with plan.install(BookTrip(store=memory_store)) as trips:
        with pytest.raises(SimulatedCrash):
            await trips.run(TRIP, workflow_id="w1")
    async with BookTrip(store=memory_store) as trips:
        [outcome] = await trips.resume()
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert_compensation_order(outcome, [{"book_car", "book_hotel"}, "book_flight"])
    assert CALLS["w1"].count("cancel_flight") == (2 if point == "compensation_acted" else 1)


async def slow_pay(ctx: StepContext, trip: Trip) -> None:
    CALLS[ctx.workflow_id].append("slow_pay")
    await anyio.sleep(0.05)
    CALLS[ctx.workflow_id].append("slow_pay done")


class SlowTrip(Orchestrator[Trip]):
    steps = (Step(book_flight, compensate=cancel_flight), Step(slow_pay))


async def test_a_crash_stops_every_workflow_of_the_instance_without_checkpoints(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().crash(book_flight, at="acted", workflow_id="w2")
    async with plan.install(SlowTrip(store=memory_store)) as trips:
        await trips.start(TRIP, workflow_id="w1")
        with anyio.fail_after(5):
            while "slow_pay" not in CALLS["w1"]:
                await anyio.sleep(0.001)
        with pytest.raises(SimulatedCrash):
            await trips.run(TRIP, workflow_id="w2")
        with pytest.raises(SimulatedCrash):
            await trips.start(TRIP, workflow_id="w3")
    assert "slow_pay done" not in CALLS["w1"]  # it was cut when the process "died"
    async with SlowTrip(store=memory_store) as trips:
        w1 = await trips.get("w1")
        w2 = await trips.get("w2")
        assert w1.steps["slow_pay"].status == "running"
        assert w2.steps["book_flight"].status == "running"
        outcomes = await trips.resume()
    assert sorted(o.workflow_id for o in outcomes) == ["w1", "w2"]
    assert all(o.ok for o in outcomes)


async def test_a_plan_survives_reinstallation_after_a_crash(memory_store: MemoryStore) -> None:
    plan = FaultPlan().crash(book_flight, at="succeeded").fail(pay, times=None)
    async with plan.install(BookTrip(store=memory_store)) as trips:
        with pytest.raises(SimulatedCrash):
            await trips.run(TRIP, workflow_id="w1")
    async with plan.install(BookTrip(store=memory_store)) as trips:
        [outcome] = await trips.resume()
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert [i.kind for i in plan.injected] == ["crash", "fail", "fail"]


def _outcome(compensated: tuple[str, ...]) -> Outcome:
    return Outcome(workflow_id="w", status=WorkflowStatus.COMPENSATED, compensated=compensated)


def test_assert_compensation_order() -> None:
    assert_compensation_order(_outcome(("c", "b", "a")), ["c", "b", "a"])
    assert_compensation_order(_outcome(("c", "b", "a")), [{"b", "c"}, "a"])
    assert_compensation_order(_outcome(()), [])
    with pytest.raises(AssertionError, match=r"at position 0: got \['c'\], expected \['b'\]"):
        assert_compensation_order(_outcome(("c", "b", "a")), ["b", "c", "a"])
    with pytest.raises(AssertionError, match=r"\['a'\] ran too"):
        assert_compensation_order(_outcome(("c", "b", "a")), ["c", "b"])
    with pytest.raises(AssertionError):
        assert_compensation_order(_outcome(("c",)), ["c", "b"])


def test_injected_fault_is_a_flowkit_error() -> None:
    from flowkit import FlowkitError

    assert issubclass(InjectedFault, FlowkitError)
    assert not issubclass(SimulatedCrash, Exception)
