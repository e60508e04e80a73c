"""Observers: the transitions the engine reports, the call intercept, and what
an observer's own exceptions do."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from pydantic import BaseModel

from flowkit import DefinitionError, Retry
from flowkit.orchestration import (
    Orchestrator,
    Parallel,
    SagaObserver,
    Step,
    StepContext,
    StepEvent,
    StepTimeout,
    WorkflowEvent,
    WorkflowStatus,
)
from flowkit.testing._sagas import FaultPlan, InjectedFault

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from flowkit.stores._memory import MemoryStore

pytestmark = pytest.mark.anyio

CALLS: defaultdict[str, list[str]] = defaultdict(list)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    CALLS.clear()
    yield


class Parcel(BaseModel):
    parcel_id: str


async def pick(ctx: StepContext, parcel: Parcel) -> str:
    CALLS[ctx.workflow_id].append("pick")
    return "picked"


async def unpick(ctx: StepContext, parcel: Parcel) -> None:
    CALLS[ctx.workflow_id].append("unpick")


async def pack(ctx: StepContext, parcel: Parcel) -> int:
    CALLS[ctx.workflow_id].append("pack")
    return 3


async def unpack(ctx: StepContext, parcel: Parcel) -> None:
    CALLS[ctx.workflow_id].append("unpack")


async def label(ctx: StepContext, parcel: Parcel) -> None:
    CALLS[ctx.workflow_id].append("label")


class Ship(Orchestrator[Parcel]):
    steps = (
        Step(pick, compensate=unpick),
        Step(pack, compensate=unpack, retry=Retry(attempts=2, backoff=0)),
        Step(label),
    )
    compensation_retry = Retry(attempts=2, backoff=0)


PARCEL = Parcel(parcel_id="p-1")


class Recorder(SagaObserver):
    """Records every notification as (method, step or status, attempt, compensating)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int | None, bool]] = []
        self.workflow_events: list[tuple[str, WorkflowEvent]] = []
        self.step_events: list[tuple[str, StepEvent]] = []

    def _workflow(self, method: str, event: WorkflowEvent) -> None:
        self.seen.append((method, event.status.value, None, False))
        self.workflow_events.append((method, event))

    def _step(self, method: str, event: StepEvent) -> None:
        self.seen.append((method, event.step, event.attempt, event.compensating))
        self.step_events.append((method, event))

    def workflow_started(self, event: WorkflowEvent) -> None:
        self._workflow("workflow_started", event)

    def workflow_finished(self, event: WorkflowEvent) -> None:
        self._workflow("workflow_finished", event)

    def workflow_stopped(self, event: WorkflowEvent) -> None:
        self._workflow("workflow_stopped", event)

    def step_started(self, event: StepEvent) -> None:
        self._step("step_started", event)

    def step_acted(self, event: StepEvent) -> None:
        self._step("step_acted", event)

    def step_succeeded(self, event: StepEvent) -> None:
        self._step("step_succeeded", event)

    def step_failed(self, event: StepEvent) -> None:
        self._step("step_failed", event)

    def step_interrupted(self, event: StepEvent) -> None:
        self._step("step_interrupted", event)


async def test_a_completed_workflow_reports_each_transition_in_order(
    memory_store: MemoryStore,
) -> None:
    recorder = Recorder()
    async with Ship(store=memory_store, observers=[recorder]) as ship:
        outcome = await ship.run(PARCEL, workflow_id="w1")
    assert outcome.ok
    assert recorder.seen == [
        ("workflow_started", "RUNNING", None, False),
        ("step_started", "pick", 1, False),
        ("step_acted", "pick", 1, False),
        ("step_succeeded", "pick", 1, False),
        ("step_started", "pack", 1, False),
        ("step_acted", "pack", 1, False),
        ("step_succeeded", "pack", 1, False),
        ("step_started", "label", 1, False),
        ("step_acted", "label", 1, False),
        ("step_succeeded", "label", 1, False),
        ("workflow_finished", "COMPLETED", None, False),
    ]
    started, finished = recorder.workflow_events
    assert started[1] == WorkflowEvent(workflow="Ship", workflow_id="w1", status=started[1].status)
    assert not started[1].resumed and started[1].duration is None
    assert finished[1].duration is not None and finished[1].duration >= 0
    assert finished[1].error is None and finished[1].reason is None
    for method, event in recorder.step_events:
        assert event.workflow == "Ship" and event.workflow_id == "w1"
        assert (event.duration is None) == (method == "step_started")


