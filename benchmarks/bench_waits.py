"""Durable waits on SQLite: 100,000 workflows waiting at once, and how soon they wake.

(a) **Parking.** An orchestrator ``bench.waits.approval`` whose steps are
``[Step(prepare), WaitForSignal(Go, timeout=1 day), Step(proceed)]`` starts
``--workflows`` workflows (100,000 by default) in a SQLite file of a temporary
directory, from 20 tasks calling ``start()``, at most ``WINDOW`` of them not yet
parked at a time (a :class:`~flowkit.orchestration.SagaObserver` counts the
workflows that stop running ``WAITING``). The figure is the time from the first
``start()`` to the last workflow parked, as workflows per second, checked with
``store.count_workflows()``.

The memory held by the process: its RSS (``/proc/self/statm``) after
``gc.collect()``, before the first workflow starts and at every fifth of the
count, once every workflow started so far is parked; the growth per waiting
workflow is given over the whole run and between the first fifth and the end
(the part that would grow with the count: the first fifth also pays for
what running a first workflow allocates once). Beside it: the objects the
garbage collector tracks, SQLite's own heap (``sqlite3_memory_used()``: its page
cache, 2 MiB at most per connection by default, and its statements), the peak
RSS (``VmHWM``: the workflows in flight included) and the runs the
orchestrator holds, as its ``repr`` shows them (``running=N``). Then the store
reads that the processes running the orchestrator repeat while the workflows
wait, none of them due: the waker's look (``claim_due``, ``next_wake``, every
``wait_poll`` at most), the look for free workflows (``claim_workflows``, every
half lease) and ``count_workflows()``.

(b) **Latency from due to the next step**, p50, p99 and max, in milliseconds,
with the 100,000 workflows waiting in the same store:

* timers: ``--timers`` workflows of another orchestrator,
  ``[Step(prepare), Sleep(until=input.due), Step(remind)]``, their due times
  spread evenly over ``SPREAD`` seconds, starting once they are all parked; the
  step after the sleep records ``time.time() - due``;
* signals from this process: ``orchestrator.signal(id, Go(sent_at=time.time()))``,
  one at a time (the next sent once the previous workflow's next step ran) and
  in a burst (``--burst`` signals sent back to back); the step after the wait
  records ``time.time() - sent_at``; the time ``signal()`` itself takes is given too;
* signals from another process: a second Python process opens the same file
  with an orchestrator started with ``recover=False`` (a reader, such as a
  web front end) and sends ``--remote`` signals, at random intervals (mean
  ``GAP`` seconds); this process sees them within ``wait_poll``: once with the
  default (1 s) and once with ``wait_poll=0.1``.

Run: ``python -m benchmarks bench_waits`` (about a minute) or
``python -m benchmarks.bench_waits [--workflows 100000] [--timers 2000]
[--burst 2000] [--remote 300] [--quick]``; ``--quick`` (or
``FLOWKIT_BENCH_QUICK=1``, for ``python -m benchmarks`` too) is a run of about
15 seconds with 10,000 workflows, whose figures are not the target's. The tail
latencies move with whatever else the machine runs: the load average is noted.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel

from flowkit import Message
from flowkit.orchestration import (
    Orchestrator,
    SagaObserver,
    Sleep,
    Step,
    StepContext,
    WaitForSignal,
    WorkflowEvent,
    WorkflowStatus,
)
from flowkit.stores import SQLiteStore

from ._report import report

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

DATABASE = "waits.db"
APPROVAL = "bench.waits.approval"
REMINDER = "bench.waits.reminder"
WINDOW = 500  # workflows started and not yet parked, at most (and each orchestrator's concurrency)
STARTERS = 20  # tasks calling start()
SPREAD = 4.0  # seconds over which the timers are due
GAP = 0.03  # mean seconds between two signals of the other process
FIFTHS = 5  # memory checkpoints while parking
ROOT = Path(__file__).resolve().parent.parent  # where the other process finds benchmarks


@dataclass(frozen=True, slots=True)
class Settings:
    workflows: int  # waiting at once
    timers: int  # Sleep(until=...) workflows
    sequential: int  # signals sent one at a time
    burst: int  # signals sent back to back
    remote: int  # signals sent by the other process, per wait_poll


FULL = Settings(workflows=100_000, timers=2_000, sequential=200, burst=2_000, remote=300)
QUICK = Settings(workflows=10_000, timers=300, sequential=50, burst=300, remote=60)


# -- the workflows -------------------------------------------------------------------------------


class Job(BaseModel):
    n: int
    due: float = 0.0  # the timer's due time (Unix seconds), for the reminders


class Go(Message):
    sent_at: float  # time.time() just before signal() was called


class Recorder:
    """Where the steps after a wait write how late they ran, by workflow id."""

    def __init__(self) -> None:
        self.late: dict[str, float] = {}
        self.expected = 0
        self.all_in = anyio.Event()

    def expect(self, count: int) -> None:
        """Wait for ``count`` more records (see :meth:`wait`)."""
        self.expected = len(self.late) + count
        self.all_in = anyio.Event()

    def ran(self, workflow_id: str, late: float) -> None:
        self.late[workflow_id] = late
        if len(self.late) >= self.expected:
            self.all_in.set()

    async def wait(self, timeout: float) -> None:
        with anyio.fail_after(timeout):
            await self.all_in.wait()

    def of(self, ids: Iterable[str]) -> list[float]:
        return [self.late[i] for i in ids if i in self.late]


RECORDER = Recorder()


async def prepare(ctx: StepContext, job: Job) -> None:
    return None


async def proceed(ctx: StepContext, job: Job) -> None:
    go: Go = ctx.results["wait_for_go"]
    RECORDER.ran(ctx.workflow_id, time.time() - go.sent_at)


async def remind(ctx: StepContext, job: Job) -> None:
    RECORDER.ran(ctx.workflow_id, time.time() - job.due)


def due_time(ctx: StepContext, job: Job) -> datetime:
    return datetime.fromtimestamp(job.due, UTC)


class Approval(Orchestrator[Job]):
    name = APPROVAL
    steps = (Step(prepare), WaitForSignal(Go, timeout=timedelta(days=1)), Step(proceed))


class Reminder(Orchestrator[Job]):
    name = REMINDER
    steps = (Step(prepare), Sleep(until=due_time), Step(remind))


class Parking(SagaObserver):
    """Counts the workflows that stopped running in this process to wait."""

    def __init__(self) -> None:
        self.started = 0  # counted by the caller of start()
        self.parked = 0
        self._changed = anyio.Event()

    def workflow_stopped(self, event: WorkflowEvent) -> None:
        if event.status == WorkflowStatus.WAITING:
            self.parked += 1
            self._changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed = anyio.Event()
            await self._changed.wait()


# -- memory --------------------------------------------------------------------------------------


def rss() -> int:
    """The process's resident set, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The highest resident set so far, in bytes (``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status gives no VmHWM")


