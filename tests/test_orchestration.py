"""The saga engine: forward, compensation, parallel groups, pivot, timeouts,
concurrency, idempotency, cancel, retries, inspection, resume."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import anyio
import pytest
from pydantic import BaseModel

from flowkit import NonRetryableError, Retry, WorkflowNotFound
from flowkit.orchestration import (
    InvalidWorkflowState,
    Orchestrator,
    OrchestratorNotStarted,
    Outcome,
    Parallel,
    ResultNotAvailable,
    Step,
    StepContext,
    WorkflowStatus,
)
from flowkit.testing._sagas import FaultPlan, SimulatedCrash, assert_compensation_order

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from flowkit.stores._memory import MemoryStore
from flowkit.stores._sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

JOURNAL: defaultdict[str, list[str]] = defaultdict(list)
KEYS: list[str] = []
GATES: dict[str, anyio.Event] = {}
LOAD = {"active": 0, "max": 0}


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    JOURNAL.clear()
    KEYS.clear()
    GATES.clear()
    LOAD.update(active=0, max=0)
    yield


class Order(BaseModel):
    order_id: str
    amount: int = 10


class Reservation(BaseModel):
    sku: str
    quantity: int


class Payment(BaseModel):
    payment_id: str
    amount: int


async def reserve(ctx: StepContext, order: Order) -> Reservation:
    JOURNAL[ctx.workflow_id].append("reserve")
    return Reservation(sku=f"sku-{order.order_id}", quantity=1)


async def release(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("release")


async def charge(ctx: StepContext, order: Order) -> Payment:
    JOURNAL[ctx.workflow_id].append("charge")
    KEYS.append(ctx.idempotency_key)
    return Payment(payment_id=ctx.idempotency_key, amount=order.amount)


async def refund(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("refund")
    KEYS.append(ctx.idempotency_key)


async def notify(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("notify")


async def assign(ctx: StepContext, order: Order) -> str:
    JOURNAL[ctx.workflow_id].append("assign")
    return "partner-7"


async def unassign(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("unassign")


async def confirm(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("confirm")


class PlaceOrder(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        Step(charge, compensate=refund),
        Parallel(Step(notify), Step(assign, compensate=unassign)),
        Step(confirm),
    )
    compensation_retry = Retry(attempts=3, backoff=0)


def order(n: int = 1, amount: int = 10) -> Order:
    return Order(order_id=f"o-{n}", amount=amount)


# -- forward and back ---------------------------------------------------------------------


async def test_steps_run_forward_in_order_with_typed_results(memory_store: MemoryStore) -> None:
    async with PlaceOrder(store=memory_store) as orders:
        outcome = await orders.run(order(), workflow_id="w1")

    assert outcome.status is WorkflowStatus.COMPLETED and outcome.ok
    assert JOURNAL["w1"][:2] == ["reserve", "charge"]
    assert sorted(JOURNAL["w1"][2:4]) == ["assign", "notify"]
    assert JOURNAL["w1"][4:] == ["confirm"]
    assert outcome.result(reserve) == Reservation(sku="sku-o-1", quantity=1)
    assert outcome.result(charge).payment_id == "w1:charge"
    assert outcome.result("assign") == "partner-7"
    assert outcome.results["notify"] is None
    assert outcome.error is None and outcome.compensated == () and outcome.remaining == ()


async def test_a_failure_compensates_the_completed_steps_in_reverse(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().fail(confirm)
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")

    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.step == "confirm"
    assert outcome.error.type == "InjectedFault"
    assert (
        outcome.reason == "step 'confirm' failed: InjectedFault: injected failure of step 'confirm'"
    )
    assert_compensation_order(outcome, ["assign", "charge", "reserve"])
    assert JOURNAL["w1"][-3:] == ["unassign", "refund", "release"]
    assert "w1:charge:compensate" in KEYS


async def test_a_step_that_raised_is_not_compensated(memory_store: MemoryStore) -> None:
    async with FaultPlan().fail(charge).install(PlaceOrder(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.compensated == ("reserve",)
    assert "refund" not in JOURNAL["w1"]
    with pytest.raises(ResultNotAvailable):
        outcome.result(charge)


async def test_a_retried_step_succeeds_with_the_same_idempotency_key(
    memory_store: MemoryStore,
) -> None:
    class Retrying(Orchestrator[Order]):
        steps = (Step(charge, compensate=refund, retry=Retry(attempts=3, backoff=0)),)

    plan = FaultPlan().fail(charge, times=2)
    async with plan.install(Retrying(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
        info = await orders.get("w1")

    assert outcome.ok
    assert info.steps["charge"].attempts == 3
    events = [(t.event, t.attempt) for t in info.history if t.step == "charge"]
    assert events == [
        ("step_started", 1),
        ("step_failed", 1),
        ("step_started", 2),
        ("step_failed", 2),
        ("step_started", 3),
        ("step_succeeded", 3),
    ]
    assert KEYS == ["w1:charge"]


async def test_non_retryable_errors_are_not_retried(memory_store: MemoryStore) -> None:
    class Retrying(Orchestrator[Order]):
        steps = (Step(charge, retry=Retry(attempts=5, backoff=0)),)

    plan = FaultPlan().fail(charge, times=None, error=NonRetryableError("card stolen"))
    async with plan.install(Retrying(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert len(plan.injected) == 1
    assert outcome.error is not None and outcome.error.message == "card stolen"


async def returns_wrong_type(ctx: StepContext, order: Order) -> int:
    JOURNAL[ctx.workflow_id].append("acted")
    return "not an int"  # type: ignore[return-value]


async def undo_wrong_type(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("undone")


async def test_a_result_that_does_not_match_its_annotation_fails_the_step(
    memory_store: MemoryStore,
) -> None:
    class Wrong(Orchestrator[Order]):
        steps = (Step(returns_wrong_type, compensate=undo_wrong_type, retry=Retry(attempts=3)),)

    async with Wrong(store=memory_store) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and "does not match its annotation" in outcome.error.message
    assert JOURNAL["w1"] == ["acted", "undone"]  # not retried; it acted, so it is undone


# -- parallel groups -----------------------------------------------------------------------


async def first(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("first")


async def undo_first(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("undo_first")


async def slow(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("slow")
    try:
        await anyio.sleep(10)
    except anyio.get_cancelled_exc_class():
        JOURNAL[ctx.workflow_id].append("slow cancelled")
        raise


async def quick(ctx: StepContext, order: Order) -> int:
    JOURNAL[ctx.workflow_id].append("quick")
    return 1


async def fails_soon(ctx: StepContext, order: Order) -> None:
    await anyio.sleep(0.02)
    raise ValueError("partner unavailable")


async def overlapping_undo(ctx: StepContext, order: Order) -> None:
    LOAD["active"] += 1
    LOAD["max"] = max(LOAD["max"], LOAD["active"])
    await anyio.sleep(0.02)
    LOAD["active"] -= 1
    JOURNAL[ctx.workflow_id].append(f"undo_{ctx.step}")


class Group(Orchestrator[Order]):
    steps = (
        Step(first, compensate=undo_first),
        Parallel(
            Step(slow, compensate=overlapping_undo),
            Step(fails_soon, compensate=overlapping_undo),
            Step(quick, compensate=overlapping_undo),
        ),
    )


async def test_a_failing_member_cancels_its_siblings_and_the_group_is_compensated_together(
    memory_store: MemoryStore,
) -> None:
    async with Group(store=memory_store) as orders:
        with anyio.fail_after(5):
            outcome = await orders.run(order(), workflow_id="w1")
        info = await orders.get("w1")

    assert outcome.status is WorkflowStatus.COMPENSATED
    assert "slow cancelled" in JOURNAL["w1"]
    assert outcome.error is not None and outcome.error.step == "fails_soon"
    # the interrupted sibling may have acted: compensated with the one that succeeded,
    # at the same time; the member that raised is not
    assert_compensation_order(outcome, [{"slow", "quick"}, "first"])
    assert LOAD["max"] == 2
    statuses = {name: s.status for name, s in info.steps.items()}
    assert statuses == {
        "first": "succeeded",
        "slow": "interrupted",
        "fails_soon": "failed",
        "quick": "succeeded",
    }
    assert info.steps["slow"].may_have_acted and not info.steps["fails_soon"].may_have_acted


async def test_a_successful_group_records_every_member(memory_store: MemoryStore) -> None:
    class Fine(Orchestrator[Order]):
        steps = (Parallel(Step(quick), Step(first)), Step(notify))

    async with Fine(store=memory_store) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.ok and outcome.results == {"quick": 1, "first": None, "notify": None}


# -- pivot ---------------------------------------------------------------------------------


async def commit(ctx: StepContext, order: Order) -> str:
    JOURNAL[ctx.workflow_id].append("commit")
    return "committed"


async def ship(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("ship")


class Pivoted(Orchestrator[Order]):
    steps = (Step(reserve, compensate=release), Step(commit, pivot=True), Step(ship))
    step_retry = Retry(attempts=1, backoff=0)


async def test_past_the_pivot_failures_are_retried_forward_not_compensated(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().fail(ship, times=4)
    async with plan.install(Pivoted(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
        info = await orders.get("w1")
    assert outcome.ok
    assert info.steps["ship"].attempts == 5  # its policy allows one attempt; past the pivot: more
    assert "release" not in JOURNAL["w1"]


async def test_a_failing_pivot_turns_back(memory_store: MemoryStore) -> None:
    async with FaultPlan().fail(commit).install(Pivoted(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.compensated == ("reserve",)


async def test_a_non_retryable_failure_past_the_pivot_fails_and_can_be_retried_forward(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().fail(ship, error=NonRetryableError("address unknown"))
    async with plan.install(Pivoted(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
        assert outcome.status is WorkflowStatus.FAILED
        assert outcome.remaining == ("ship",)
        assert outcome.reason is not None and "past the pivot 'commit'" in outcome.reason
        assert outcome.compensated == ()
        with pytest.raises(InvalidWorkflowState, match="retry_forward"):
            await orders.retry_compensation("w1")
        with pytest.raises(InvalidWorkflowState):
            await orders.cancel("w1")
        outcome = await orders.retry_forward("w1")
    assert outcome.ok
    assert JOURNAL["w1"] == ["reserve", "commit", "ship"]


# -- timeouts ------------------------------------------------------------------------------


async def hang(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("hang")
    await anyio.sleep(10)


async def undo_hang(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("undo_hang")


async def test_a_step_that_times_out_is_retried_then_compensated(
    memory_store: MemoryStore,
) -> None:
    class Slow(Orchestrator[Order]):
        steps = (
            Step(reserve, compensate=release),
            Step(hang, compensate=undo_hang, timeout=0.05, retry=Retry(attempts=2, backoff=0)),
        )

    async with Slow(store=memory_store) as orders:
        with anyio.fail_after(5):
            outcome = await orders.run(order(), workflow_id="w1")
        info = await orders.get("w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.type == "StepTimeout"
    assert JOURNAL["w1"].count("hang") == 2
    assert outcome.compensated == ("hang", "reserve")  # it may have acted
    assert info.steps["hang"].status == "timed_out"
    assert [t.event for t in info.history if t.step == "hang"][:4] == [
        "step_started",
        "step_timed_out",
        "step_started",
        "step_timed_out",
    ]


async def test_the_workflow_deadline_interrupts_and_compensates(
    memory_store: MemoryStore,
) -> None:
    class Deadline(Orchestrator[Order]):
        deadline = 0.1
        steps = (Step(reserve, compensate=release), Step(hang, compensate=undo_hang))

    async with Deadline(store=memory_store) as orders:
        with anyio.fail_after(5):
            outcome = await orders.run(order(), workflow_id="w1")
        info = await orders.get("w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.type == "DeadlineExceeded"
    assert outcome.compensated == ("hang", "reserve")
    assert info.steps["hang"].status == "interrupted"
    assert "deadline_exceeded" in [t.event for t in info.history]


async def nap(ctx: StepContext, order: Order) -> None:
    await anyio.sleep(0.2)
    JOURNAL[ctx.workflow_id].append("nap")


async def test_the_deadline_does_not_apply_past_the_pivot(memory_store: MemoryStore) -> None:
    class Late(Orchestrator[Order]):
        deadline = 0.1
        steps = (Step(reserve, compensate=release), Step(commit, pivot=True), Step(nap))

    async with Late(store=memory_store) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.ok and JOURNAL["w1"] == ["reserve", "commit", "nap"]


# -- concurrency and idempotency -----------------------------------------------------------------


async def busy(ctx: StepContext, order: Order) -> None:
    LOAD["active"] += 1
    LOAD["max"] = max(LOAD["max"], LOAD["active"])
    await anyio.sleep(0.01)
    LOAD["active"] -= 1


async def test_the_concurrency_limit_bounds_running_workflows(memory_store: MemoryStore) -> None:
    class Busy(Orchestrator[Order]):
        steps = (Step(busy),)

    outcomes: list[Outcome] = []
    async with Busy(store=memory_store, concurrency=2) as orders:

        async def one(n: int) -> None:
            outcomes.append(await orders.run(order(n)))

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(one, n)
    assert len(outcomes) == 8 and all(o.ok for o in outcomes)
    assert LOAD["max"] == 2


async def test_run_is_idempotent_per_workflow_id(memory_store: MemoryStore) -> None:
    async with PlaceOrder(store=memory_store) as orders:
        first_outcome = await orders.run(order(), workflow_id="w1")
        again = await orders.run(order(2, amount=999), workflow_id="w1")  # input ignored
        results: list[Outcome] = []

        async def concurrent() -> None:
            results.append(await orders.run(order(3), workflow_id="w2"))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(concurrent)
    assert again.status is first_outcome.status and again.results == first_outcome.results
    assert JOURNAL["w1"].count("reserve") == 1
    assert JOURNAL["w2"].count("reserve") == 1
    assert [o.status for o in results] == [WorkflowStatus.COMPLETED] * 3


async def test_start_returns_at_once_and_wait_gets_the_outcome(memory_store: MemoryStore) -> None:
    async with PlaceOrder(store=memory_store) as orders:
        wid = await orders.start(order())
        assert await orders.start(order(), workflow_id=wid) == wid
        outcome = await orders.wait(wid)
        assert outcome.ok and outcome.workflow_id == wid
        assert await orders.start(order(), workflow_id=wid) == wid  # finished: not run again
        started = await orders.start(order(2), workflow_id="bg")
    # leaving the block waits for background workflows
    assert started == "bg" and JOURNAL["bg"][-1] == "confirm"
    assert JOURNAL[wid].count("reserve") == 1


async def test_a_workflow_id_of_another_orchestrator_is_refused(memory_store: MemoryStore) -> None:
    async with PlaceOrder(store=memory_store) as orders, Pivoted(store=memory_store) as other:
        await orders.run(order(), workflow_id="w1")
        with pytest.raises(InvalidWorkflowState, match="used by orchestrator 'PlaceOrder'"):
            await other.run(order(), workflow_id="w1")
        with pytest.raises(WorkflowNotFound, match="belongs to 'PlaceOrder'"):
            await other.get("w1")


async def test_inputs_and_lifecycle_are_checked(memory_store: MemoryStore) -> None:
    orders = PlaceOrder(store=memory_store)
    with pytest.raises(OrchestratorNotStarted):
        await orders.run(order())
    async with orders:
        with pytest.raises(TypeError, match="takes Order as input"):
            await orders.run({"order_id": "x"})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="workflow_id"):
            await orders.run(order(), workflow_id="")
        with pytest.raises(RuntimeError, match="already started"):
            await orders.__aenter__()


# -- cancel -------------------------------------------------------------------------------


async def blocker(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("blocker")
    await GATES["blocker"].wait()


async def unblock(ctx: StepContext, order: Order) -> None:
    JOURNAL[ctx.workflow_id].append("unblock")


class Blocking(Orchestrator[Order]):
    steps = (Step(reserve, compensate=release), Step(blocker, compensate=unblock))


async def wait_for(wid: str, entry: str, count: int = 1) -> None:
    with anyio.fail_after(5):
        while JOURNAL[wid].count(entry) < count:
            await anyio.sleep(0.005)


async def test_cancel_interrupts_a_running_workflow_and_compensates(
    memory_store: MemoryStore,
) -> None:
    GATES["blocker"] = anyio.Event()
    async with Blocking(store=memory_store) as orders:
        await orders.start(order(), workflow_id="w1")
        await wait_for("w1", "blocker")
        outcome = await orders.cancel("w1")
        assert outcome.status is WorkflowStatus.COMPENSATED
        assert outcome.error is not None and outcome.error.type == "WorkflowCancelled"
        assert outcome.compensated == ("blocker", "reserve")
        assert (await orders.cancel("w1")).status is WorkflowStatus.COMPENSATED  # idempotent
        GATES["blocker"].set()
        await orders.run(order(), workflow_id="done")
        with pytest.raises(InvalidWorkflowState, match="COMPLETED"):
            await orders.cancel("done")
        with pytest.raises(WorkflowNotFound):
            await orders.cancel("nope")


async def test_cancel_compensates_a_workflow_left_running_by_a_crash(
    memory_store: MemoryStore,
) -> None:
    GATES["blocker"] = anyio.Event()
    plan = FaultPlan().crash(blocker, at="started")
    async with plan.install(Blocking(store=memory_store)) as orders:
        with pytest.raises(SimulatedCrash):
            await orders.run(order(), workflow_id="w1")
    async with Blocking(store=memory_store) as orders:
        assert (await orders.get("w1")).status is WorkflowStatus.RUNNING
        outcome = await orders.cancel("w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    # the blocker was started when the process died: it may have acted
    assert outcome.compensated == ("blocker", "reserve")
    assert JOURNAL["w1"] == ["reserve", "release"] or JOURNAL["w1"] == [
        "reserve",
        "unblock",
        "release",
    ]


async def test_a_cancel_that_arrives_past_the_pivot_is_refused(memory_store: MemoryStore) -> None:
    GATES["blocker"] = anyio.Event()

    class PivotThenBlock(Orchestrator[Order]):
        steps = (Step(commit, pivot=True), Step(blocker))

    async with PivotThenBlock(store=memory_store) as orders:
        await orders.start(order(), workflow_id="w1")
        await wait_for("w1", "blocker")
        with pytest.raises(InvalidWorkflowState, match="past its pivot"):
            await orders.cancel("w1")
        GATES["blocker"].set()
        assert (await orders.wait("w1")).ok


# -- failed compensations ------------------------------------------------------------------------


async def test_a_compensation_that_keeps_failing_ends_failed_and_can_be_retried(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().fail(confirm).fail_compensation(charge, times=None)
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
        info = await orders.get("w1")
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.reason == (
        "the compensation of step 'charge' failed after 3 attempt(s): "
        "InjectedFault: injected failure of compensation of step 'charge'"
    )
    assert outcome.remaining == ("charge", "reserve")
    assert outcome.compensated == ("assign",)
    assert outcome.error is not None and outcome.error.step == "confirm"
    assert info.steps["charge"].compensation == "failed"
    assert info.steps["charge"].compensation_attempts == 3
    assert info.remaining == ("charge", "reserve")

    # the cause is fixed (no fault plan): the remaining compensations run
    async with PlaceOrder(store=memory_store) as orders:
        assert await orders.resume() == []  # FAILED workflows are not resumed
        outcome = await orders.retry_compensation("w1")
        with pytest.raises(InvalidWorkflowState, match="COMPENSATED, not FAILED"):
            await orders.retry_compensation("w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert_compensation_order(outcome, ["assign", "charge", "reserve"])
    assert outcome.remaining == ()


async def test_a_compensation_is_retried_with_its_policy(memory_store: MemoryStore) -> None:
    plan = FaultPlan().fail(charge).fail_compensation(reserve, times=2)
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
        info = await orders.get("w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert info.steps["reserve"].compensation_attempts == 3


# -- inspection ------------------------------------------------------------------------------------


async def test_get_and_list_report_status_steps_and_history(memory_store: MemoryStore) -> None:
    plan = FaultPlan().fail(charge, workflow_id="w2")
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        await orders.run(order(1), workflow_id="w1")
        await orders.run(order(2), workflow_id="w2")
        info = await orders.get("w2")
        everything = await orders.list()
        completed = await orders.list(status="COMPLETED")
        both = await orders.list(status=[WorkflowStatus.COMPLETED, WorkflowStatus.COMPENSATED])
        limited = await orders.list(limit=1)
        with pytest.raises(WorkflowNotFound):
            await orders.get("nope")

    assert info.id == "w2" and info.name == "PlaceOrder"
    assert info.status is WorkflowStatus.COMPENSATED
    assert info.input == order(2)
    assert info.steps["reserve"].result == Reservation(sku="sku-o-2", quantity=1)
    assert info.steps["reserve"].compensation == "compensated"
    assert info.steps["charge"].status == "failed" and info.steps["charge"].error is not None
    assert info.steps["confirm"].status == "pending"
    assert info.results == {"reserve": Reservation(sku="sku-o-2", quantity=1)}
    assert [(t.event, t.step) for t in info.history] == [
        ("workflow_started", None),
        ("step_started", "reserve"),
        ("step_succeeded", "reserve"),
        ("step_started", "charge"),
        ("step_failed", "charge"),
        ("compensating", None),
        ("compensation_started", "reserve"),
        ("step_compensated", "reserve"),
        ("compensated", None),
    ]
    times = [t.at for t in info.history]
    assert times == sorted(times) and times[0].tzinfo is not None
    assert info.created_at is not None and info.version == 6
    assert [i.id for i in everything] == ["w1", "w2"]
    assert [i.id for i in completed] == ["w1"]
    assert [i.id for i in both] == ["w1", "w2"]
    assert [i.id for i in limited] == ["w1"]


async def records_context(ctx: StepContext, order: Order) -> str:
    assert ctx.workflow_id == "w1" and ctx.workflow == "Contextual"
    assert ctx.step == "records_context" and ctx.idempotency_key == "w1:records_context"
    assert ctx.attempt == 1 and not ctx.compensating
    assert ctx.result(reserve).sku == "sku-o-1"
    assert ctx.results["reserve"] == ctx.result("reserve")
    with pytest.raises(ResultNotAvailable):
        ctx.result(charge)
    with pytest.raises(KeyError, match="no step named 'nope'"):
        ctx.result("nope")
    ctx.logger.info("inside %s", ctx.step)
    return "seen"


async def undo_with_context(ctx: StepContext, order: Order) -> None:
    assert ctx.compensating and ctx.idempotency_key == "w1:records_context:compensate"
    assert ctx.result(records_context) == "seen"
    JOURNAL[ctx.workflow_id].append("undo_with_context")


async def test_the_step_context(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Contextual(Orchestrator[Order]):
        steps = (
            Step(reserve),
            Step(records_context, compensate=undo_with_context),
            Step(charge),
        )

    caplog.set_level(logging.INFO, logger="flowkit.orchestration")
    plan = FaultPlan().fail(charge)
    async with plan.install(Contextual(store=memory_store)) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert JOURNAL["w1"][-1] == "undo_with_context"
    record = next(r for r in caplog.records if r.getMessage() == "inside records_context")
    assert record.__dict__["flowkit_workflow_id"] == "w1"
    assert record.__dict__["flowkit_step"] == "records_context"


# -- resume ----------------------------------------------------------------------------------


async def test_resume_reruns_a_step_that_acted_with_the_same_idempotency_key(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().crash(charge, at="acted")
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        with pytest.raises(SimulatedCrash):
            await orders.run(order(), workflow_id="w1")
        with pytest.raises(SimulatedCrash):
            await orders.run(order(), workflow_id="w2")  # the instance is dead
    async with PlaceOrder(store=memory_store) as orders:
        [outcome] = await orders.resume()
        info = await orders.get("w1")
    assert outcome.ok and outcome.workflow_id == "w1"
    assert JOURNAL["w1"].count("charge") == 2
    assert KEYS == ["w1:charge", "w1:charge"]
    assert info.steps["charge"].attempts == 2
    assert "workflow_resumed" in [t.event for t in info.history]


async def test_resume_goes_on_compensating(memory_store: MemoryStore) -> None:
    plan = FaultPlan().fail(confirm).crash(charge, at="compensation_acted")
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        with pytest.raises(SimulatedCrash):
            await orders.run(order(), workflow_id="w1")
        assert (await memory_store.load_workflow("w1")).status == "COMPENSATING"
    async with PlaceOrder(store=memory_store) as orders:
        [outcome] = await orders.resume()
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert_compensation_order(outcome, ["assign", "charge", "reserve"])
    assert JOURNAL["w1"].count("refund") == 2  # compensations must be idempotent


async def test_run_with_the_id_of_an_unfinished_workflow_continues_it(
    memory_store: MemoryStore,
) -> None:
    plan = FaultPlan().crash(reserve, at="succeeded")
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        with pytest.raises(SimulatedCrash):
            await orders.run(order(), workflow_id="w1")
    async with PlaceOrder(store=memory_store) as orders:
        outcome = await orders.run(order(), workflow_id="w1")
    assert outcome.ok
    assert JOURNAL["w1"].count("reserve") == 1


async def test_two_instances_running_one_workflow_one_backs_off(
    memory_store: MemoryStore,
) -> None:
    GATES["blocker"] = anyio.Event()
    outcomes: list[Outcome] = []
    async with Blocking(store=memory_store) as a, Blocking(store=memory_store) as b:

        async def run_on(orchestrator: Blocking) -> None:
            outcomes.append(await orchestrator.run(order(), workflow_id="w1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_on, a)
            await wait_for("w1", "blocker")
            tg.start_soon(run_on, b)  # b takes the unfinished workflow over
            await wait_for("w1", "blocker", 2)
            GATES["blocker"].set()
        info = await a.get("w1")
    # one saved first; the other got a version conflict, backed off and read the outcome
    assert [o.status for o in outcomes] == [WorkflowStatus.COMPLETED] * 2
    assert info.status is WorkflowStatus.COMPLETED
    assert JOURNAL["w1"].count("reserve") == 1


async def test_two_instances_resuming_the_same_workflows(memory_store: MemoryStore) -> None:
    plan = FaultPlan().crash(charge, at="acted", workflow_id="w3")
    async with plan.install(PlaceOrder(store=memory_store)) as orders:
        async with anyio.create_task_group() as tg:
            for n in (1, 2, 3):
                tg.start_soon(_run_quietly, orders, n)
    async with PlaceOrder(store=memory_store) as a, PlaceOrder(store=memory_store) as b:
        results: list[list[Outcome]] = []

        async def resume(orchestrator: PlaceOrder) -> None:
            results.append(await orchestrator.resume())

        async with anyio.create_task_group() as tg:
            tg.start_soon(resume, a)
            tg.start_soon(resume, b)
        infos = await a.list()
    assert all(i.status is WorkflowStatus.COMPLETED for i in infos)
    assert 1 <= sum(len(r) for r in results) <= 6


async def _run_quietly(orders: PlaceOrder, n: int) -> None:
    try:
        await orders.run(order(n), workflow_id=f"w{n}")
    except SimulatedCrash:
        pass


async def test_on_sqlite_a_workflow_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "flowkit.db"
    plan = FaultPlan().crash(charge, at="acted")
    async with SQLiteStore(path) as store:
        async with plan.install(PlaceOrder(store=store)) as orders:
            with pytest.raises(SimulatedCrash):
                await orders.run(order(), workflow_id="w1")
    async with SQLiteStore(path) as store, PlaceOrder(store=store) as orders:
        [outcome] = await orders.resume()
        info = await orders.get("w1")
        again = await orders.run(order(), workflow_id="w1")
    assert outcome.ok and again.ok
    assert again.result(charge) == Payment(payment_id="w1:charge", amount=10)
    assert info.steps["charge"].attempts == 2
    assert info.steps["reserve"].result == Reservation(sku="sku-o-1", quantity=1)


async def test_an_error_in_the_block_comes_out_as_itself(memory_store: MemoryStore) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with PlaceOrder(store=memory_store):
            raise KeyError("mine")
