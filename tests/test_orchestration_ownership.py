"""Workflows held by leases: several orchestrators on one store never run one
workflow at once; a dead holder's workflows are taken over; a holder that lost
its lease stops; cancel() reaches the holder; long retries keep a bounded history.

Two instances with different ``owner`` ids stand for two processes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from pydantic import BaseModel

from flowkit import Retry, StoreError
from flowkit.orchestration import (
    Orchestrator,
    SagaObserver,
    Step,
    StepContext,
    WorkflowStatus,
)
from flowkit.stores import MemoryStore, WorkflowRecord
from flowkit.testing import FaultPlan, SimulatedCrash

from ._util import wait_until
from .brokers import every_store as every_store
from .brokers import postgres_url as postgres_url

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection

    from flowkit.stores import StateStore

pytestmark = pytest.mark.anyio

#: (workflow, step) -> the owners running it right now
RUNNING: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
OVERLAPS: list[tuple[str, str, frozenset[str]]] = []
CALLS: Counter[tuple[str, str, str]] = Counter()  # (workflow, step, owner)
GATE: dict[str, anyio.Event] = {}


class Order(BaseModel):
    n: int
    pause: float = 0.0


@pytest.fixture(autouse=True)
def _clean() -> None:
    RUNNING.clear()
    OVERLAPS.clear()
    CALLS.clear()
    GATE.clear()


async def _work(ctx: StepContext, order: Order, step: str) -> str:
    key = (ctx.workflow_id, step)
    owner = _CURRENT_OWNER.get()
    RUNNING[key].add(owner)
    if len(RUNNING[key]) > 1:
        OVERLAPS.append((*key, frozenset(RUNNING[key])))
    CALLS[(ctx.workflow_id, step, owner)] += 1
    try:
        gate = GATE.get(ctx.workflow_id)
        if gate is not None and step == "pack":
            await gate.wait()
        await anyio.sleep(order.pause)
    finally:
        RUNNING[key].discard(owner)
    return step


async def reserve(ctx: StepContext, order: Order) -> str:
    return await _work(ctx, order, "reserve")


async def release(ctx: StepContext, order: Order) -> None:
    await _work(ctx, order, "release")


async def pack(ctx: StepContext, order: Order) -> str:
    return await _work(ctx, order, "pack")


async def ship(ctx: StepContext, order: Order) -> str:
    return await _work(ctx, order, "ship")


class Fulfil(Orchestrator[Order]):
    steps = (Step(reserve, compensate=release), Step(pack), Step(ship))


_CURRENT_OWNER: ContextVar[str] = ContextVar("owner")


class _Tag(SagaObserver):
    """Tells the steps which instance calls them."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    async def intercept(self, ctx: StepContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        token = _CURRENT_OWNER.set(self.owner)
        try:
            return await proceed()
        finally:
            _CURRENT_OWNER.reset(token)


class Instance(Fulfil):
    """Fulfil, run as one of several processes: its steps know whose they are."""

    def __init__(self, store: StateStore, owner: str, **kwargs: Any) -> None:
        super().__init__(store, owner=owner, observers=[_Tag(owner)], **kwargs)


async def _statuses(store: StateStore, ids: Collection[str]) -> Counter[str]:
    return Counter([(await store.load_workflow(wid)).status for wid in ids])


async def test_a_second_instance_takes_nothing_a_live_one_runs(store: StateStore) -> None:
    ids = [f"w{i}" for i in range(30)]
    async with Instance(store, "A", lease=0.6) as a, Instance(store, "B", lease=0.6) as b:
        for wid in ids:
            await a.start(Order(n=1, pause=0.05), workflow_id=wid)
        assert await b.resume() == []  # A holds them all
        await anyio.sleep(1.0)  # B's recovery looks twice meanwhile; A renews
        outcomes = [await a.wait(wid) for wid in ids]
    assert all(o.status is WorkflowStatus.COMPLETED for o in outcomes)
    assert OVERLAPS == []
    assert {owner for (_, _, owner) in CALLS} == {"A"}