def _sqlite_memory_used() -> Callable[[], int] | None:
    """SQLite's ``sqlite3_memory_used()``, from the library the ``sqlite3`` module uses."""
    try:
        import _sqlite3

        function = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (ImportError, OSError, AttributeError):
        return None
    function.restype = ctypes.c_int64
    function.argtypes = []
    return lambda: int(function())


SQLITE_MEMORY = _sqlite_memory_used()


@dataclass(frozen=True, slots=True)
class Memory:
    waiting: int
    rss: int
    objects: int  # tracked by the garbage collector
    sqlite: int | None  # bytes of SQLite's heap

    @classmethod
    def now(cls, waiting: int) -> Memory:
        gc.collect()
        return cls(
            waiting=waiting,
            rss=rss(),
            objects=len(gc.get_objects()),
            sqlite=None if SQLITE_MEMORY is None else SQLITE_MEMORY(),
        )


def running_of(orchestrator: Orchestrator[Any]) -> int | None:
    """The runs an orchestrator holds, read from its ``repr`` (``running=N``)."""
    match = re.search(r"running=(\d+)", repr(orchestrator))
    return None if match is None else int(match[1])


# -- (a) parking ---------------------------------------------------------------------------------


def approval_id(index: int) -> str:
    return f"w-{index:06d}"


