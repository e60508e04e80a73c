"""Leaving ``async with``: running workflows get ``stop_grace`` seconds, then stop
where they stand and stay unfinished, to be resumed as after a crash."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import TYPE_CHECKING

import anyio
import pytest
from pydantic import BaseModel

from flowkit import DefinitionError
from flowkit.orchestration import (
    Orchestrator,
    OrchestratorNotStarted,
    Outcome,
    SagaObserver,
    Step,
    StepContext,
    WorkflowEvent,
    WorkflowStatus,
)
from flowkit.stores._memory import MemoryStore
from flowkit.stores._sqlite import SQLiteStore
from flowkit.testing._sagas import FaultPlan

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

CALLS: defaultdict[str, list[str]] = defaultdict(list)
LONG = {"seconds": 60.0}


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    CALLS.clear()
    LONG["seconds"] = 60.0
    yield


class Job(BaseModel):
    job_id: str


async def prepare(ctx: StepContext, job: Job) -> None:
    CALLS[ctx.workflow_id].append("prepare")


async def unprepare(ctx: StepContext, job: Job) -> None:
    CALLS[ctx.workflow_id].append("unprepare")


async def long_step(ctx: StepContext, job: Job) -> str:
    """Takes LONG seconds (60 at first: it is stopped; the test shortens it to resume)."""
    CALLS[ctx.workflow_id].append(f"long_step#{ctx.attempt}")
    await anyio.sleep(LONG["seconds"])
    return "done"


async def undo_long_step(ctx: StepContext, job: Job) -> None:
    CALLS[ctx.workflow_id].append("undo_long_step")


async def finish(ctx: StepContext, job: Job) -> None:
    CALLS[ctx.workflow_id].append("finish")


class Batch(Orchestrator[Job]):
    steps = (
        Step(prepare, compensate=unprepare),
        Step(long_step, compensate=undo_long_step),
        Step(finish),
    )


JOB = Job(job_id="j-1")


async def until_called(workflow_id: str, entry: str) -> None:
    with anyio.fail_after(5):
        while entry not in CALLS[workflow_id]:
            await anyio.sleep(0.002)


async def resume_quickly(store: MemoryStore | SQLiteStore) -> list[Outcome]:
    LONG["seconds"] = 0.0
    async with Batch(store=store) as batch:
        with anyio.fail_after(5):
            return await batch.resume()


async def test_a_long_step_is_stopped_after_the_grace_and_resumed_later(
    memory_store: MemoryStore,
) -> None:
    with anyio.fail_after(10):
        async with Batch(store=memory_store, stop_grace=0.2) as batch:
            await batch.start(JOB, workflow_id="w1")
            await until_called("w1", "long_step#1")
            leaving = time.monotonic()
        elapsed = time.monotonic() - leaving
    assert 0.15 < elapsed < 5  # the grace, not the step's 60 s

    async with Batch(store=memory_store) as batch:
        info = await batch.get("w1")
    assert info.status is WorkflowStatus.RUNNING  # neither compensated nor failed
    assert info.steps["long_step"].status == "running"
    assert info.compensated == () and "undo_long_step" not in CALLS["w1"]

    [outcome] = await resume_quickly(memory_store)
    assert outcome.ok and outcome.result(long_step) == "done"
    assert CALLS["w1"] == ["prepare", "long_step#1", "long_step#2", "finish"]
    async with Batch(store=memory_store) as batch:
        info = await batch.get("w1")
    # as after a crash: the interrupted attempt counts, and may have acted
    assert info.steps["long_step"].attempts == 2 and info.steps["long_step"].may_have_acted


async def test_a_workflow_that_ends_within_the_grace_completes(memory_store: MemoryStore) -> None:
    LONG["seconds"] = 0.05
    with anyio.fail_after(10):
        async with Batch(store=memory_store, stop_grace=5) as batch:
            await batch.start(JOB, workflow_id="w1")
            await until_called("w1", "long_step#1")
    async with Batch(store=memory_store) as batch:
        info = await batch.get("w1")
    assert info.status is WorkflowStatus.COMPLETED
    assert CALLS["w1"] == ["prepare", "long_step#1", "finish"]


async def test_cancelling_the_enclosing_scope_ends_the_graceful_wait(
    memory_store: MemoryStore,
) -> None:
    """As Ctrl-C does: the grace (60 s here) is not waited out."""
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as outer:

                async def interrupt_later() -> None:
                    await until_called("w1", "long_step#1")
                    await anyio.sleep(0.2)  # the block is left by then: the grace runs
                    outer.cancel()

                tg.start_soon(interrupt_later)
                started = time.monotonic()
                async with Batch(store=memory_store, stop_grace=60) as batch:
                    await batch.start(JOB, workflow_id="w1")
                    await until_called("w1", "long_step#1")
            elapsed = time.monotonic() - started
    assert outer.cancelled_caught
    assert elapsed < 5
    [outcome] = await resume_quickly(memory_store)
    assert outcome.ok and CALLS["w1"][-2:] == ["long_step#2", "finish"]


async def test_a_cancelled_block_stops_its_workflows_at_once(memory_store: MemoryStore) -> None:
    with anyio.fail_after(10):
        with anyio.move_on_after(0.3):
            async with Batch(store=memory_store, stop_grace=60) as batch:
                await batch.start(JOB, workflow_id="w1")
                await anyio.sleep(60)
    [outcome] = await resume_quickly(memory_store)
    assert outcome.ok


async def test_a_caller_of_run_in_another_task_is_told_and_new_work_is_refused(
    memory_store: MemoryStore,
) -> None:
    errors: list[BaseException] = []
    refused: list[BaseException] = []

    class Watch(SagaObserver):
        def workflow_stopped(self, event: WorkflowEvent) -> None:
            CALLS["stopped"].append(f"{event.workflow_id} {event.status.value}")

    batch = Batch(store=memory_store, stop_grace=0.1, observers=[Watch()])
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            async with batch:

                async def caller() -> None:
                    try:
                        await batch.run(JOB, workflow_id="w1")
                    except OrchestratorNotStarted as exc:
                        errors.append(exc)
                    try:
                        await batch.start(JOB, workflow_id="w2")
                    except OrchestratorNotStarted as exc:
                        refused.append(exc)

                tg.start_soon(caller)
                await until_called("w1", "long_step#1")
    [error] = errors
    assert "stopped before workflow 'w1' finished" in str(error)
    [late] = refused
    assert "not started" in str(late) or "stopping" in str(late)
    assert CALLS["stopped"] == ["w1 RUNNING"]
    [outcome] = await resume_quickly(memory_store)
    assert outcome.workflow_id == "w1" and outcome.ok


async def slow_unprepare(ctx: StepContext, job: Job) -> None:
    CALLS[ctx.workflow_id].append("slow_unprepare")
    await anyio.sleep(60)


class SlowUndo(Orchestrator[Job]):
    """Batch, in a version whose first compensation hangs."""

    name = "Batch"
    steps = (
        Step(prepare, compensate=slow_unprepare),
        Step(long_step, compensate=undo_long_step),
        Step(finish),
    )


async def test_a_compensation_stopped_by_the_grace_goes_on_after_resume(
    memory_store: MemoryStore,
) -> None:
    LONG["seconds"] = 0.0
    with anyio.fail_after(10):
        async with (
            FaultPlan().fail(finish).install(SlowUndo(store=memory_store, stop_grace=0.1)) as saga
        ):
            await saga.start(JOB, workflow_id="w1")
            await until_called("w1", "slow_unprepare")
    async with Batch(store=memory_store) as batch:
        info = await batch.get("w1")
        assert info.status is WorkflowStatus.COMPENSATING
        assert info.steps["prepare"].compensation == "running"
        with anyio.fail_after(5):
            [outcome] = await batch.resume()
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.compensated == ("long_step", "prepare")
    assert CALLS["w1"][-2:] == ["slow_unprepare", "unprepare"]


async def test_on_sqlite_a_stopped_workflow_resumes_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "flowkit.db"
    with anyio.fail_after(10):
        async with SQLiteStore(path) as store, Batch(store=store, stop_grace=0.1) as batch:
            await batch.start(JOB, workflow_id="w1")
            await until_called("w1", "long_step#1")
    async with SQLiteStore(path) as store:
        [outcome] = await resume_quickly(store)
    assert outcome.ok


def test_stop_grace_is_checked() -> None:
    store = MemoryStore()
    for wrong in (-1, "10", True, float("nan")):
        with pytest.raises(DefinitionError, match="stop_grace"):
            Batch(store=store, stop_grace=wrong)  # type: ignore[arg-type]
    Batch(store=store, stop_grace=0)
