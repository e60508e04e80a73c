"""Checkpoint cost against history length, on MemoryStore, SQLiteStore and PostgresStore.

Target: a checkpoint of a workflow with a 10,000-entry history costs at most 2x
a fresh workflow's.

(a) **Store level.** Two workflows in one store: a fresh one (no history) and
one created with a 10,000-entry history. Each ``save_workflow`` writes a
realistic state (4 steps with small results) and appends 1 or 2 history
entries, as the engine does. The saves of the two workflows are interleaved
(A, B, then B, A, ...) so that the machine's drift hits both; the figure is the
median save time of each, and the ratio ``10k / fresh``, median over
``--repeat`` repetitions (each with a new pair of workflows). Every repetition
checks afterwards that the appended entries were stored.

(b) **Engine level.** An :class:`~flowkit.orchestration.Orchestrator` of 4
steps whose second fails 10,000 times, then succeeds (``Retry`` without
limit or backoff). A thin proxy around the store times every ``save_workflow``; the
figure is the median checkpoint time over attempts 1-100 against attempts
9,900-10,000 of the failing step, with the number of history entries each
window's checkpoints append (the engine summarises attempts past the
``RECORDED_ATTEMPTS``-th, so the late ones append none), the final history
length and the record's state size in bytes. A run of 100 failures first warms
the orchestrator and the store up. The two windows are seconds apart, so the
machine's drift shows in their ratio; hence a second ratio, drift-proof: the
long workflow's step waits at attempt 9,900 while a fresh workflow (100
failures) runs, and another runs once it is done, and its late window is
compared with their attempts 1-100, measured just before and just after it.

PostgreSQL: ``--postgres URL`` or ``FLOWKIT_POSTGRES_URL`` (``make bench``
starts a server); each run uses a schema of its own, dropped afterwards.
Without a URL the PostgreSQL rows are left out (with a note).

Run: ``python -m benchmarks bench_checkpoint`` or
``python -m benchmarks.bench_checkpoint [--stores memory,sqlite,postgres]
[--postgres URL] [--quick]``; ``--quick`` is a smoke run of a few seconds
(1,000 entries, 1,000 failures), whose figures are not the target's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Self, cast

import anyio
from pydantic import BaseModel
from pydantic_core import to_json

from flowkit import Retry
from flowkit.orchestration import Orchestrator, Outcome, Step, StepContext
from flowkit.orchestration._state import RECORDED_ATTEMPTS
from flowkit.stores import MemoryStore, PostgresStore, SQLiteStore, StateStore, WorkflowRecord

from ._report import report
from .bench_postgres import admin

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence
    from types import TracebackType

STORES = ("memory", "sqlite", "postgres")
LABELS = {"memory": "MemoryStore", "sqlite": "SQLiteStore", "postgres": "PostgresStore"}
OWNER = "bench-checkpoint"
LEASE = 30.0
TARGET = 2.0
WINDOW = 100  # attempts per engine window
NAME = "bench.checkpoint"
ERROR = "ConnectionError: payment gateway unavailable"


@dataclass(frozen=True, slots=True)
class Settings:
    history: int  # entries of the long workflow (a)
    saves: int  # timed saves per workflow and repetition (a)
    warmup: int  # untimed saves per workflow and repetition (a)
    repeat: int  # repetitions of (a)
    failures: int  # failed attempts of the engine's step (b)


FULL = Settings(history=10_000, saves=300, warmup=30, repeat=5, failures=10_000)
QUICK = Settings(history=1_000, saves=40, warmup=5, repeat=1, failures=1_000)


# -- (a) store level -----------------------------------------------------------------------------


def step_state(status: str, attempts: int, result: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {"status": status, "attempts": attempts}
    if result is not None:
        data["result"] = result
    return data


def state(attempt: int) -> dict[str, Any]:
    """A state as the engine writes it: 4 steps, the second retrying."""
    return {
        "format": 1,
        "input": {"order_id": "o-123", "amount": 4200, "items": ["a", "b", "c"]},
        "steps": {
            "reserve": step_state("succeeded", 1, {"step": "reserve", "value": 4200}),
            "charge": {
                **step_state("retrying", attempt, None),
                "failures": attempt,
                "error": {
                    "step": "charge",
                    "type": "ConnectionError",
                    "message": "payment gateway unavailable",
                },
            },
            "ship": step_state("pending", 0, None),
            "notify": step_state("pending", 0, None),
        },
        "compensated": [],
    }


def entries(first: int, count: int) -> list[list[Any]]:
    """``count`` history entries as a retried step writes them: a start, then a failure."""
    now = int(time.time() * 1000)
    out: list[list[Any]] = []
    for index in range(first, first + count):
        attempt = index // 2 + 1
        if index % 2 == 0:
            out.append([now, "step_started", "charge", attempt])
        else:
            out.append([now, "step_failed", "charge", attempt, ERROR, "retrying in 0s"])
    return out


class Workflow:
    """One workflow being saved over and over, as its engine would."""

    def __init__(self, store: StateStore, record: WorkflowRecord, length: int) -> None:
        self.store = store
        self.record = record
        self.length = length  # history entries stored
        self.appended = 0

    @classmethod
    async def create(cls, store: StateStore, workflow_id: str, history: int) -> Self:
        record = WorkflowRecord(
            id=workflow_id,
            name=NAME,
            status="RUNNING",
            state=state(history // 2 + 1),
            owner=OWNER,
            history=entries(0, history),
        )
        stored, created = await store.create_workflow(record, lease=LEASE)
        assert created, workflow_id
        return cls(store, stored, history)

    async def save(self) -> float:
        """Seconds of one save appending 1 or 2 entries."""
        count = 1 + self.appended % 2
        record = replace(self.record, state=state(self.length // 2 + 1), history=())
        added = entries(self.length, count)
        start = time.perf_counter()
        stored = await self.store.save_workflow(record, history=added, lease=LEASE)
        elapsed = time.perf_counter() - start
        self.record = stored
        self.length += count
        self.appended += 1
        return elapsed

    async def check(self) -> None:
        """Raise unless the store holds every entry appended."""
        loaded = await self.store.load_workflow(self.record.id)
        if len(loaded.history) != self.length:
            raise AssertionError(
                f"{self.record.id}: {len(loaded.history)} history entries stored, "
                f"{self.length} written"
            )


async def store_level(store: StateStore, settings: Settings, tag: str) -> dict[str, float]:
    """Median save times (seconds) of a fresh and a long workflow, and their ratio."""
    fresh_times: list[float] = []
    long_times: list[float] = []
    ratios: list[float] = []
    for rep in range(settings.repeat):
        fresh = await Workflow.create(store, f"{tag}-fresh-{rep}", 0)
        long = await Workflow.create(store, f"{tag}-long-{rep}", settings.history)
        for _ in range(settings.warmup):
            await fresh.save()
            await long.save()
        a: list[float] = []
        b: list[float] = []
        for i in range(settings.saves):
            if i % 2 == 0:
                a.append(await fresh.save())
                b.append(await long.save())
            else:
                b.append(await long.save())
                a.append(await fresh.save())
        await fresh.check()
        await long.check()
        fresh_times.append(statistics.median(a))
        long_times.append(statistics.median(b))
        ratios.append(long_times[-1] / fresh_times[-1])
    return {
        "fresh": statistics.median(fresh_times),
        "long": statistics.median(long_times),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


# -- (b) engine level ----------------------------------------------------------------------------


class Order(BaseModel):
    order_id: str
    amount: int
    failures: int
    pause_at: int = 0  # the attempt that waits for its gate (0: none)


class Gate:
    """Where a workflow's step waits, so that other workflows run meanwhile."""

    def __init__(self) -> None:
        self.reached = anyio.Event()
        self.opened = anyio.Event()