async def park(orchestrator: Approval, parking: Parking, count: int) -> tuple[float, list[Memory]]:
    """Start ``count`` workflows, ``WINDOW`` in flight at most; the seconds until
    all were parked, and the memory before and at each fifth."""
    memory = [Memory.now(0)]
    elapsed = 0.0

    async def starter(upto: int) -> None:
        while True:
            await parking.until(lambda: parking.started - parking.parked < WINDOW)
            if parking.started >= upto:
                return
            index = parking.started
            parking.started += 1
            await orchestrator.start(Job(n=index), workflow_id=approval_id(index))

    for fifth in range(1, FIFTHS + 1):
        upto = count * fifth // FIFTHS
        begun = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(STARTERS):
                tg.start_soon(starter, upto)
        await parking.until(lambda: parking.parked >= parking.started)
        elapsed += time.perf_counter() - begun
        memory.append(Memory.now(upto))
    return elapsed, memory


async def waiting_count(store: SQLiteStore, name: str) -> int:
    counts = await store.count_workflows()
    return counts.get((name, "WAITING"), 0)


async def median_ms(action: Callable[[], Awaitable[object]], repeat: int = 30) -> float:
    """The median time of ``action``, in milliseconds, after one call to warm it up."""
    await action()
    samples = []
    for _ in range(repeat):
        begun = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - begun) * 1000)
    return statistics.median(samples)


async def store_looks(store: SQLiteStore) -> dict[str, float]:
    """What keeping the waiting workflows costs the processes that run their
    orchestrator: the store reads they repeat, with none of them due or free
    (the claims take nothing)."""
    waits = store.wait_ops()
    owner = "bench-waits-probe"
    return {
        "claim_due": await median_ms(
            lambda: waits.claim_due(APPROVAL, owner, lease=30.0, limit=100)
        ),
        "next_wake": await median_ms(lambda: waits.next_wake(APPROVAL)),
        "claim_workflows": await median_ms(
            lambda: store.claim_workflows(APPROVAL, owner, lease=30.0, limit=100)
        ),
        "count_workflows": await median_ms(store.count_workflows),
    }


# -- (b) latency ---------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``seconds``, in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    return {
        "p50": ms[round(0.50 * (len(ms) - 1))],
        "p99": ms[round(0.99 * (len(ms) - 1))],
        "max": ms[-1],
    }


async def timers(reminders: Reminder, parking: Parking, count: int) -> dict[str, Any]:
    """Start ``count`` reminders due over ``SPREAD`` seconds, once all are parked;
    how late the step after each sleep ran."""
    parked_before = parking.parked
    lead = 1.0 + count / 500  # parking them takes well under count / 1,000 seconds
    first_due = time.time() + lead
    ids = [f"t-{i:05d}" for i in range(count)]
    RECORDER.expect(count)
    pending = iter(enumerate(ids))

    async def starter() -> None:
        for index, workflow_id in pending:
            due = first_due + SPREAD * index / count
            await reminders.start(Job(n=index, due=due), workflow_id=workflow_id)

    async with anyio.create_task_group() as tg:
        for _ in range(STARTERS):
            tg.start_soon(starter)
    await parking.until(lambda: parking.parked - parked_before >= count)
    margin = first_due - time.time()
    await RECORDER.wait(lead + SPREAD + 60)
    return {"late": RECORDER.of(ids), "margin": margin}


async def sequential(approvals: Approval, ids: list[str]) -> tuple[list[float], list[float]]:
    """Signal one workflow at a time; how late each next step ran, and each signal() call."""
    calls: list[float] = []
    for workflow_id in ids:
        RECORDER.expect(1)
        begun = time.perf_counter()
        woke = await approvals.signal(workflow_id, Go(sent_at=time.time()))
        calls.append(time.perf_counter() - begun)
        if not woke:
            raise AssertionError(f"signal() to {workflow_id} woke no waiting workflow")
        await RECORDER.wait(30)
    return RECORDER.of(ids), calls


async def burst(approvals: Approval, ids: list[str]) -> tuple[list[float], list[float], float]:
    """Signal ``ids`` back to back; how late each next step ran, each signal() call,
    and the seconds from the first signal to the last step run."""
    calls: list[float] = []
    RECORDER.expect(len(ids))
    begun = time.perf_counter()
    for workflow_id in ids:
        sent = time.perf_counter()
        await approvals.signal(workflow_id, Go(sent_at=time.time()))
        calls.append(time.perf_counter() - sent)
    await RECORDER.wait(120)
    return RECORDER.of(ids), calls, time.perf_counter() - begun