async def test_a_crashed_instances_workflows_are_taken_over_within_the_lease(
    store: StateStore,
) -> None:
    plan = FaultPlan().crash(pack, at="started")
    async with plan.install(Instance(store, "A", lease=0.5)) as a:
        with pytest.raises(SimulatedCrash):
            await a.run(Order(n=1), workflow_id="w1")
    record = await store.load_workflow("w1")
    assert record.owner == "A" and record.status == "RUNNING"  # a dead process holds it
    started = anyio.current_time()
    async with Instance(store, "B", lease=0.5) as b:
        await wait_until(lambda: CALLS[("w1", "pack", "B")] >= 1, timeout=5)
        taken = anyio.current_time() - started
        outcome = await b.wait("w1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert taken < 0.5 * 1.5 + 0.5, f"taken over after {taken:.2f}s with a 0.5s lease"
    assert (await store.load_workflow("w1")).owner is None


async def test_a_stopping_instance_gives_its_workflows_up_at_once(store: StateStore) -> None:
    GATE["w1"] = anyio.Event()  # pack waits until set
    async with Instance(store, "A", lease=60, stop_grace=0) as a:
        await a.start(Order(n=1), workflow_id="w1")
        await wait_until(lambda: CALLS[("w1", "pack", "A")] == 1, timeout=5)
    record = await store.load_workflow("w1")
    assert record.status == "RUNNING" and record.owner is None
    GATE["w1"].set()
    async with Instance(store, "B", lease=60, recover=False) as b:
        [outcome] = await b.resume()  # at once, although the lease was a minute
    assert outcome.status is WorkflowStatus.COMPLETED


class _Partitioned:
    """A store whose lease renewals fail, as when the holder is cut off."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def renew_leases(self, owner: str, ids: Collection[str], *, lease: float) -> Any:
        if self.cut:
            raise StoreError("the database cannot be reached")
        return await self._store.renew_leases(owner, ids, lease=lease)

    async def __aenter__(self) -> _Partitioned:
        await self._store.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._store.__aexit__(None, None, None)


async def test_a_holder_that_lost_its_lease_stops_that_workflow(store: StateStore) -> None:
    GATE["w1"] = anyio.Event()
    cut = _Partitioned(store)
    async with Instance(cut, "A", lease=0.4) as a:
        await a.start(Order(n=1), workflow_id="w1")
        await wait_until(lambda: CALLS[("w1", "pack", "A")] == 1, timeout=5)
        cut.cut = True  # A can no longer renew: its lease runs out
        async with Instance(store, "B", lease=0.4) as b:
            await wait_until(lambda: CALLS[("w1", "pack", "B")] == 1, timeout=5)
            GATE["w1"].set()  # both packs finish; only B's checkpoint is kept
            outcome_b = await b.wait("w1")
            outcome_a = await a.wait("w1")  # A stopped the run and waited for B's outcome
    assert outcome_b.status is outcome_a.status is WorkflowStatus.COMPLETED
    assert CALLS[("w1", "ship", "A")] == 0, "A ran on after losing its lease"
    assert CALLS[("w1", "ship", "B")] == 1


async def test_cancel_reaches_the_instance_that_runs_the_workflow(store: StateStore) -> None:
    GATE["w1"] = anyio.Event()
    async with Instance(store, "A", lease=0.6) as a:
        await a.start(Order(n=1), workflow_id="w1")
        await wait_until(lambda: CALLS[("w1", "pack", "A")] == 1, timeout=5)
        async with Instance(store, "B", lease=0.6, recover=False) as b:
            with anyio.fail_after(5):
                outcome = await b.cancel("w1")
        assert await a.wait("w1") == outcome
    assert outcome.status is WorkflowStatus.COMPENSATED
    assert outcome.compensated == ("reserve",)
    assert CALLS[("w1", "release", "A")] == 1  # compensated where it ran
    assert CALLS[("w1", "ship", "A")] == 0


async def test_start_of_an_id_another_instance_holds_waits_for_it(store: StateStore) -> None:
    GATE["w1"] = anyio.Event()
    async with Instance(store, "A", lease=0.6) as a:
        await a.start(Order(n=1), workflow_id="w1")
        await wait_until(lambda: CALLS[("w1", "pack", "A")] == 1, timeout=5)
        async with Instance(store, "B", lease=0.6) as b:
            assert await b.start(Order(n=1), workflow_id="w1") == "w1"
            GATE["w1"].set()
            with anyio.fail_after(5):
                outcome = await b.run(Order(n=1), workflow_id="w1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert {owner for (_, _, owner) in CALLS} == {"A"}


async def flaky(ctx: StepContext, order: Order) -> int:
    if ctx.attempt < order.n:
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


class Flaky(Orchestrator[Order]):
    steps = (Step(flaky, retry=Retry(attempts=None, backoff=0)),)


async def test_a_long_run_of_retries_keeps_a_bounded_history(store: StateStore) -> None:
    async with Flaky(store) as flows:
        outcome = await flows.run(Order(n=60), workflow_id="w1")
        info = await flows.get("w1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert info.steps["flaky"].attempts == 60
    events = [(t.event, t.attempt) for t in info.history if t.step == "flaky"]
    assert len(info.history) < 30, [t.event for t in info.history]
    assert ("attempts_unrecorded", 60) in events
    [summary] = [t for t in info.history if t.event == "attempts_unrecorded"]
    assert summary.detail == "attempts 11 to 59"
    assert events[-1] == ("step_succeeded", 60)
    assert [a for e, a in events if e == "step_started"] == list(range(1, 11))


async def test_list_pages_by_cursor(store: StateStore) -> None:
    async with Flaky(store) as flows:
        for i in range(7):
            await flows.run(Order(n=1), workflow_id=f"w{i}")
            await anyio.sleep(0.002)
        seen: list[str] = []
        page = await flows.list(limit=3)
        while page:
            seen += [info.id for info in page]
            page = await flows.list(limit=3, after=page[-1].cursor)
    assert seen == [f"w{i}" for i in range(7)]


class _SlowCreate(MemoryStore):
    """A store whose creates take longer than a heartbeat."""

    async def create_workflow(
        self, record: WorkflowRecord, *, lease: float | None = None
    ) -> tuple[WorkflowRecord, bool]:
        await anyio.sleep(0.5)
        return await super().create_workflow(record, lease=lease)


async def test_a_heartbeat_during_a_slow_create_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _SlowCreate() as store, Flaky(store, lease=0.6) as flows:  # a beat every 0.2 s
        await flows.start(Order(n=1), workflow_id="w1")
        with anyio.fail_after(5):
            outcome = await flows.wait("w1")
    assert outcome.status is WorkflowStatus.COMPLETED
    assert "lease was taken" not in caplog.text


async def test_a_backlog_is_taken_over_as_fast_as_slots_free() -> None:
    store = MemoryStore()
    async with store:
        for i in range(40):  # left by a dead process: its leases ran out
            await store.create_workflow(
                WorkflowRecord(
                    id=f"w{i}",
                    name="Fulfil",
                    status="RUNNING",
                    state={"format": 1, "input": {"n": 1}, "steps": {}, "compensated": []},
                    owner="dead",
                ),
                lease=0.01,
            )
        await anyio.sleep(0.05)
        started = anyio.current_time()
        # 4 slots, recovery every 2 s: 10 rounds, unless slots are refilled as they free
        async with Fulfil(store, lease=4, concurrency=4):
            await anyio.sleep(2.2)
            with anyio.fail_after(1.5):
                while await store.list_workflows(status="RUNNING"):
                    await anyio.sleep(0.05)
        assert anyio.current_time() - started < 4
