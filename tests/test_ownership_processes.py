"""Orchestrator processes sharing 1,000 workflows through leases, as in a rolling deploy.

Two child processes (``tests/ownership/worker.py``), P1 and P2, each start 500
workflows on one store (a SQLite file, or a PostgreSQL schema of their own) with
a lease of 2 s. A third of the way through its workflows, P1 is killed with
SIGKILL; P3 is started,
which starts no workflow of its own: it only takes over free ones. A little
later, once P2 holds some of the workflows it took over from P1, P2 is stopped
with SIGTERM: it leaves ``async with`` with no grace, so its runs stop where
they stand and it gives up their leases to P3. Then:

* every workflow reaches the status its plan dictates, COMPLETED or COMPENSATED;
* no two processes ever run a step of one workflow at the same time: the steps
  write a ledger (a SQLite database of its own) when they begin and end, and no
  two intervals of one workflow from different processes overlap (the open
  intervals of the killed process end when it was killed);
* every step and compensation of a workflow's plan succeeded at least once,
  always under its one idempotency key, and no other succeeded (but for the
  compensation of ``ship`` when it ran in a process that died or stopped before
  its failure was recorded: to the next process, it may have acted);
* the workflows P1 was running when it was killed are continued by another
  process within one and a half leases (plus 2 s of slack for a loaded machine),
  and every other workflow it left is continued by another process too (as
  fast as free slots allow: a process takes over, every half lease, only as
  many workflows as it has free slots), and so are those P2 gave up.

Each worker runs up to 100 workflows at once (the default); its steps wait
until it has started all its workflows, so that P1 has recorded all of its own
when it is killed. The workers run on asyncio (PostgresStore needs it); on
SQLite, P2 runs on trio.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from flowkit.stores import SQLiteStore

from .brokers import drop_schema
from .brokers import postgres_url as postgres_url
from .ownership.worker import WORKFLOW_NAME, open_ledger

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.abc import Process

    from flowkit.stores import StateStore, WorkflowRecord

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).parent / "ownership" / "worker.py"
WORKFLOWS = 1000
LEASE = 2.0
TAKEOVER = LEASE * 1.5 + 2.0
"""The most seconds between the kill and another process continuing a workflow the
killed process was running."""
RUN_TIMEOUT = 120.0
UNFINISHED = ("RUNNING", "COMPENSATING")
FINISHED = ("COMPLETED", "COMPENSATED", "FAILED")
FORWARD = ("reserve", "charge", "ship", "notify")


@pytest.fixture
def anyio_backend() -> str:
    """The test only starts processes and reads stores: asyncio (PostgresStore needs it)."""
    return "asyncio"


def planned(number: int) -> tuple[str, set[tuple[str, bool]]]:
    """The status and the successful (step, compensating) calls of workflow ``number``."""
    if number % 5 == 2:
        return "COMPENSATED", {
            ("reserve", False),
            ("charge", False),
            ("charge", True),
            ("reserve", True),
        }
    return "COMPLETED", {(step, False) for step in FORWARD}


@dataclasses.dataclass
class Worker:
    """A worker process and what it printed."""

    tag: str
    process: Process
    out: BufferedByteReceiveStream
    log: Path
    owner: str = ""
    pid: int = 0

    async def expect(self, word: str, timeout: float = 30.0) -> str:
        """Wait for the next line the worker prints, which must start with ``word``."""
        try:
            with anyio.fail_after(timeout):
                line = (await self.out.receive_until(b"\n", 1000)).decode().strip()
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead):
            pytest.fail(f"{self.tag} did not print {word!r}; its log:\n{self.tail()}")
        assert line.split()[:1] == [word], (self.tag, line, self.tail())
        return line

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class Scenario:
    """One run of the test on one store."""

    tmp: Path
    store: Callable[[], StateStore]
    store_args: list[str]
    backends: dict[str, str]
    ledger: Path = dataclasses.field(init=False)
    workers: dict[str, Worker] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ledger = self.tmp / "ledger.db"
        open_ledger(str(self.ledger)).close()

    async def spawn(
        self, tag: str, *, first: int = 0, count: int = 0, stop_grace: float = 10.0
    ) -> Worker:
        log = self.tmp / f"{tag}.log"
        with log.open("w") as stderr:
            process = await anyio.open_process(
                [
                    sys.executable,
                    str(WORKER),
                    "--tag",
                    tag,
                    *self.store_args,
                    "--ledger",
                    str(self.ledger),
                    "--first",
                    str(first),
                    "--count",
                    str(count),
                    "--lease",
                    str(LEASE),
                    "--backend",
                    self.backends[tag],
                    "--stop-grace",
                    str(stop_grace),
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert process.stdout is not None
        worker = Worker(tag, process, BufferedByteReceiveStream(process.stdout), log)
        self.workers[tag] = worker
        worker.owner = (await worker.expect("ready")).split()[1]
        worker.pid = process.pid
        return worker

    async def stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.process.returncode is None:
                worker.process.kill()
            with anyio.move_on_after(10):
                await worker.process.wait()
            await worker.process.aclose()


async def records(store: StateStore, status: tuple[str, ...]) -> list[WorkflowRecord]:
    return await store.list_workflows(status=status, name=WORKFLOW_NAME)


async def wait_for(
    store: StateStore,
    what: str,
    ready: Callable[[list[WorkflowRecord]], bool],
    deadline: float,
) -> list[WorkflowRecord]:
    """Poll the unfinished workflows until ``ready`` accepts them, and return them."""
    while True:
        unfinished = await records(store, UNFINISHED)
        if ready(unfinished):
            return unfinished
        if time.monotonic() > deadline:
            owners: dict[str | None, int] = {}
            for record in unfinished:
                owners[record.owner] = owners.get(record.owner, 0) + 1
            pytest.fail(
                f"timed out waiting until {what}: {len(unfinished)} of {WORKFLOWS} workflows "
                f"unfinished, by owner: {owners}; the first: "
                f"{[(r.id, r.status, r.owner, r.lease_until) for r in unfinished[:5]]}"
            )
        await anyio.sleep(0.05)


@dataclasses.dataclass
class Row:
    workflow: str
    step: str
    compensating: bool
    key: str
    attempt: int
    pid: int
    owner: str
    start: float
    end: float | None
    outcome: str | None


def read_ledger(path: Path) -> list[Row]:
    db = sqlite3.connect(path)
    try:
        return [
            Row(w, s, bool(c), k, a, p, o, t0, t1, out)
            for w, s, c, k, a, p, o, t0, t1, out in db.execute(
                "SELECT workflow, step, compensating, key, attempt, pid, owner, t_start, t_end,"
                " outcome FROM ledger ORDER BY t_start"
            )
        ]
    finally:
        db.close()


def overlaps(rows: list[Row], ends: dict[int, float]) -> list[tuple[Row, Row]]:
    """Pairs of intervals of one workflow, from different processes, that overlap.

    A row without an end takes the end its process was given in ``ends`` (the
    killed process: when it was killed); any other open row runs forever.
    """
    by_workflow: dict[str, list[Row]] = {}
    for row in rows:
        by_workflow.setdefault(row.workflow, []).append(row)
    found = []
    for group in by_workflow.values():
        group.sort(key=lambda r: r.start)
        for i, first in enumerate(group):
            end = first.end if first.end is not None else ends.get(first.pid, float("inf"))
            for second in group[i + 1 :]:
                if second.start >= end:
                    break
                if second.pid != first.pid:
                    found.append((first, second))
    return found


def trail(rows: list[Row], workflow: str) -> str:
    """The ledger rows of one workflow, for a failure message."""
    return "\n".join(
        f"{r.workflow} {r.step}{' (compensating)' if r.compensating else ''} attempt "
        f"{r.attempt} by {r.owner} [{r.start:.3f}, {r.end}] {r.outcome}"
        for r in rows
        if r.workflow == workflow
    )


def describe(pair: tuple[Row, Row]) -> str:
    return " / ".join(
        f"{r.workflow} {r.step}{' (compensating)' if r.compensating else ''} attempt {r.attempt} "
        f"by {r.owner} [{r.start:.3f}, {r.end if r.end is None else round(r.end, 3)}] {r.outcome}"
        for r in pair
    )


@dataclasses.dataclass
class Observed:
    """What the test saw of one run: when it killed and stopped which process, what
    the killed and stopped processes held then, and how the workflows ended."""

    p1: Worker
    p2: Worker
    killed_at: float
    dead_at: float
    orphans: set[str]
    stopping_at: float
    stopped_at: float
    held_by_p2: set[str]
    released: set[str]
    seconds: float
    final: dict[str, WorkflowRecord]
    histories: dict[str, Sequence[Sequence[Any]]]


async def run_scenario(scenario: Scenario) -> Observed:
    """Run the rolling deploy: start P1 and P2, kill P1, start P3, stop P2, wait."""
    started = time.monotonic()
    deadline = started + RUN_TIMEOUT
    half = WORKFLOWS // 2
    async with scenario.store() as store:  # creates the tables before any worker
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(scenario.spawn, "p1", first=0, count=half))
                tg.start_soon(partial(scenario.spawn, "p2", first=half, count=half, stop_grace=0.0))
            p1, p2 = scenario.workers["p1"], scenario.workers["p2"]
            await p1.expect("started")

            # a third of the way through P1's workflows: SIGKILL
            def p1_third_done(unfinished: list[WorkflowRecord]) -> bool:
                return sum(r.owner == p1.owner for r in unfinished) <= half * 2 // 3

            await wait_for(store, "P1 finished a third of its workflows", p1_third_done, deadline)
            killed_at = time.time()
            p1.process.kill()
            await p1.process.wait()
            dead_at = time.time()
            # a PostgreSQL server still commits what the dead process had sent; no lease
            # of P1 can run out before a third of a lease after its last renewal
            await anyio.sleep(LEASE / 6)
            orphans = {r.id for r in await records(store, UNFINISHED) if r.owner == p1.owner}
            assert orphans, "P1 was killed after it had finished its workflows"

            # the rolling deploy: P3 comes up; P2 goes down cleanly once it holds some of
            # the workflows it took over from P1 (or P3 has finished them all)
            p3 = await scenario.spawn("p3")
            await p3.expect("started")
            await p2.expect("started")

            def p2_took_over(unfinished: list[WorkflowRecord]) -> bool:
                left = [r for r in unfinished if r.id in orphans]
                return not left or any(r.owner == p2.owner for r in left)

            held = await wait_for(
                store, "P2 took over some of P1's workflows", p2_took_over, deadline
            )
            held_by_p2 = {r.id for r in held if r.owner == p2.owner}
            stopping_at = time.time()
            p2.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await p2.expect("stopped")
                assert await p2.process.wait() == 0, p2.tail()
            stopped_at = time.time()
            released = {r.id for r in await records(store, UNFINISHED)} & held_by_p2

            await wait_for(store, "every workflow finished", lambda rest: not rest, deadline)
            finished_at = time.monotonic()
            p3.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await p3.expect("stopped")
                assert await p3.process.wait() == 0, p3.tail()
            final = {r.id: r for r in await records(store, FINISHED)}
            histories = {
                wid: (await store.load_workflow(wid)).history for wid in orphans | released
            }
        finally:
            await scenario.stop_all()
    return Observed(
        p1,
        p2,
        killed_at,
        dead_at,
        orphans,
        stopping_at,
        stopped_at,
        held_by_p2,
        released,
        finished_at - started,
        final,
        histories,
    )


def check(scenario: Scenario, seen: Observed) -> dict[str, float]:
    """Check the outcome of a run; what was measured."""
    final, p1, p2, orphans, released = seen.final, seen.p1, seen.p2, seen.orphans, seen.released
    # every workflow reached its planned end
    assert len(final) == WORKFLOWS
    for number in range(WORKFLOWS):
        wid = f"wf-{number:04d}"
        status, _ = planned(number)
        assert final[wid].status == status, (wid, final[wid].status, final[wid].state)
        assert final[wid].owner is None, (wid, final[wid].owner)

    rows = read_ledger(scenario.ledger)
    # no step ran in two processes at once
    clashes = overlaps(rows, {p1.pid: seen.dead_at})
    assert not clashes, f"{len(clashes)} overlap(s):\n" + "\n".join(map(describe, clashes[:20]))
    open_rows = [r for r in rows if r.end is None and r.pid != p1.pid]
    assert not open_rows, f"steps of live processes never ended: {open_rows[:5]}"

    # each planned call succeeded at least once, under its one key; nothing else did,
    # but for the compensation of ``ship`` when an attempt of it was cut short (by the
    # kill or the stop, before its failure was recorded: it may have acted); ``ship``
    # is not retried, so a second attempt means that the first was cut short
    successes: dict[str, dict[tuple[str, bool], set[str]]] = {}
    for row in rows:
        if row.outcome == "ok":
            successes.setdefault(row.workflow, {}).setdefault(
                (row.step, row.compensating), set()
            ).add(row.key)
    ship_cut = {r.workflow for r in rows if r.step == "ship" and r.attempt > 1}
    ship_undone = 0
    for number in range(WORKFLOWS):
        wid = f"wf-{number:04d}"
        status, calls = planned(number)
        done = successes.get(wid, {})
        if status == "COMPENSATED" and wid in ship_cut and ("ship", True) in done:
            calls = calls | {("ship", True)}
            ship_undone += 1
        assert set(done) == calls, (sorted(done), sorted(calls), trail(rows, wid))
        for (step, compensating), keys in done.items():
            assert keys == {f"{wid}:{step}{':compensate' if compensating else ''}"}, (wid, keys)

    # another process continued every workflow P1 left (it claimed it, recorded as
    # ``workflow_resumed``, and ran its steps), those P1 was running within the lease
    delays = taken_over(rows, seen.histories, orphans, p1.pid, seen.killed_at)
    assert set(delays) == orphans, sorted(orphans - set(delays))[:10]
    running_in_p1 = {r.workflow for r in rows if r.pid == p1.pid} & orphans
    running_delay = max((delays[wid] for wid in running_in_p1), default=0.0)
    assert running_delay <= TAKEOVER, sorted((round(delays[w], 2), w) for w in running_in_p1)[-10:]
    # the rest of its backlog soon after: the survivors claim more as a slot frees
    # (a bound loose enough for a loaded machine; the figures are printed)
    assert max(delays.values()) <= 2 * TAKEOVER, sorted(
        (round(d, 2), w) for w, d in delays.items()
    )[-10:]
    lost = sum(
        worker.log.read_text().count("its lease was taken by another process")
        for worker in scenario.workers.values()
    )
    assert lost == 0, f"{lost} lease(s) seen lost although no live process lost one"
    # and every workflow P2 gave up when it stopped
    after_release = taken_over(rows, seen.histories, released, p2.pid, seen.stopping_at)
    assert set(after_release) == released, sorted(released - set(after_release))[:10]
    return {
        "run": seen.seconds,
        "orphans": len(orphans),
        "orphans_running": len(running_in_p1),
        "takeover_running_max": running_delay,
        "takeover_first": min(delays.values()),
        "takeover_all_max": max(delays.values()),
        "held_by_p2": len(seen.held_by_p2),
        "released_by_p2": len(released),
        "released_takeover_max_from_sigterm": max(after_release.values(), default=0.0),
        "p2_stop": seen.stopped_at - seen.stopping_at,
        "steps": len(rows),
        "ship_compensated_after_cut": ship_undone,
        "calls_run_by_two_processes": len(
            [pids for pids in callers(rows).values() if len(pids) > 1]
        ),
        "leases_seen_lost": lost,
    }


def taken_over(
    rows: list[Row],
    histories: dict[str, Sequence[Sequence[Any]]],
    workflows: set[str],
    pid: int,
    since: float,
) -> dict[str, float]:
    """Seconds from ``since`` until another process than ``pid`` continued each of
    ``workflows``: its first step there, or its ``workflow_resumed`` entry."""
    found: dict[str, float] = {}
    for row in rows:
        if row.workflow in workflows and row.pid != pid and row.start >= since:
            found[row.workflow] = min(found.get(row.workflow, math.inf), row.start - since)
    for wid in workflows:
        for entry in histories[wid]:
            at = entry[0] / 1000
            if entry[1] == "workflow_resumed" and at >= since - 0.001:
                found[wid] = min(found.get(wid, math.inf), at - since)
    return found


def callers(rows: list[Row]) -> dict[tuple[str, str, bool], set[int]]:
    """The processes each step and compensation of each workflow ran in."""
    found: dict[tuple[str, str, bool], set[int]] = {}
    for row in rows:
        found.setdefault((row.workflow, row.step, row.compensating), set()).add(row.pid)
    return found


def report(name: str, measured: dict[str, float]) -> None:
    print(
        name,
        " ".join(
            f"{key}={value}" if isinstance(value, int) else f"{key}={value:.2f}"
            for key, value in measured.items()
        ),
    )


async def test_three_processes_share_workflows_on_one_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    scenario = Scenario(
        tmp_path,
        lambda: SQLiteStore(path),
        ["--store", str(path)],
        {"p1": "asyncio", "p2": "trio", "p3": "asyncio"},
    )
    report("sqlite", check(scenario, await run_scenario(scenario)))


async def test_three_processes_share_workflows_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    from flowkit.stores._postgres import PostgresStore

    schema = f"flowkit_own_{uuid.uuid4().hex[:12]}"
    scenario = Scenario(
        tmp_path,
        lambda: PostgresStore(
            postgres_url,
            schema=schema,
            server_settings={"application_name": "flowkit-ownership-test"},
        ),
        ["--store", postgres_url, "--schema", schema],
        {"p1": "asyncio", "p2": "asyncio", "p3": "asyncio"},
    )
    try:
        report("postgresql", check(scenario, await run_scenario(scenario)))
    finally:
        await drop_schema(postgres_url, schema)
