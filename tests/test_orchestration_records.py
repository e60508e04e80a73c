"""A workflow record that cannot be read blocks nothing: resume() and list()
skip it, get() names it, and no recorded value reaches the logs."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from flowkit.orchestration import (
    InvalidWorkflowState,
    Orchestrator,
    Step,
    StepContext,
)
from flowkit.stores._base import WorkflowRecord
from flowkit.stores._memory import MemoryStore
from flowkit.stores._sqlite import SQLiteStore
from flowkit.testing._sagas import FaultPlan, SimulatedCrash

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.anyio

CALLS: defaultdict[str, list[str]] = defaultdict(list)
SECRET = "4242-4242-4242-4242"  # stands for personal data kept in a record


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    CALLS.clear()
    yield


class Payment(BaseModel):
    card: str
    amount: int


async def authorize(ctx: StepContext, payment: Payment) -> str:
    CALLS[ctx.workflow_id].append("authorize")
    return "auth-1"


async def capture(ctx: StepContext, payment: Payment) -> int:
    CALLS[ctx.workflow_id].append("capture")
    return payment.amount


class Pay(Orchestrator[Payment]):
    steps = (Step(authorize), Step(capture))


PAYMENT = Payment(card=SECRET, amount=12)


def good_state(**changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "format": 1,
        "input": {"card": SECRET, "amount": 12},
        "steps": {
            "authorize": {"status": "succeeded", "attempts": 1, "result": "auth-1"},
            "capture": {"status": "running", "attempts": 1},
        },
    }
    state.update(changes)
    return state


def step_state(**changes: Any) -> dict[str, Any]:
    return good_state(
        steps={"authorize": {"status": "succeeded", "attempts": 1, "result": "auth-1", **changes}}
    )


BAD_STATES: dict[str, tuple[dict[str, Any], str]] = {
    "no_steps": ({k: v for k, v in good_state().items() if k != "steps"}, "'steps' is missing"),
    "steps_not_a_mapping": (good_state(steps=[SECRET]), "'steps' is missing or not a mapping"),
    "unknown_step_status": (step_state(status=SECRET), "step 'authorize' has no known status"),
    "unhashable_status": (step_state(status=[SECRET]), "step 'authorize' has no known status"),
    "attempts_of_wrong_type": (step_state(attempts=SECRET), "'attempts' is not a count"),
    "unknown_compensation_status": (
        step_state(compensation=SECRET),
        "has no known compensation status",
    ),
    "malformed_step_error": (step_state(error={"type": SECRET}), "'error' is not an error"),
    "result_of_wrong_type": (step_state(result={"no": SECRET}), "does not match its annotation"),
    "input_of_wrong_type": (
        good_state(input={"card": SECRET, "amount": "twelve"}),
        "'input' does not match the input type",
    ),
    "no_input": ({k: v for k, v in good_state().items() if k != "input"}, "'input' is missing"),
    "unknown_format": (good_state(format=SECRET), "state format is unknown"),
    "undeclared_step": (good_state(steps={SECRET: {"status": "pending"}}), "does not declare"),
    "history_of_wrong_shape": (good_state(), "'history' has an entry"),
    "history_entry_not_a_list": (good_state(), "'history' has an entry"),
    "deadline_of_wrong_type": (good_state(deadline_at=SECRET), "'deadline_at' is not a number"),
    "remaining_of_wrong_type": (good_state(remaining=[SECRET]), "'remaining' is not a list"),
    "reason_of_wrong_type": (good_state(reason=[SECRET]), "'reason' is not a string"),
    "unknown_direction": (good_state(direction=SECRET), "'direction' is neither"),
    "workflow_error_malformed": (good_state(error=SECRET), "'error' is not an error"),
    "not_a_mapping": ([SECRET], "its state is not a mapping"),  # type: ignore[dict-item]
}
GOOD_HISTORY: list[list[Any]] = [
    [1767225599100, "workflow_started"],
    [1767225599101, "step_started", "authorize", 1],
]
BAD_HISTORIES: dict[str, list[Any]] = {
    "history_of_wrong_shape": [[SECRET, 1]],
    "history_entry_not_a_list": [SECRET],
}


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    chosen = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "flowkit.db")
    async with chosen:
        yield chosen


async def crash_two_workflows(store: Any) -> None:
    """w1 and w2 are left RUNNING, as by a crash."""
    for wid in ("w1", "w2"):
        plan = FaultPlan().crash(capture, at="started")
        async with plan.install(Pay(store=store)) as pay:
            with pytest.raises(SimulatedCrash):
                await pay.run(PAYMENT, workflow_id=wid)


@pytest.mark.parametrize("kind", list(BAD_STATES))
async def test_one_unreadable_record_blocks_nothing(
    store: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    state, problem = BAD_STATES[kind]
    if kind == "not_a_mapping" and isinstance(store, SQLiteStore):
        pytest.skip("the SQLite store itself skips a row whose state is not a JSON object")
    await crash_two_workflows(store)
    history = BAD_HISTORIES.get(kind, GOOD_HISTORY)
    await store.create_workflow(
        WorkflowRecord(id="bad", name="Pay", status="RUNNING", state=state, history=history)
    )
    caplog.set_level(logging.INFO, logger="flowkit")
    async with Pay(store=store) as pay:
        with pytest.raises(InvalidWorkflowState, match="workflow 'bad'") as raised:
            await pay.get("bad")
        assert problem in str(raised.value)
        listed = await pay.list()
        outcomes = await pay.resume()
        after = await pay.list(status="COMPLETED")

    assert sorted(o.workflow_id for o in outcomes) == ["w1", "w2"]
    assert all(o.ok for o in outcomes)
    history_only = kind in BAD_HISTORIES  # list() reads no history: it lists the record
    assert [i.id for i in listed] == ["w1", "w2", "bad"] if history_only else ["w1", "w2"]
    assert [i.id for i in after] == ["w1", "w2"]
    skipped = [r for r in caplog.records if "cannot be taken over" in r.getMessage()]
    [error] = skipped
    assert error.levelno == logging.ERROR
    assert "'bad'" in error.getMessage() and problem in error.getMessage()
    assert error.__dict__["flowkit_workflow_id"] == "bad"
    warnings = [r for r in caplog.records if "list() left out" in r.getMessage()]
    if not history_only:
        [warning] = warnings
        assert warning.levelno == logging.WARNING and "'bad'" in warning.getMessage()
    for record in caplog.records:
        assert SECRET not in record.getMessage()
        assert record.exc_info is None or SECRET not in str(record.exc_info[1])
    assert SECRET not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


async def test_every_operation_on_an_unreadable_record_names_it(store: Any) -> None:
    state, _ = BAD_STATES["unknown_step_status"]
    await store.create_workflow(
        WorkflowRecord(id="failed", name="Pay", status="FAILED", state=state)
    )
    await store.create_workflow(
        WorkflowRecord(id="running", name="Pay", status="RUNNING", state=state)
    )
    async with Pay(store=store) as pay:
        operations: list[Callable[[], Awaitable[object]]] = [
            lambda: pay.run(PAYMENT, workflow_id="failed"),
            lambda: pay.run(PAYMENT, workflow_id="running"),
            lambda: pay.wait("failed"),
            lambda: pay.cancel("running"),
            lambda: pay.retry_compensation("failed"),
            lambda: pay.retry_forward("failed"),
        ]
        for operation in operations:
            with pytest.raises(InvalidWorkflowState, match=r"workflow '(failed|running)'.*cannot"):
                await operation()
        assert await pay.resume() == []
        assert await pay.list() == []