async def test_retries_and_compensations_are_reported(memory_store: MemoryStore) -> None:
    recorder = Recorder()
    plan = FaultPlan().fail(pack).fail(label).fail_compensation(pick)
    async with Ship(store=memory_store, observers=[recorder]) as ship:
        plan.install(ship)
        outcome = await ship.run(PARCEL, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert recorder.seen[4:] == [
        ("step_started", "pack", 1, False),
        ("step_failed", "pack", 1, False),
        ("step_started", "pack", 2, False),
        ("step_acted", "pack", 2, False),
        ("step_succeeded", "pack", 2, False),
        ("step_started", "label", 1, False),
        ("step_failed", "label", 1, False),
        ("step_started", "pack", 1, True),
        ("step_acted", "pack", 1, True),
        ("step_succeeded", "pack", 1, True),
        ("step_started", "pick", 1, True),
        ("step_failed", "pick", 1, True),
        ("step_started", "pick", 2, True),
        ("step_acted", "pick", 2, True),
        ("step_succeeded", "pick", 2, True),
        ("workflow_finished", "COMPENSATED", None, False),
    ]
    failures = [e for m, e in recorder.step_events if m == "step_failed"]
    retried, final, comp_retried = failures
    assert isinstance(retried.error, InjectedFault)
    assert retried.will_retry and retried.retry_delay == 0
    assert not final.will_retry and final.retry_delay is None and final.step == "label"
    assert comp_retried.compensating and comp_retried.will_retry
    finished = recorder.workflow_events[-1][1]
    assert finished.error is not None and finished.error.step == "label"
    assert finished.reason is not None and "step 'label' failed" in finished.reason


async def slow_sibling(ctx: StepContext, parcel: Parcel) -> None:
    CALLS[ctx.workflow_id].append("slow_sibling")
    await anyio.sleep(10)


async def undo_slow_sibling(ctx: StepContext, parcel: Parcel) -> None:
    CALLS[ctx.workflow_id].append("undo_slow_sibling")


async def failing_sibling(ctx: StepContext, parcel: Parcel) -> None:
    await anyio.sleep(0.01)
    raise ValueError("no boxes left")


class Together(Orchestrator[Parcel]):
    steps = (
        Step(pick, compensate=unpick),
        Parallel(Step(slow_sibling, compensate=undo_slow_sibling), Step(failing_sibling)),
    )


async def test_an_interrupted_sibling_is_reported(memory_store: MemoryStore) -> None:
    recorder = Recorder()
    async with Together(store=memory_store, observers=[recorder]) as together:
        with anyio.fail_after(5):
            outcome = await together.run(PARCEL, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    methods = [(m, e.step) for m, e in recorder.step_events if not e.compensating]
    assert ("step_failed", "failing_sibling") in methods
    assert ("step_interrupted", "slow_sibling") in methods
    interrupted = next(e for m, e in recorder.step_events if m == "step_interrupted")
    assert interrupted.duration is not None and interrupted.error is None
    assert ("step_succeeded", "slow_sibling", 1, True) in recorder.seen


class Slow(Orchestrator[Parcel]):
    steps = (Step(pick, compensate=unpick), Step(slow_sibling, compensate=undo_slow_sibling))


async def until_called(workflow_id: str, step: str) -> None:
    with anyio.fail_after(5):
        while step not in CALLS[workflow_id]:
            await anyio.sleep(0.002)


async def test_a_cancelled_workflow_reports_the_interrupted_step(
    memory_store: MemoryStore,
) -> None:
    recorder = Recorder()
    async with Slow(store=memory_store, observers=[recorder]) as slow:
        await slow.start(PARCEL, workflow_id="w1")
        await until_called("w1", "slow_sibling")
        outcome = await slow.cancel("w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert recorder.seen[-8:] == [
        ("step_interrupted", "slow_sibling", 1, False),
        ("step_started", "slow_sibling", 1, True),
        ("step_acted", "slow_sibling", 1, True),
        ("step_succeeded", "slow_sibling", 1, True),
        ("step_started", "pick", 1, True),
        ("step_acted", "pick", 1, True),
        ("step_succeeded", "pick", 1, True),
        ("workflow_finished", "COMPENSATED", None, False),
    ]


async def test_a_stopped_and_a_resumed_workflow_are_reported(memory_store: MemoryStore) -> None:
    recorder = Recorder()
    async with Slow(store=memory_store, observers=[recorder]) as slow:
        async with anyio.create_task_group() as tg:

            async def caller() -> None:
                await slow.run(PARCEL, workflow_id="w1")

            tg.start_soon(caller)
            await until_called("w1", "slow_sibling")
            tg.cancel_scope.cancel()  # the caller of run() is cancelled
    method, event = recorder.workflow_events[-1]
    assert method == "workflow_stopped" and event.status is WorkflowStatus.RUNNING
    assert event.duration is not None

    recorder = Recorder()
    async with Slow(store=memory_store, observers=[recorder]) as slow:
        outcome = await slow.cancel("w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    method, event = recorder.workflow_events[0]
    assert method == "workflow_started" and event.resumed
    assert event.status is WorkflowStatus.COMPENSATING


class Broken(SagaObserver):
    def step_started(self, event: StepEvent) -> None:
        raise RuntimeError("the tracer is down")

    def workflow_finished(self, event: WorkflowEvent) -> None:
        raise ValueError("so is the exporter")


async def test_an_observer_that_raises_is_logged_and_ignored(
    memory_store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    async with Ship(store=memory_store, observers=[Broken(), recorder]) as ship:
        outcome = await ship.run(PARCEL, workflow_id="w1")
    assert outcome.ok and CALLS["w1"] == ["pick", "pack", "label"]
    assert recorder.seen[-1] == ("workflow_finished", "COMPLETED", None, False)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 4  # three step starts, one finish
    assert "observer" in errors[0].getMessage() and "step_started" in errors[0].getMessage()
    assert errors[0].exc_info is not None


class Tracer(SagaObserver):
    """Wraps every call, as a tracer opening a span around each attempt would."""

    def __init__(self, name: str, trail: list[str]) -> None:
        self.name = name
        self.trail = trail

    async def intercept(self, ctx: StepContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        self.trail.append(f"{self.name} enter {ctx.step}#{ctx.attempt}")
        try:
            result = await proceed()
        except BaseException as exc:
            self.trail.append(f"{self.name} error {type(exc).__name__}")
            raise
        self.trail.append(f"{self.name} leave {result!r}")
        return result


async def test_intercept_wraps_each_call_first_installed_outermost(
    memory_store: MemoryStore,
) -> None:
    trail: list[str] = []
    plan = FaultPlan().fail(pack)
    async with Ship(store=memory_store, observers=[Tracer("a", trail)]) as ship:
        ship.add_observer(Tracer("b", trail))
        plan.install(ship)
        outcome = await ship.run(PARCEL, workflow_id="w1")
    assert outcome.ok
    assert trail[:6] == [
        "a enter pick#1",
        "b enter pick#1",
        "b leave 'picked'",
        "a leave 'picked'",
        "a enter pack#1",
        "b enter pack#1",
    ]
    # the plan, installed last, is innermost: its injected failure passes through both
    assert trail[6:10] == [
        "b error InjectedFault",
        "a error InjectedFault",
        "a enter pack#2",
        "b enter pack#2",
    ]


class Replacing(SagaObserver):
    async def intercept(self, ctx: StepContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        result = await proceed()
        if ctx.step == "pack":
            return 7
        if ctx.step == "label" and ctx.attempt == 1:
            raise StepTimeout("the label printer did not answer")
        return result


async def test_what_intercept_returns_or_raises_is_the_attempts_outcome(
    memory_store: MemoryStore,
) -> None:
    class Labelled(Orchestrator[Parcel]):
        steps = (Step(pack), Step(label, retry=Retry(attempts=2, backoff=0)))

    async with Labelled(store=memory_store, observers=[Replacing()]) as labelled:
        outcome = await labelled.run(PARCEL, workflow_id="w1")
        info = await labelled.get("w1")
    assert outcome.ok and outcome.result(pack) == 7
    assert info.steps["label"].attempts == 2
    assert [t.event for t in info.history if t.step == "label"][:2] == [
        "step_started",
        "step_timed_out",  # a StepTimeout from the intercept: it may have acted
    ]


class Halt(BaseException):
    """Not an Exception: an observer raising it stops the orchestrator."""


class Stopper(SagaObserver):
    def step_acted(self, event: StepEvent) -> None:
        if event.step == "pack":
            raise Halt(f"stop after {event.step}")


async def test_a_base_exception_from_an_observer_stops_the_orchestrator_like_a_crash(
    memory_store: MemoryStore,
) -> None:
    recorder = Recorder()
    async with Ship(store=memory_store, observers=[Stopper(), recorder]) as ship:
        with pytest.raises(Halt, match="stop after pack"):
            await ship.run(PARCEL, workflow_id="w1")
        with pytest.raises(Halt, match="raised by an observer"):
            await ship.run(PARCEL, workflow_id="w2")
        with pytest.raises(Halt):
            await ship.get("w1")
    # the recorder, after the stopper, heard nothing more
    assert recorder.seen[-1] == ("step_started", "pack", 1, False)
    async with Ship(store=memory_store) as ship:
        info = await ship.get("w1")
        assert info.status is WorkflowStatus.RUNNING
        assert info.steps["pack"].status == "running"  # its success was never written
        [outcome] = await ship.resume()
    assert outcome.ok
    assert CALLS["w1"] == ["pick", "pack", "pack", "label"]


async def test_observers_are_checked_and_added_once(memory_store: MemoryStore) -> None:
    recorder = Recorder()
    with pytest.raises(DefinitionError, match="must be a SagaObserver"):
        Ship(store=memory_store, observers=[object()])  # type: ignore[list-item]
    ship = Ship(store=memory_store, observers=[recorder])
    ship.add_observer(recorder)
    FaultPlan().install(ship)
    async with ship:
        await ship.run(PARCEL, workflow_id="w1")
    assert [s for s in recorder.seen if s[0] == "workflow_finished"] == [
        ("workflow_finished", "COMPLETED", None, False)
    ]
    with pytest.raises(DefinitionError):
        ship.add_observer(print)  # type: ignore[arg-type]


def test_step_name_maps_functions_and_declarations_to_names() -> None:
    assert Ship.step_name(pick) == "pick"
    assert Ship.step_name(Ship.steps[1]) == "pack"
    assert Ship.step_name("label") == "label"
    with pytest.raises(KeyError, match="not a step of Ship"):
        Ship.step_name(slow_sibling)
