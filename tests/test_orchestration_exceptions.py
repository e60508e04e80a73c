"""Every exception a step or compensation can raise has a defined path.

* anything but a real cancellation and the process stopping (``Exception``, a
  custom ``BaseException``, a cancellation exception raised by hand) is the
  failure of that attempt: retried and compensated by policy, the other
  workflows unaffected;
* a real cancellation (of the caller, the orchestrator or the process) and
  ``KeyboardInterrupt``/``SystemExit`` stop the workflow where it stands: it
  stays unfinished, and ``resume()`` continues it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from pydantic import BaseModel

from flowkit import Retry
from flowkit.orchestration import (
    Orchestrator,
    Parallel,
    Step,
    StepContext,
    WorkflowStatus,
)
from flowkit.testing._sagas import FaultPlan

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from flowkit.stores._memory import MemoryStore

pytestmark = pytest.mark.anyio

CALLS: defaultdict[str, list[str]] = defaultdict(list)
RAISE: dict[str, Callable[[], BaseException]] = {}


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    CALLS.clear()
    RAISE.clear()
    yield


class Quit(BaseException):
    """A custom BaseException, as some libraries raise."""


def hand_made_cancellation() -> BaseException:
    """The backend's cancellation exception, raised without anything being cancelled."""
    cancelled: Any = anyio.get_cancelled_exc_class()
    if cancelled is asyncio.CancelledError:
        return asyncio.CancelledError()
    return cancelled._create()  # type: ignore[no-any-return]  # trio.Cancelled: no public constructor


FAILURES: dict[str, Callable[[], BaseException]] = {
    "exception": lambda: ValueError("bad value"),
    "custom_base_exception": lambda: Quit("quit"),
    "hand_made_cancellation": hand_made_cancellation,
    "exception_group": lambda: BaseExceptionGroup("several", [Quit("a"), ValueError("b")]),
}
STOPS: dict[str, Callable[[], BaseException]] = {
    "keyboard_interrupt": KeyboardInterrupt,
    "system_exit": lambda: SystemExit(3),
}


class Order(BaseModel):
    order_id: str


async def reserve(ctx: StepContext, order: Order) -> None:
    CALLS[ctx.workflow_id].append("reserve")


async def release(ctx: StepContext, order: Order) -> None:
    CALLS[ctx.workflow_id].append("release")
    make = RAISE.get("release")
    if make is not None:
        raise make()


async def charge(ctx: StepContext, order: Order) -> str:
    CALLS[ctx.workflow_id].append(f"charge#{ctx.attempt}")
    make = RAISE.get("charge")
    if make is not None and ctx.workflow_id != "other":
        if ctx.attempt == 1 or "always" in RAISE:
            raise make()
    return "charged"


async def refund(ctx: StepContext, order: Order) -> None:
    CALLS[ctx.workflow_id].append("refund")


class Checkout(Orchestrator[Order]):
    steps = (
        Step(reserve, compensate=release),
        Step(charge, compensate=refund, retry=Retry(attempts=2, backoff=0)),
    )
    compensation_retry = Retry(attempts=2, backoff=0)