GATES: dict[str, Gate] = {}


class Done(BaseModel):
    step: str
    value: int


async def reserve(ctx: StepContext, order: Order) -> Done:
    return Done(step="reserve", value=order.amount)


async def charge(ctx: StepContext, order: Order) -> Done:
    if ctx.attempt == order.pause_at:
        gate = GATES[ctx.workflow_id]
        gate.reached.set()
        await gate.opened.wait()
    if ctx.attempt <= order.failures:
        raise ConnectionError("payment gateway unavailable")
    return Done(step="charge", value=order.amount + 1)


async def ship(ctx: StepContext, order: Order) -> Done:
    return Done(step="ship", value=order.amount + 2)


async def notify(ctx: StepContext, order: Order) -> Done:
    return Done(step="notify", value=order.amount + 3)


class FlakyCharge(Orchestrator[Order]):
    name = NAME
    steps = (
        Step(reserve),
        Step(charge, retry=Retry(attempts=None, backoff=0.0, jitter=0.0)),
        Step(ship),
        Step(notify),
    )


@dataclass(frozen=True, slots=True)
class Sample:
    workflow_id: str
    attempt: int  # the charge step's attempts when the checkpoint was written
    seconds: float
    appended: int  # history entries the checkpoint appended
    state_bytes: int