async def remote(path: str, ids: list[str], seed: int) -> tuple[list[float], list[float]]:
    """Have another process signal ``ids``; how late each next step ran here, and
    each signal() call there."""
    RECORDER.expect(len(ids))
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_waits",
        "--send",
        json.dumps({"path": path, "ids": ids, "gap": GAP, "seed": seed}),
    ]
    result = await anyio.run_process(command, cwd=ROOT, check=True)
    await RECORDER.wait(30)
    calls = json.loads(result.stdout)["calls"]
    return RECORDER.of(ids), calls


async def send(path: str, ids: list[str], gap: float, seed: int) -> None:
    """The other process: signal ``ids`` at random intervals, through an orchestrator
    that runs none of its workflows; print the signal() call times as JSON."""
    rng = random.Random(seed)
    calls: list[float] = []
    async with SQLiteStore(path) as store, Approval(store=store, recover=False) as approvals:
        for workflow_id in ids:
            await anyio.sleep(rng.expovariate(1 / gap))
            begun = time.perf_counter()
            await approvals.signal(workflow_id, Go(sent_at=time.time()))
            calls.append(time.perf_counter() - begun)
    print(json.dumps({"calls": calls}))


# -- the run -------------------------------------------------------------------------------------


def mib(value: int) -> float:
    return value / 2**20


async def measure(
    settings: Settings, directory: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    path = os.path.join(directory, DATABASE)
    n = settings.workflows
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}

    def row(measure: str, value: float | int | str | None, unit: str) -> None:
        rows.append({"measure": measure, "value": value, "unit": unit})

    def latency(what: str, late: list[float], expected: int) -> None:
        found = percentiles(late)
        row(f"{what}: p50", found["p50"], "ms")
        row("  p99", found["p99"], "ms")
        row("  max", found["max"], "ms")
        if len(late) != expected:
            row(f"  runs recorded (of {expected:,})", len(late), "workflows")

    parking = Parking()
    async with (
        SQLiteStore(path) as store,
        Approval(store=store, concurrency=WINDOW, observers=[parking]) as approvals,
        Reminder(store=store, concurrency=WINDOW, observers=[parking]) as reminders,
    ):
        # (a) park n workflows
        seconds, memory = await park(approvals, parking, n)
        waiting = await waiting_count(store, APPROVAL)
        if waiting != n:
            raise AssertionError(f"{waiting:,} workflows WAITING, {n:,} started")
        before, after, fifth = memory[0], memory[-1], memory[1]
        row(f"park {n:,} workflows (first start -> all WAITING)", seconds, "s")
        row("  rate", n / seconds, "workflows/s")
        row("WAITING in the store (count_workflows)", waiting, "workflows")
        row("runs held by the orchestrator (repr: running=N)", running_of(approvals), "runs")
        row("RSS before the first start", mib(before.rss), "MiB")
        row(f"RSS with {n:,} waiting", mib(after.rss), "MiB")
        row("  growth", mib(after.rss - before.rss), "MiB")
        row("  per waiting workflow", (after.rss - before.rss) / n, "bytes")
        row(
            f"  per waiting workflow, {fifth.waiting:,} -> {n:,} waiting",
            (after.rss - fifth.rss) / (n - fifth.waiting),
            "bytes",
        )
        row("objects tracked by gc, growth", after.objects - before.objects, "objects")
        if before.sqlite is not None and after.sqlite is not None:
            row("SQLite heap (sqlite3_memory_used) before", mib(before.sqlite), "MiB")
            row(f"SQLite heap with {n:,} waiting", mib(after.sqlite), "MiB")
            row(
                "  growth (its page cache filling up to its 2 MiB cap)",
                mib(after.sqlite - before.sqlite),
                "MiB",
            )
        row("peak RSS (VmHWM, workflows in flight included)", mib(peak_rss()), "MiB")
        looks = await store_looks(store)
        row(f"with {n:,} waiting, none due: waker's look, claim_due", looks["claim_due"], "ms")
        row("  next_wake", looks["next_wake"], "ms")
        row("  claim_workflows (free workflows, every lease / 2)", looks["claim_workflows"], "ms")
        row("  count_workflows", looks["count_workflows"], "ms")
        notes["memory"] = [
            {
                "waiting": m.waiting,
                "rss_mib": round(mib(m.rss), 2),
                "gc_objects": m.objects,
                "sqlite_heap_mib": None if m.sqlite is None else round(mib(m.sqlite), 3),
            }
            for m in memory
        ]
        notes["orchestrator"] = repr(approvals)

        # (b) latency, with the n workflows waiting
        found = await timers(reminders, parking, settings.timers)
        notes["timers_parked_ahead_s"] = round(found["margin"], 3)
        if found["margin"] <= 0:
            notes["timers_warning"] = "the first timer was due before all were parked"
        latency(
            f"timer: due -> next step ({settings.timers:,} due over {SPREAD:g} s)",
            found["late"],
            settings.timers,
        )

        first = 0

        def take(count: int) -> list[str]:
            nonlocal first
            ids = [approval_id(i) for i in range(first, first + count)]
            first += count
            return ids

        late, calls = await sequential(approvals, take(settings.sequential))
        latency(
            f"signal, same process, one at a time ({settings.sequential:,}): signal() -> next step",
            late,
            settings.sequential,
        )
        row("  signal() call, p50", percentiles(calls)["p50"], "ms")

        ids = take(settings.burst)
        late, calls, took = await burst(approvals, ids)
        latency(
            f"signal, same process, burst of {settings.burst:,}: signal() -> next step",
            late,
            settings.burst,
        )
        row("  signal() call, p50", percentiles(calls)["p50"], "ms")
        row("  burst: first signal -> last next step", took, "s")
        row("  burst: rate", len(ids) / took, "workflows/s")

    # signals from another process, with the default wait_poll and with 0.1 s
    for poll in (None, 0.1):
        options: dict[str, Any] = {} if poll is None else {"wait_poll": poll}
        async with (
            SQLiteStore(path) as store,
            Approval(store=store, concurrency=WINDOW, **options) as approvals,
        ):
            shown = "1 s, the default" if poll is None else f"{poll:g} s"
            late, calls = await remote(path, take(settings.remote), seed=7 if poll is None else 8)
            latency(
                f"signal, other process ({settings.remote:,}), wait_poll={shown}: "
                "signal() -> next step",
                late,
                settings.remote,
            )
            row("  signal() call in the other process, p50", percentiles(calls)["p50"], "ms")
            final = await store.count_workflows()
    notes["final_counts"] = {f"{name} {status}": c for (name, status), c in sorted(final.items())}
    return rows, notes