ORDER = Order(order_id="o-1")


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_a_step_raising_anything_but_a_stop_fails_its_attempt_and_is_retried(
    memory_store: MemoryStore, kind: str
) -> None:
    RAISE["charge"] = FAILURES[kind]
    async with Checkout(store=memory_store) as checkout:
        await checkout.start(ORDER, workflow_id="other")
        outcome = await checkout.run(ORDER, workflow_id="w1")
        info = await checkout.get("w1")
        other = await checkout.wait("other")
    assert outcome.ok and other.ok
    assert CALLS["w1"] == ["reserve", "charge#1", "charge#2"]
    failed = [t for t in info.history if t.event == "step_failed"]
    assert [(t.step, t.attempt) for t in failed] == [("charge", 1)]
    assert failed[0].error is not None
    assert failed[0].error.startswith(type(FAILURES[kind]()).__name__)


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_a_step_that_keeps_raising_it_is_compensated(
    memory_store: MemoryStore, kind: str
) -> None:
    RAISE["charge"] = FAILURES[kind]
    RAISE["always"] = FAILURES[kind]
    async with Checkout(store=memory_store) as checkout:
        outcome = await checkout.run(ORDER, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.step == "charge"
    assert outcome.compensated == ("reserve",)  # the step raised: it did not act


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_a_compensation_raising_anything_but_a_stop_fails_its_attempt(
    memory_store: MemoryStore, kind: str
) -> None:
    RAISE["charge"] = FAILURES["exception"]
    RAISE["always"] = FAILURES["exception"]
    RAISE["release"] = FAILURES[kind]
    async with Checkout(store=memory_store) as checkout:
        outcome = await checkout.run(ORDER, workflow_id="w1")
        info = await checkout.get("w1")
    assert outcome.status is WorkflowStatus.FAILED
    assert outcome.remaining == ("reserve",)
    assert info.steps["reserve"].compensation_attempts == 2
    assert CALLS["w1"].count("release") == 2


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_an_injected_failure_of_any_kind_is_the_steps_failure(
    memory_store: MemoryStore, kind: str
) -> None:
    plan = FaultPlan().fail(charge, times=None, error=FAILURES[kind]())
    async with plan.install(Checkout(store=memory_store)) as checkout:
        outcome = await checkout.run(ORDER, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert len(plan.injected) == 2


async def sibling(ctx: StepContext, order: Order) -> None:
    CALLS[ctx.workflow_id].append("sibling")
    await anyio.sleep(10)


async def undo_sibling(ctx: StepContext, order: Order) -> None:
    CALLS[ctx.workflow_id].append("undo_sibling")


async def raises_soon(ctx: StepContext, order: Order) -> None:
    await anyio.sleep(0.01)
    raise RAISE["raises_soon"]()


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_a_group_member_raising_anything_but_a_stop_fails_the_group(
    memory_store: MemoryStore, kind: str
) -> None:
    class Group(Orchestrator[Order]):
        steps = (
            Step(reserve, compensate=release),
            Parallel(Step(sibling, compensate=undo_sibling), Step(raises_soon)),
        )

    RAISE["raises_soon"] = FAILURES[kind]
    async with Group(store=memory_store) as group:
        with anyio.fail_after(5):
            outcome = await group.run(ORDER, workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.error is not None and outcome.error.step == "raises_soon"
    assert outcome.error.type == type(FAILURES[kind]()).__name__
    # the sibling was interrupted (it may have acted); the member that raised was not
    assert outcome.compensated == ("sibling", "reserve")


@pytest.mark.parametrize("kind", list(FAILURES))
async def test_a_step_with_a_timeout_raising_anything_but_a_stop_fails_its_attempt(
    memory_store: MemoryStore, kind: str
) -> None:
    class Timed(Orchestrator[Order]):
        steps = (
            Step(reserve, compensate=release, timeout=5),
            Step(charge, compensate=refund, timeout=5, retry=Retry(attempts=2, backoff=0)),
        )

    RAISE["charge"] = FAILURES[kind]
    async with Timed(store=memory_store) as timed:
        outcome = await timed.run(ORDER, workflow_id="w1")
        info = await timed.get("w1")
    assert outcome.ok
    assert info.steps["charge"].attempts == 2
    assert [t.event for t in info.history if t.step == "charge"][1] == "step_failed"


@pytest.mark.parametrize("kind", list(STOPS))
async def test_keyboard_interrupt_and_system_exit_stop_the_workflow_where_it_stands(
    memory_store: MemoryStore, kind: str
) -> None:
    """The process is stopping (on trio a Ctrl-C arrives as KeyboardInterrupt inside
    the step that the main task is awaiting): the step is neither failed nor
    compensated, and runs again after a resume."""
    RAISE["charge"] = STOPS[kind]
    async with Checkout(store=memory_store) as checkout:
        with pytest.raises(type(STOPS[kind]())):
            await checkout.run(ORDER, workflow_id="w1")
        info = await checkout.get("w1")
    assert info.status is WorkflowStatus.RUNNING
    assert info.steps["charge"].status == "running" and info.steps["charge"].error is None
    RAISE.clear()
    async with Checkout(store=memory_store) as checkout:
        [outcome] = await checkout.resume()
    assert outcome.ok
    assert CALLS["w1"] == ["reserve", "charge#1", "charge#2"]


async def test_a_stop_raised_by_a_compensation_leaves_it_to_resume(
    memory_store: MemoryStore,
) -> None:
    RAISE["charge"] = FAILURES["exception"]
    RAISE["always"] = FAILURES["exception"]
    RAISE["release"] = KeyboardInterrupt
    async with Checkout(store=memory_store) as checkout:
        with pytest.raises(KeyboardInterrupt):
            await checkout.run(ORDER, workflow_id="w1")
    RAISE.pop("release")
    async with Checkout(store=memory_store) as checkout:
        assert (await checkout.get("w1")).steps["reserve"].compensation == "running"
        [outcome] = await checkout.resume()
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert CALLS["w1"].count("release") == 2


async def blocking_charge(ctx: StepContext, order: Order) -> str:
    CALLS[ctx.workflow_id].append(f"charge#{ctx.attempt}")
    if ctx.attempt == 1:
        await anyio.sleep(10)
    return "charged"


async def test_a_real_cancellation_stops_the_workflow_where_it_stands(
    memory_store: MemoryStore,
) -> None:
    class Blocking(Orchestrator[Order]):
        steps = (Step(reserve, compensate=release), Step(blocking_charge, compensate=refund))

    async with Blocking(store=memory_store) as blocking:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def caller() -> None:
                    await blocking.run(ORDER, workflow_id="w1")

                tg.start_soon(caller)
                while "charge#1" not in CALLS["w1"]:
                    await anyio.sleep(0.002)
                tg.cancel_scope.cancel()
        info = await blocking.get("w1")
        assert info.status is WorkflowStatus.RUNNING
        assert info.steps["blocking_charge"].status == "running"
        [outcome] = await blocking.resume()
    assert outcome.ok and "refund" not in CALLS["w1"]