class TimedStore:
    """A store that times each ``save_workflow`` of the store it wraps."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.samples: list[Sample] = []

    async def save_workflow(
        self,
        record: WorkflowRecord,
        *,
        history: Sequence[Sequence[Any]] = (),
        lease: float | None = None,
    ) -> WorkflowRecord:
        start = time.perf_counter()
        stored = await self._store.save_workflow(record, history=history, lease=lease)
        elapsed = time.perf_counter() - start
        steps = cast("Mapping[str, Any]", record.state["steps"])
        self.samples.append(
            Sample(
                workflow_id=record.id,
                attempt=int(steps["charge"].get("attempts", 0)),
                seconds=elapsed,
                appended=len(history),
                state_bytes=len(to_json(record.state)),
            )
        )
        return stored

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def __aenter__(self) -> Self:
        await self._store.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._store.__aexit__(exc_type, exc, tb)


def window(samples: list[Sample], workflow_id: str, first: int, last: int) -> list[float]:
    """The checkpoint times of a workflow while its step was at attempts ``first``-``last``."""
    return [
        s.seconds for s in samples if s.workflow_id == workflow_id and first <= s.attempt <= last
    ]


async def engine_level(store: StateStore, failures: int, tag: str) -> dict[str, Any]:
    """The long workflow's checkpoint times early and late, and those of fresh workflows
    run just before and just after its late window (while it waits)."""
    timed = TimedStore(store)
    long_id, before_id, after_id = f"{tag}-long", f"{tag}-before", f"{tag}-after"
    late_first = failures - WINDOW
    gate = GATES[long_id] = Gate()
    outcome: Outcome | None = None

    async def fresh(workflow_id: str) -> None:
        order = Order(order_id=workflow_id, amount=4200, failures=WINDOW)
        await saga.run(order, workflow_id=workflow_id)

    async def run_long() -> None:
        nonlocal outcome
        order = Order(order_id="o-1", amount=4200, failures=failures, pause_at=late_first)
        outcome = await saga.run(order, workflow_id=long_id)

    try:
        async with FlakyCharge(store=cast("StateStore", timed), owner=OWNER) as saga:
            await fresh(f"{tag}-warmup")  # so that the measured runs start warm
            timed.samples.clear()
            async with anyio.create_task_group() as tg:
                start = time.perf_counter()
                tg.start_soon(run_long)
                await gate.reached.wait()
                paused = time.perf_counter()
                await fresh(before_id)
                resumed = time.perf_counter()
                gate.opened.set()
            elapsed = time.perf_counter() - start - (resumed - paused)
            await fresh(after_id)
    finally:
        del GATES[long_id]
    if outcome is None or outcome.status.value != "COMPLETED":
        raise AssertionError(f"{long_id} did not complete: {outcome}")
    loaded = await store.load_workflow(long_id)
    samples = timed.samples
    early = window(samples, long_id, 1, WINDOW)
    late = window(samples, long_id, late_first, failures)
    beside = window(samples, before_id, 1, WINDOW) + window(samples, after_id, 1, WINDOW)
    long_samples = [s for s in samples if s.workflow_id == long_id]
    return {
        "early": statistics.median(early),
        "late": statistics.median(late),
        "beside": statistics.median(beside),
        "ratio": statistics.median(late) / statistics.median(early),
        "ratio_beside": statistics.median(late) / statistics.median(beside),
        "early_checkpoints": len(early),
        "late_checkpoints": len(late),
        "early_appended": sum(s.appended for s in long_samples if 1 <= s.attempt <= WINDOW),
        "late_appended": sum(
            s.appended for s in long_samples if late_first <= s.attempt <= failures
        ),
        "checkpoints": len(long_samples),
        "history": len(loaded.history),
        "state_bytes": len(to_json(loaded.state)),
        "max_state_bytes": max(s.state_bytes for s in long_samples),
        "seconds": elapsed,
    }


# -- stores --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_store(kind: str, directory: str, url: str | None) -> AsyncIterator[StateStore]:
    if kind == "memory":
        async with MemoryStore() as memory:
            yield memory
    elif kind == "sqlite":
        path = os.path.join(directory, f"checkpoint-{uuid.uuid4().hex[:8]}.db")
        async with SQLiteStore(path) as sqlite:
            yield sqlite
    else:
        assert url is not None
        schema = f"flowkit_bench_ckpt_{uuid.uuid4().hex[:12]}"
        try:
            async with PostgresStore(url, schema=schema) as postgres:
                yield postgres
        finally:
            await admin(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def measure(
    kind: str, directory: str, url: str | None, settings: Settings
) -> tuple[dict[str, float], dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    async with open_store(kind, directory, url) as store:
        stores = await store_level(store, settings, tag)
    async with open_store(kind, directory, url) as store:
        engine = await engine_level(store, settings.failures, tag)
    return stores, engine


def rows_of(
    kind: str, settings: Settings, stores: dict[str, float], engine: dict[str, Any]
) -> list[dict[str, Any]]:
    label = LABELS[kind]
    n = f"{settings.history:,}"
    late = f"{settings.failures - WINDOW:,}-{settings.failures:,}"
    measures: list[tuple[str, float, str]] = [
        ("save_workflow, fresh (0 entries)", stores["fresh"] * 1e6, "us"),
        (f"save_workflow, {n} entries", stores["long"] * 1e6, "us"),
        (f"save_workflow {n} / fresh (target <= {TARGET:g})", stores["ratio"], "x"),
        ("  lowest repetition", stores["ratio_min"], "x"),
        ("  highest repetition", stores["ratio_max"], "x"),
        (f"engine checkpoint, attempts 1-{WINDOW}", engine["early"] * 1e6, "us"),
        (f"engine checkpoint, attempts {late}", engine["late"] * 1e6, "us"),
        ("engine checkpoint, late / early", engine["ratio"], "x"),
        (
            f"fresh workflows' checkpoints, attempts 1-{WINDOW}, beside the late window",
            engine["beside"] * 1e6,
            "us",
        ),
        ("engine checkpoint, late / fresh beside it", engine["ratio_beside"], "x"),
        (f"  checkpoints in attempts 1-{WINDOW}", engine["early_checkpoints"], "writes"),
        (f"  checkpoints in attempts {late}", engine["late_checkpoints"], "writes"),
        (f"  entries they appended, attempts 1-{WINDOW}", engine["early_appended"], "entries"),
        (f"  entries they appended, attempts {late}", engine["late_appended"], "entries"),
        ("engine checkpoints, whole run", engine["checkpoints"], "writes"),
        (f"final history length ({settings.failures:,} failures)", engine["history"], "entries"),
        ("final state size", engine["state_bytes"], "bytes"),
        ("largest state written", engine["max_state_bytes"], "bytes"),
        ("engine run of the long workflow, wall time", engine["seconds"], "s"),
    ]
    return [{"store": label, "measure": m, "value": v, "unit": u} for m, v, u in measures]


def cli(argv: list[str] | None = None) -> None:
    """Run the benchmark and print JSON, then a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--stores",
        default=",".join(STORES),
        help=f"comma-separated, among {', '.join(STORES)} (default: all)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("FLOWKIT_POSTGRES_URL"),
        help="postgresql:// URL of the server (default: $FLOWKIT_POSTGRES_URL)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--history", type=int, help="entries of the long workflow (a)")
    parser.add_argument("--saves", type=int, help="timed saves per workflow and repetition (a)")
    parser.add_argument("--repeat", type=int, help="repetitions of (a), median of them")
    parser.add_argument("--failures", type=int, help="failed attempts of the engine's step (b)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    settings = replace(
        settings,
        **{
            key: value
            for key in ("history", "saves", "repeat", "failures")
            if (value := getattr(args, key)) is not None
        },
    )
    if settings.failures < 2 * WINDOW or settings.repeat < 1 or settings.saves < 1:
        parser.error(f"--failures must be >= {2 * WINDOW}, --repeat and --saves >= 1")
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    unknown = set(kinds) - set(STORES)
    if unknown:
        parser.error(f"unknown stores: {', '.join(sorted(unknown))}")
    notes: dict[str, Any] = {
        "backend": "asyncio",
        "target": f"save_workflow with {settings.history:,} entries <= {TARGET:g}x fresh",
        "store_level": f"median of {settings.saves} interleaved saves per workflow, "
        f"after {settings.warmup} untimed; ratio: median of {settings.repeat} repetitions",
        "engine_level": f"one run; step fails {settings.failures:,} times, no backoff; "
        f"RECORDED_ATTEMPTS={RECORDED_ATTEMPTS}; windows measured apart, not interleaved",
        "sqlite": "WAL, synchronous=NORMAL (the store's default)",
        "quick": args.quick,
    }
    if "postgres" in kinds and not args.postgres:
        kinds.remove("postgres")
        notes["postgres"] = "left out: give --postgres URL or set FLOWKIT_POSTGRES_URL"
        print("bench_checkpoint: no PostgreSQL URL, PostgresStore left out", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            stores, engine = asyncio.run(measure(kind, tmp, args.postgres, settings))
            rows += rows_of(kind, settings, stores, engine)
    report("checkpoint", rows, notes)


if __name__ == "__main__":
    cli()
