"""Properties of sagas that wait, over random failure plans, signal timings, timeout
policies and crashes (while running, and while the workflow waits with no process).

The saga is ``a, b, WaitForSignal(Go, timeout), c``. Whatever the plan, the
workflow ends COMPLETED, COMPENSATED or FAILED, and

* the wait never acts and is never compensated; the other steps that may have
  acted are compensated exactly once, in reverse order;
* a wait that took the signal has it as its result; a signal that was never sent
  is never taken;
* a wait that ran out follows its policy: ``compensate`` turns back with a
  ``WaitTimeout``, ``fail`` ends FAILED with nothing undone, ``continue`` goes on
  to ``c`` without a result;
* an early signal (sent before the workflow reaches its wait) and a signal sent
  while no process runs the workflow are not lost.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from flowkit import InvalidWorkflowState, Message, Retry
from flowkit.orchestration import (
    Orchestrator,
    Outcome,
    Step,
    StepContext,
    WaitForSignal,
    WorkflowInfo,
    WorkflowStatus,
)
from flowkit.stores import MemoryStore
from flowkit.testing import FaultPlan, SimulatedCrash

JOURNAL: list[tuple[str, str]] = []
TIMEOUT = 0.15


class Job(BaseModel):
    job_id: str


class Go(Message):
    n: int


def make_step(name: str) -> Step[Job, str]:
    async def act(ctx: StepContext, job: Job) -> str:
        JOURNAL.append(("do", name))
        return f"{name} done"

    async def undo(ctx: StepContext, job: Job) -> None:
        JOURNAL.append(("undo", name))

    return Step(act, name=name, compensate=undo)


a, b, c = (make_step(n) for n in ("a", "b", "c"))
WAIT = "wait"
Policy = Literal["compensate", "fail", "continue"]


def saga(policy: Policy) -> type[Orchestrator[Job]]:
    class WaitSaga(Orchestrator[Job]):
        name = "WaitSaga"
        steps = (a, b, WaitForSignal(Go, timeout=TIMEOUT, on_timeout=policy, name=WAIT), c)
        step_retry = Retry(attempts=2, backoff=0)
        compensation_retry = Retry(attempts=2, backoff=0)

    return WaitSaga


SAGAS = {policy: saga(policy) for policy in ("compensate", "fail", "continue")}
STAGE = {"a": 0, "b": 1, WAIT: 2, "c": 3}

plans = st.fixed_dictionaries(
    {
        "policy": st.sampled_from(tuple(SAGAS)),
        "signal": st.sampled_from(("none", "early", "during", "while_down")),
        "fail": st.dictionaries(
            st.sampled_from(("a", "b", "c")), st.one_of(st.none(), st.integers(1, 2)), max_size=2
        ),
        "comp_fail": st.dictionaries(
            st.sampled_from(("a", "b")), st.one_of(st.none(), st.integers(1, 2)), max_size=1
        ),
        "crash": st.one_of(
            st.none(),
            st.tuples(st.sampled_from(("a", "b", "c")), st.sampled_from(("started", "acted"))),
            st.tuples(st.just(WAIT), st.sampled_from(("started", "succeeded"))),
        ),
    }
)


def fault_plan(spec: dict[str, Any]) -> FaultPlan:
    plan = FaultPlan()
    for step, times in spec["fail"].items():
        plan.fail(step, times=times)
    for step, times in spec["comp_fail"].items():
        plan.fail_compensation(step, times=times)
    if spec["crash"] is not None:
        step, point = spec["crash"]
        plan.crash(step, at=point)
    return plan


async def _settled(orchestrator: Orchestrator[Job]) -> None:
    """Until the workflow waits or is finished, or the orchestrator crashed
    (``get`` raises SimulatedCrash then); bounded by the caller's timeout."""
    while True:
        status = (await orchestrator.get("w")).status
        if status is WorkflowStatus.WAITING or status.finished:
            return
        await anyio.sleep(0.005)


