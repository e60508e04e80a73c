"""Properties of the saga engine over random failure plans.

Which steps fail and how often, which time out (having acted or not), which
compensations fail, and where the process crashes (then resumes): whatever the
plan, the workflow ends COMPLETED, COMPENSATED or FAILED, and

* COMPLETED: every forward step succeeded exactly once, nothing was compensated;
* COMPENSATED: each step that may have acted was compensated exactly once, in
  reverse order (a parallel group's members together); no other step was;
* FAILED: the reason and the compensations left to undo are recorded, and
  together with those that ran they are exactly the steps that may have acted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from flowkit import Retry
from flowkit.orchestration import (
    Orchestrator,
    Outcome,
    Parallel,
    Step,
    StepContext,
    WorkflowInfo,
    WorkflowStatus,
)
from flowkit.stores._memory import MemoryStore
from flowkit.testing._sagas import FaultPlan, SimulatedCrash

JOURNAL: list[tuple[str, str]] = []


class Job(BaseModel):
    job_id: str


def make_step(name: str) -> Step[Job, str]:
    async def act(ctx: StepContext, job: Job) -> str:
        JOURNAL.append(("do", name))
        return f"{name} done"

    async def undo(ctx: StepContext, job: Job) -> None:
        assert ctx.compensating
        JOURNAL.append(("undo", name))

    compensated = name != "e"
    return Step(act, name=name, compensate=undo if compensated else None)


a, b, p, q, c, e = (make_step(n) for n in ("a", "b", "p", "q", "c", "e"))


class Saga(Orchestrator[Job]):
    steps = (a, b, Parallel(p, q), c, e)
    step_retry = Retry(attempts=2, backoff=0)
    compensation_retry = Retry(attempts=2, backoff=0)


STAGE = {"a": 0, "b": 1, "p": 2, "q": 2, "c": 3, "e": 4}
STEPS = tuple(STAGE)
COMPENSABLE = ("a", "b", "p", "q", "c")
POINTS = (
    "started",
    "acted",
    "succeeded",
    "compensation_started",
    "compensation_acted",
    "compensated",
)

plans = st.fixed_dictionaries(
    {
        # step -> failing attempts (None: every attempt)
        "fail": st.dictionaries(
            st.sampled_from(STEPS), st.one_of(st.none(), st.integers(1, 3)), max_size=3
        ),
        # step -> (attempts timing out, whether each acted before)
        "timeout": st.dictionaries(
            st.sampled_from(STEPS), st.tuples(st.integers(1, 2), st.booleans()), max_size=2
        ),
        # step -> failing compensation attempts (None: every attempt)
        "comp_fail": st.dictionaries(
            st.sampled_from(COMPENSABLE), st.one_of(st.none(), st.integers(1, 2)), max_size=2
        ),
        "crash": st.one_of(st.none(), st.tuples(st.sampled_from(STEPS), st.sampled_from(POINTS))),
    }
)


def fault_plan(spec: dict[str, Any]) -> FaultPlan:
    plan = FaultPlan()
    for step, times in spec["fail"].items():
        plan.fail(step, times=times)
    for step, (times, acted) in spec["timeout"].items():
        plan.time_out(step, times=times, acted=acted)
    for step, times in spec["comp_fail"].items():
        plan.fail_compensation(step, times=times)
    if spec["crash"] is not None:
        step, point = spec["crash"]
        if step in COMPENSABLE or not point.startswith("compensat"):
            plan.crash(step, at=point)
    return plan


async def run_plan(spec: dict[str, Any]) -> tuple[Outcome, WorkflowInfo]:
    JOURNAL.clear()
    store = MemoryStore()
    plan = fault_plan(spec)
    outcome: Outcome | None = None
    with anyio.fail_after(10):
        async with store:
            async with plan.install(Saga(store=store)) as saga:
                try:
                    outcome = await saga.run(Job(job_id="j"), workflow_id="w")
                except SimulatedCrash:
                    pass
            async with plan.install(Saga(store=store)) as saga:
                resumed = await saga.resume()
                if outcome is not None:
                    assert resumed == []
                elif resumed:
                    assert [o.workflow_id for o in resumed] == ["w"]
                    outcome = resumed[0]
                else:  # the crash came after the final checkpoint
                    outcome = await saga.wait("w")
                    assert outcome.status.finished
                info = await saga.get("w")
    return outcome, info


def check(outcome: Outcome, info: WorkflowInfo) -> None:
    assert outcome.status is info.status
    succeeded = Counter(t.step for t in info.history if t.event == "step_succeeded")
    compensations = Counter(t.step for t in info.history if t.event == "step_compensated")
    undone = [s for kind, s in JOURNAL if kind == "undo"]
    acted = {n for n, s in info.steps.items() if s.may_have_acted and n in COMPENSABLE}

    if outcome.status is WorkflowStatus.COMPLETED:
        assert all(s.status == "succeeded" for s in info.steps.values())
        assert succeeded == Counter(STEPS)
        assert outcome.compensated == () and compensations == Counter() and undone == []
        assert outcome.error is None
        return

    assert outcome.error is not None and outcome.reason
    assert all(n == 1 for n in compensations.values())
    assert all(n == 1 for n in succeeded.values())
    order = list(outcome.compensated)
    assert order == [t.step for t in info.history if t.event == "step_compensated"]
    # reverse order: a later stage is never compensated after an earlier one
    stages = [STAGE[n] for n in order]
    assert stages == sorted(stages, reverse=True)
    assert set(undone) == set(order)
    for name, state in info.steps.items():
        if not state.may_have_acted:
            assert name not in order, name  # a step that raised, or never ran, is not undone

    if outcome.status is WorkflowStatus.COMPENSATED:
        assert set(order) == acted and len(order) == len(acted)
        assert outcome.remaining == ()
    else:
        assert outcome.status is WorkflowStatus.FAILED
        remaining = list(outcome.remaining)
        assert remaining, "a FAILED workflow records what is left to undo"
        assert "compensation of step" in outcome.reason
        assert set(remaining) | set(order) == acted
        assert not set(remaining) & set(order)
        left = [STAGE[n] for n in remaining]
        assert left == sorted(left, reverse=True)
        assert any(info.steps[n].compensation == "failed" for n in remaining)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=plans)
def test_every_failure_plan_ends_completed_compensated_or_failed_correctly(
    backend: str, spec: dict[str, Any]
) -> None:
    outcome, info = anyio.run(run_plan, spec, backend=backend)
    check(outcome, info)
