"""Orchestrator benchmarks: in-memory overhead per step, and durable throughput on SQLite.

(a) **Overhead per step.** A 3-step workflow (each step returns a small pydantic
model) run by the orchestrator on :class:`MemoryStore`, against the same three
functions awaited directly, in the same run. The engine-only line uses a store
that keeps nothing, to separate the engine's cost from the store's. Target:
<= 25 us per step.

(b) **Durable throughput.** The same 3-step workflow on :class:`SQLiteStore`,
one workflow after another and from 100 concurrent tasks, at
``synchronous=NORMAL`` (WAL: survives a killed process, not a power loss) and,
with ``--synchronous FULL``, also at ``FULL`` (survives a power loss). The raw
SQLite rate is plain ``sqlite3`` single-row UPDATE commits at the same level,
measured in the same run; each workflow writes 4 checkpoints (its start with the
first step's, then one per step), so the ratio per checkpoint is
``workflows/s * 4 / raw commits/s``. Target: >= 0.3 concurrent.

With ``--dbos`` (and ``dbos`` importable: it is installed in the benchmarks'
own environment, ``make bench``), DBOS Transact runs the same 3-step workflow
(``@DBOS.workflow`` calling three ``@DBOS.step``) on its SQLite system
database, sequentially and from 100 concurrent tasks: at its default
durability (rollback journal, ``synchronous=FULL``) and in WAL with
``synchronous=NORMAL`` (set on its connections), so that each flowkit figure
has a DBOS figure at the same durability. Target: flowkit >= 20x DBOS
concurrent.

Run: ``python -m benchmarks bench_orchestrator`` or
``python -m benchmarks.bench_orchestrator [--dbos] [--synchronous FULL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import statistics
import tempfile
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Self

import anyio
from pydantic import BaseModel

from flowkit.orchestration import Orchestrator, Step, StepContext
from flowkit.stores import MemoryStore, SQLiteStore, WorkflowRecord

from ._dbos import dbos_workflow
from ._report import report
from .bench_store import raw_commits_per_second

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from flowkit.stores._sqlite import SynchronousLevel

CONCURRENCY = 100
CHECKPOINTS_PER_WORKFLOW = 4


class Order(BaseModel):
    order_id: str
    amount: int


class Done(BaseModel):
    step: str
    value: int


async def reserve(ctx: StepContext, order: Order) -> Done:
    return Done(step="reserve", value=order.amount)


async def charge(ctx: StepContext, order: Order) -> Done:
    return Done(step="charge", value=order.amount + 1)


async def ship(ctx: StepContext, order: Order) -> Done:
    return Done(step="ship", value=order.amount + 2)


class ThreeSteps(Orchestrator[Order]):
    name = "bench.three_steps"
    steps = (Step(reserve), Step(charge), Step(ship))


class NullStore:
    """A store that keeps nothing: isolates the engine's own cost."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def create_workflow(
        self, record: WorkflowRecord, *, lease: float | None = None
    ) -> tuple[WorkflowRecord, bool]:
        return replace(record, version=1, history=()), True

    async def save_workflow(
        self, record: WorkflowRecord, *, history: Any = (), lease: float | None = None
    ) -> WorkflowRecord:
        return replace(record, version=record.version + 1, history=())

    async def renew_leases(self, owner: str, ids: Any, *, lease: float) -> dict[str, bool]:
        return dict.fromkeys(ids, False)

    async def release_workflows(self, owner: str, ids: Any) -> None:
        return None


def orders(prefix: str, n: int) -> list[tuple[str, Order]]:
    return [(f"{prefix}-{i}", Order(order_id=f"o-{i}", amount=i)) for i in range(n)]


# -- (a) overhead ---------------------------------------------------------------------------


async def direct(work: list[tuple[str, Order]]) -> float:
    """Seconds to await the three functions directly for every order."""
    ctx = StepContext(
        workflow_id="w", workflow="w", step="s", idempotency_key="w:s", attempt=1, results={}
    )
    start = time.perf_counter()
    for _, order in work:
        await reserve(ctx, order)
        await charge(ctx, order)
        await ship(ctx, order)
    return time.perf_counter() - start