def cli(argv: list[str] | None = None) -> None:
    """Run the benchmark and print JSON, then a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("FLOWKIT_BENCH_QUICK", "") not in ("", "0"),
        help="a run of a few seconds with 10,000 workflows (also FLOWKIT_BENCH_QUICK=1)",
    )
    parser.add_argument("--workflows", type=int, help="workflows waiting at once")
    parser.add_argument("--timers", type=int, help="Sleep(until=...) workflows")
    parser.add_argument("--burst", type=int, help="signals sent back to back")
    parser.add_argument("--remote", type=int, help="signals sent by another process, per poll")
    parser.add_argument("--send", help=argparse.SUPPRESS)  # the other process
    args = parser.parse_args(argv)
    if args.send:
        job = json.loads(args.send)
        anyio.run(send, job["path"], job["ids"], job["gap"], job["seed"])
        return
    settings = QUICK if args.quick else FULL
    settings = replace(
        settings,
        **{
            key: value
            for key in ("workflows", "timers", "burst", "remote")
            if (value := getattr(args, key)) is not None
        },
    )
    needed = settings.sequential + settings.burst + 2 * settings.remote
    if settings.workflows < max(needed, FIFTHS) or min(settings.timers, settings.burst) < 1:
        parser.error(f"--workflows must be >= {needed:,}; --timers, --burst >= 1")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        rows, notes = anyio.run(measure, settings, tmp)
        notes["database_mib"] = round(mib(os.path.getsize(os.path.join(tmp, DATABASE))), 1)
    notes["load_average"] = {"before": round(load[0], 2), "after": round(os.getloadavg()[0], 2)}
    report(
        "waits",
        rows,
        {
            "store": "SQLiteStore (WAL, synchronous=NORMAL), a file in a temporary directory",
            "backend": "asyncio",
            "workflows": settings.workflows,
            "window": f"{WINDOW} started and not yet parked at most, from {STARTERS} tasks",
            "quick": args.quick,
            **notes,
        },
    )


if __name__ == "__main__":
    cli()