async def _signal(orchestrator: Orchestrator[Job], sent: list[int]) -> None:
    try:
        await orchestrator.signal("w", Go(n=7))
    except InvalidWorkflowState:
        return  # it can no longer take one (it turned back, or is past its wait)
    sent.append(7)


async def run_plan(spec: dict[str, Any]) -> tuple[Outcome, WorkflowInfo, list[int]]:
    JOURNAL.clear()
    store = MemoryStore()
    plan = fault_plan(spec)
    cls = SAGAS[spec["policy"]]
    signal = spec["signal"]
    sent: list[int] = []
    outcome: Outcome | None = None
    with anyio.fail_after(15):
        async with store:
            async with plan.install(cls(store, wait_poll=0.02)) as first:
                try:
                    await first.start(Job(job_id="j"), workflow_id="w")
                    if signal == "early":
                        await _signal(first, sent)
                    if signal in ("during", "while_down"):
                        await _settled(first)
                    if signal == "during":
                        await _signal(first, sent)
                    if signal != "while_down":
                        outcome = await first.wait("w")
                except SimulatedCrash:
                    pass
            if signal == "while_down":  # no process runs it now
                async with cls(store, recover=False) as web:
                    await _signal(web, sent)
            async with plan.install(cls(store, wait_poll=0.02)) as second:
                await second.resume()
                outcome = await second.wait("w")
                info = await second.get("w")
    assert outcome is not None
    return outcome, info, sent


def check(spec: dict[str, Any], outcome: Outcome, info: WorkflowInfo, sent: list[int]) -> None:
    assert outcome.status is info.status and outcome.status.finished
    wait = info.steps[WAIT]
    assert not wait.may_have_acted or wait.status == "succeeded"
    assert WAIT not in outcome.compensated
    compensations = Counter(t.step for t in info.history if t.event == "step_compensated")
    assert all(n == 1 for n in compensations.values())
    order = list(outcome.compensated)
    stages = [STAGE[n] for n in order]
    assert stages == sorted(stages, reverse=True)
    undone = [s for kind, s in JOURNAL if kind == "undo"]
    assert set(undone) == set(order)
    for name, state in info.steps.items():
        if not state.may_have_acted:
            assert name not in order, name

    if wait.status == "succeeded":
        assert sent == [7], "the wait took a signal that was never sent"
        assert outcome.results[WAIT] == Go(n=7)
    elif wait.status in ("failed", "expired") and info.steps["b"].status == "succeeded":
        timed_out = [t for t in info.history if t.event == "wait_timed_out"]
        assert len(timed_out) == 1
        policy = spec["policy"]
        if policy == "continue":
            assert wait.status == "expired" and WAIT not in outcome.results
        elif policy == "fail":
            assert outcome.status is WorkflowStatus.FAILED
            assert "on_timeout='fail'" in (outcome.reason or "")
            assert outcome.remaining == (WAIT, "c") and order == []
        else:
            assert outcome.error is not None and outcome.error.type == "WaitTimeout"
            assert set(order) <= {"a", "b"}

    if outcome.status is WorkflowStatus.COMPLETED:
        assert wait.status in ("succeeded", "expired")
        assert order == [] and info.steps["c"].status == "succeeded"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=plans)
def test_every_plan_of_a_waiting_saga_ends_correctly(backend: str, spec: dict[str, Any]) -> None:
    outcome, info, sent = anyio.run(run_plan, spec, backend=backend)
    check(spec, outcome, info, sent)


def test_a_fault_plan_refuses_what_a_wait_cannot_do() -> None:
    cls = SAGAS["compensate"]
    store = MemoryStore()
    for plan in (
        FaultPlan().fail(WAIT),
        FaultPlan().time_out(WAIT),
        FaultPlan().crash(WAIT, at="acted"),
    ):
        with pytest.raises(Exception, match="is a wait"):
            plan.install(cls(store))
    FaultPlan().crash(WAIT, at="started").install(cls(store))