async def engine(work: list[tuple[str, Order]], store: Any) -> float:
    """Seconds for the orchestrator to run every order, one after another."""
    async with ThreeSteps(store=store) as saga:
        start = time.perf_counter()
        for wid, order in work:
            await saga.run(order, workflow_id=wid)
        return time.perf_counter() - start


async def overhead(n: int, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for label, make_store in (
        ("MemoryStore", MemoryStore),
        ("no-op store (engine only)", NullStore),
    ):
        per_step: list[float] = []
        for r in range(repeat):
            work = orders(f"ov{r}", n)
            base = await direct(work)
            total = await engine(work, make_store())
            per_step.append((total - base) / (n * 3) * 1e6)
        rows.append(
            {
                "measure": f"overhead per step, {label}",
                "value": statistics.median(per_step),
                "unit": "us",
            }
        )
    return rows


# -- (b) durable throughput --------------------------------------------------------------------


async def pool(n: int, tasks: int, run_one: Callable[[int], Awaitable[object]]) -> float:
    """Workflows per second when ``tasks`` workers run ``n`` workflows between them."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            index = next_index
            next_index += 1
            await run_one(index)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    return n / (time.perf_counter() - start)


async def flowkit_durable(
    path: str, synchronous: SynchronousLevel, sequential: int, concurrent: int
) -> tuple[float, float, int]:
    async with (
        SQLiteStore(path, synchronous=synchronous) as store,
        ThreeSteps(store=store, concurrency=CONCURRENCY) as saga,
    ):
        seq_work = orders("seq", sequential)
        conc_work = orders("conc", concurrent)

        async def run_seq(i: int) -> None:
            await saga.run(seq_work[i][1], workflow_id=seq_work[i][0])

        async def run_conc(i: int) -> None:
            await saga.run(conc_work[i][1], workflow_id=conc_work[i][0])

        seq = await pool(sequential, 1, run_seq)
        conc = await pool(concurrent, CONCURRENCY, run_conc)
        checkpoints = (await store.load_workflow("seq-0")).version
    return seq, conc, checkpoints


def durable(
    synchronous: SynchronousLevel, sequential: int, concurrent: int, repeat: int, backend: str
) -> list[dict[str, Any]]:
    raw, seq, conc = [], [], []
    checkpoints = CHECKPOINTS_PER_WORKFLOW
    for r in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            raw.append(raw_commits_per_second(os.path.join(tmp, "raw.db"), 1.0, synchronous))
            s, c, checkpoints = anyio.run(
                flowkit_durable,
                os.path.join(tmp, f"flowkit{r}.db"),
                synchronous,
                sequential,
                concurrent,
                backend=backend,
            )
            seq.append(s)
            conc.append(c)
    raw_rate, seq_rate, conc_rate = (statistics.median(x) for x in (raw, seq, conc))
    level = f"synchronous={synchronous}, WAL"
    return [
        {"measure": f"raw sqlite3 single-row commits/s, {level}", "value": raw_rate, "unit": "/s"},
        {
            "measure": f"flowkit 3-step workflows/s, sequential, {level}",
            "value": seq_rate,
            "unit": "/s",
        },
        {
            "measure": f"flowkit 3-step workflows/s, {CONCURRENCY} concurrent, {level}",
            "value": conc_rate,
            "unit": "/s",
        },
        {
            "measure": f"checkpoints per workflow, {level}",
            "value": checkpoints,
            "unit": "writes",
        },
        {
            "measure": f"ratio per checkpoint to raw, sequential, {level}",
            "value": seq_rate * checkpoints / raw_rate,
            "unit": "x raw",
        },
        {
            "measure": f"ratio per checkpoint to raw, {CONCURRENCY} concurrent, {level}",
            "value": conc_rate * checkpoints / raw_rate,
            "unit": "x raw",
        },
    ]


# -- DBOS ----------------------------------------------------------------------------------------


def dbos_rows(sequential: int, concurrent: int) -> list[dict[str, Any]]:
    """DBOS Transact running the same 3-step workflow on its SQLite system database."""
    sa_event: Any = importlib.import_module("sqlalchemy.event")
    sa_engine: Any = importlib.import_module("sqlalchemy.engine")
    wf = dbos_workflow()
    DBOS = wf.DBOS
    d_three_steps: Any = wf.workflow

    def wal_normal(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    async def measure(path: str) -> tuple[float, float]:
        DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{path}"})
        DBOS.launch()
        try:

            async def run_one(i: int) -> None:
                await d_three_steps({"order_id": f"o-{i}", "amount": i})

            seq = await pool(sequential, 1, run_one)
            conc = await pool(concurrent, CONCURRENCY, lambda i: run_one(sequential + i))
        finally:
            DBOS.destroy()
        return seq, conc

    rows = []
    for label, wal in (
        ("default: rollback journal, synchronous=FULL", False),
        ("WAL, synchronous=NORMAL", True),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            if wal:
                sa_event.listen(sa_engine.Engine, "connect", wal_normal)
            try:
                seq, conc = asyncio.run(measure(os.path.join(tmp, "dbos.sqlite")))
            finally:
                if wal:
                    sa_event.remove(sa_engine.Engine, "connect", wal_normal)
        rows.append(
            {"measure": f"DBOS 3-step workflows/s, sequential, {label}", "value": seq, "unit": "/s"}
        )
        rows.append(
            {
                "measure": f"DBOS 3-step workflows/s, {CONCURRENCY} concurrent, {label}",
                "value": conc,
                "unit": "/s",
            }
        )
    return rows


# -- main ----------------------------------------------------------------------------------------


def _value(rows: list[dict[str, Any]], measure: str) -> float | None:
    for row in rows:
        if row["measure"] == measure:
            return float(row["value"])
    return None


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-workflows", type=int, default=5_000, help="for (a)")
    parser.add_argument("--sequential", type=int, default=2_000, help="workflows, for (b)")
    parser.add_argument("--concurrent", type=int, default=10_000, help="workflows, for (b)")
    parser.add_argument("--repeat", type=int, default=3, help="median of this many runs")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument(
        "--synchronous",
        default="NORMAL",
        choices=["NORMAL", "FULL"],
        help="also measure at FULL (NORMAL is always measured)",
    )
    parser.add_argument("--dbos", action="store_true", help="include DBOS Transact if installed")
    parser.add_argument("--dbos-sequential", type=int, default=300)
    parser.add_argument("--dbos-concurrent", type=int, default=1_000)
    args = parser.parse_args(argv)

    rows = anyio.run(overhead, args.steps_workflows, args.repeat, backend=args.backend)
    levels: list[SynchronousLevel] = (
        ["NORMAL"] if args.synchronous == "NORMAL" else ["NORMAL", "FULL"]
    )
    for level in levels:
        rows += durable(level, args.sequential, args.concurrent, args.repeat, args.backend)
    notes: dict[str, Any] = {
        "backend": args.backend,
        "workflow": "3 local steps, each returning a small pydantic model",
        "concurrency": CONCURRENCY,
        "statistic": f"median of {args.repeat}",
        "targets": {
            "overhead_us_per_step": 25,
            "ratio_per_checkpoint_concurrent": 0.3,
            "times_dbos_concurrent": 20,
        },
    }
    if args.dbos:
        try:
            rows += dbos_rows(args.dbos_sequential, args.dbos_concurrent)
        except ImportError:
            notes["dbos"] = "not installed: run in the benchmarks' environment (make bench)"
        else:
            for flowkit_level, dbos_level in (
                ("synchronous=NORMAL, WAL", "WAL, synchronous=NORMAL"),
                ("synchronous=FULL, WAL", "default: rollback journal, synchronous=FULL"),
            ):
                ours = _value(
                    rows, f"flowkit 3-step workflows/s, {CONCURRENCY} concurrent, {flowkit_level}"
                )
                theirs = _value(
                    rows, f"DBOS 3-step workflows/s, {CONCURRENCY} concurrent, {dbos_level}"
                )
                if ours is not None and theirs:
                    rows.append(
                        {
                            "measure": f"flowkit / DBOS, {CONCURRENCY} concurrent, "
                            f"{flowkit_level.split(',')[0]}",
                            "value": ours / theirs,
                            "unit": "x",
                        }
                    )
    report("orchestrator", rows, notes)


if __name__ == "__main__":
    cli()
