"""Waiting workflows across processes: stored ``WAITING`` and held by no process, they
are taken up by whichever process runs their orchestrator.

Child processes (``tests/waits/worker.py``) share one store, a SQLite file or a
PostgreSQL schema of their own, and one ledger (a SQLite database) where every
step and compensation records that it ran, when, in which process, and for ``b``
the note of the event or signal its wait took. Then:

* **a timer survives SIGKILL**: P1 starts workflows ``a, Sleep(2.5 s), b`` and
  is killed with SIGKILL once they all wait; P2, a process that never ran them
  (loaded ahead, it opens the store once P1 is dead), starts its orchestrator
  before they are due and runs each ``b`` once, not before its due time and at
  most 1.5 s after it; a process started after the due time of others (that no
  process ran) runs them at once;
* **an event and a signal wake the right workflow among 1,000**: 500 workflows
  wait for ``SellerAccepted`` (each for its order id), 500 for the signal
  ``Approve``; another process publishes one ``SellerAccepted`` (on Redis) and
  signals one workflow (through an orchestrator with ``recover=False``): those
  two, and no other, run ``b`` with the event's and the signal's note;
* **an early event is kept**: an event published before its workflow is started
  is kept in the store's mailbox (by a process that then stops), and the
  workflow, started later by another process, takes it at once without parking;
* **a timeout compensates after a restart**: the signal wait of workflows
  ``a, c, WaitForSignal(timeout=2 s), b`` runs out while no process runs; the
  next process compensates ``c`` then ``a``, with a ``WaitTimeout`` reason.

The events cross processes on Redis (``FLOWKIT_REDIS_URL``). Without it (and
unless ``FLOWKIT_REQUIRE_BROKERS=1``), the event tests use the in-memory
transport, which reaches one process only: the worker that waits publishes the
event itself. Signals always come from another process (they go through the
store). On SQLite, the processes that take workflows up run on trio (those
that receive events on Redis need asyncio). The figures measured are printed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import statistics
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

from .brokers import REDIS, brokers_required, drop_schema
from .brokers import postgres_url as postgres_url
from .waits.worker import (
    TIMEOUT,
    EventSaga,
    LateTimerSaga,
    SignalSaga,
    TimeoutSaga,
    TimerSaga,
    open_ledger,
    order_id,
    workflow_id,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.abc import Process

    from flowkit.stores import StateStore, WorkflowRecord

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).parent / "waits" / "worker.py"
WAIT_POLL = 1.0
"""The workers' ``wait_poll`` (the default): a signal sent by another process is
seen within it."""
ON_TIME = 1.5
"""The most seconds a due workflow may be taken up late by a running process."""
SETTLE = 30.0
"""The most seconds the test waits for the workflows to reach a status."""


@pytest.fixture
def anyio_backend() -> str:
    """The test only starts processes and reads stores: asyncio (PostgresStore needs it)."""
    return "asyncio"


# -- where the processes meet ------------------------------------------------------


@dataclasses.dataclass
class Place:
    """The store the processes share.

    Attributes:
        kind: ``sqlite`` or ``postgresql``.
        args: how a worker is told of it.
        open: opens it in the test process.
        mailbox: how many messages the mailbox keeps for an orchestrator and key.
        backend: the anyio backend of the processes that take workflows up and
            receive no events.
    """

    kind: str
    args: list[str]
    open: Callable[[], StateStore]
    mailbox: Callable[[str, str], Awaitable[int]]
    backend: str


def sqlite_place(path: Path) -> Place:
    async def mailbox(name: str, key: str) -> int:
        db = sqlite3.connect(path, timeout=30)
        try:
            row = db.execute(
                "SELECT COUNT(*) FROM flowkit_mailbox WHERE name = ? AND key = ?", (name, key)
            ).fetchone()
        finally:
            db.close()
        return int(row[0])

    return Place("sqlite", ["--store", str(path)], lambda: SQLiteStore(path), mailbox, "trio")


def postgres_place(url: str, schema: str) -> Place:
    from flowkit.stores._postgres import PostgresStore

    async def mailbox(name: str, key: str) -> int:
        import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]

        conn = await asyncpg.connect(url)
        try:
            count = await conn.fetchval(
                f'SELECT count(*) FROM "{schema}".flowkit_mailbox WHERE name = $1 AND key = $2',
                name,
                key,
            )
        finally:
            await conn.close()
        return int(count)

    return Place(
        "postgresql",
        ["--store", url, "--schema", schema],
        lambda: PostgresStore(url, schema=schema),
        mailbox,
        "asyncio",
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    """A SQLite file, or a PostgreSQL schema of the test's own (dropped afterwards)."""
    if request.param == "sqlite":
        yield sqlite_place(tmp_path / "store.db")
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"flowkit_waits_{uuid.uuid4().hex[:12]}"
    try:
        yield postgres_place(url, schema)
    finally:
        await drop_schema(url, schema)


@dataclasses.dataclass
class Events:
    """The transport the events travel on: a Redis URL, or ``memory``."""

    transport: str
    prefix: str

    @property
    def crosses(self) -> bool:
        """Whether another process can publish them."""
        return self.transport != "memory"


@pytest.fixture
async def events() -> AsyncIterator[Events]:
    """Redis under a prefix of the test's own (its keys deleted afterwards); the
    in-memory transport when no Redis is set and brokers are not required."""
    if not os.environ.get(REDIS.env, "").strip() and not brokers_required():
        yield Events("memory", "flowkit")
        return
    url = REDIS.url()
    prefix = f"flowkit-test-{uuid.uuid4().hex[:10]}"
    try:
        yield Events(url, prefix)
    finally:
        await REDIS.forget(url, prefix)


# -- the processes ---------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """A worker process and what it printed."""

    tag: str
    process: Process
    out: BufferedByteReceiveStream
    log: Path
    owner: str = ""
    began: float = 0.0
    """When it had imported everything, before it entered its orchestrators."""

    async def expect(self, word: str, timeout: float = 30.0) -> str:
        """Wait for the next line the worker prints, which must start with ``word``."""
        try:
            with anyio.fail_after(timeout):
                line = (await self.out.receive_until(b"\n", 1000)).decode().strip()
        except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead):
            pytest.fail(f"{self.tag} did not print {word!r}; its log:\n{self.tail()}")
        assert line.split()[:1] == [word], (self.tag, line, self.tail())
        return line

    async def command(self, line: str, answer: str, timeout: float = 30.0) -> str:
        """Send a command; return the line it answers, which starts with ``answer``."""
        assert self.process.stdin is not None
        await self.process.stdin.send(f"{line}\n".encode())
        return await self.expect(answer, timeout)

    async def go(self) -> None:
        """Let a held worker enter its orchestrators; wait until it is ready."""
        _, self.owner, began = (await self.command("go", "ready")).split()
        self.began = float(began)

    async def kill(self) -> None:
        """SIGKILL, and wait until it is dead."""
        self.process.kill()
        with anyio.fail_after(10):
            await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM: it leaves its orchestrators and exits cleanly."""
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            await self.expect("stopped")
            assert await self.process.wait() == 0, self.tail()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class Processes:
    """The processes of one test, on one store and one ledger."""

    tmp: Path
    place: Place
    events: Events | None = None
    workers: dict[str, Worker] = dataclasses.field(default_factory=dict)
    ledger: Path = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.ledger = self.tmp / "ledger.db"
        open_ledger(str(self.ledger)).close()

    def transport_args(self) -> list[str]:
        if self.events is None:
            return []
        return ["--transport", self.events.transport, "--prefix", self.events.prefix]

    async def spawn(
        self, tag: str, run: str, *, backend: str = "asyncio", hold: bool = False
    ) -> Worker:
        """Start a worker running the orchestrators ``run`` (a comma-separated list of
        kinds) and wait until it is ready; with ``hold``, until it has loaded, its
        orchestrators left to :meth:`Worker.go`."""
        log = self.tmp / f"{tag}.log"
        with log.open("w") as stderr:
            process = await anyio.open_process(
                [
                    sys.executable,
                    str(WORKER),
                    "serve",
                    "--tag",
                    tag,
                    *self.place.args,
                    *self.transport_args(),
                    "--ledger",
                    str(self.ledger),
                    "--run",
                    run,
                    "--backend",
                    backend,
                    "--wait-poll",
                    str(WAIT_POLL),
                    *(["--hold"] if hold else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert process.stdout is not None
        worker = Worker(tag, process, BufferedByteReceiveStream(process.stdout), log)
        self.workers[tag] = worker
        if hold:
            await worker.expect("loaded")
        else:
            _, worker.owner, began = (await worker.expect("ready")).split()
            worker.began = float(began)
        return worker

    async def send(self, *args: str) -> list[str]:
        """Run the sender with ``args`` to its end; the lines it printed."""
        command = [sys.executable, str(WORKER), "send", *self.place.args, *self.transport_args()]
        with anyio.fail_after(30):
            done = await anyio.run_process([*command, *args], check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout.decode().splitlines()

    async def close(self) -> None:
        """Kill what is left (a test that failed halfway)."""
        for worker in self.workers.values():
            if worker.process.returncode is None:
                worker.process.kill()
            with anyio.move_on_after(10):
                await worker.process.wait()
            await worker.process.aclose()

    def errors(self) -> list[str]:
        """The tracebacks and errors the workers logged."""
        return [
            f"{worker.tag}: {line}"
            for worker in self.workers.values()
            if worker.log.exists()
            for line in worker.log.read_text(errors="replace").splitlines()
            if "Traceback" in line or " ERROR " in line
        ]


# -- what happened -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    workflow: str
    step: str
    compensating: bool
    pid: int
    tag: str
    t: float
    payload: str | None


def read_ledger(path: Path) -> list[Row]:
    """The ledger, in the order the steps recorded themselves."""
    db = sqlite3.connect(path)
    try:
        return [
            Row(w, s, bool(c), p, tag, t, payload)
            for w, s, c, p, tag, t, payload in db.execute(
                "SELECT workflow, step, compensating, pid, tag, t, payload FROM ledger ORDER BY id"
            )
        ]
    finally:
        db.close()


def by_workflow(rows: list[Row]) -> dict[str, list[Row]]:
    found: dict[str, list[Row]] = {}
    for row in rows:
        found.setdefault(row.workflow, []).append(row)
    return found


def trail(rows: list[Row]) -> list[tuple[str, bool, str]]:
    """The steps of a workflow's rows, in order: (step, compensating, process tag)."""
    return [(row.step, row.compensating, row.tag) for row in rows]


async def counts(store: StateStore, name: str) -> dict[str, int]:
    """How many workflows of orchestrator ``name`` are in each status."""
    return {
        status: n for (named, status), n in (await store.count_workflows()).items() if named == name
    }


async def settle(
    store: StateStore, name: str, status: str, count: int, *, timeout: float = SETTLE
) -> None:
    """Wait until ``count`` workflows of ``name`` have ``status``."""
    seen: dict[str, int] = {}
    with anyio.move_on_after(timeout):
        while (seen := await counts(store, name)).get(status, 0) < count:
            await anyio.sleep(0.02)
        return
    pytest.fail(f"{name}: {count} workflow(s) {status} not reached in {timeout}s: {seen}")


async def due_times(store: StateStore, name: str, step: str) -> dict[str, float]:
    """When each waiting workflow of ``name`` is due: the time its wait ``step``
    computed (Unix time), checked against the record's ``wake_at``."""
    found = {}
    records: list[WorkflowRecord] = await store.list_workflows(status=["WAITING"], name=name)
    for record in records:
        until = float(record.state["steps"][step]["until"])
        assert record.wake_at is not None and abs(record.wake_at.timestamp() - until) < 0.002
        assert record.owner is None, (record.id, record.owner)
        found[record.id] = until
    return found


def figures(values: list[float]) -> str:
    return f"min={min(values):.3f}s median={statistics.median(values):.3f}s max={max(values):.3f}s"


# -- the tests -------------------------------------------------------------------


async def test_a_timer_survives_sigkill_and_fires_on_time_in_a_new_process(
    place: Place, tmp_path: Path
) -> None:
    count = 20
    procs = Processes(tmp_path, place)
    async with place.open() as store:
        try:
            # P2 is loaded ahead (Python and flowkit take a while to import on a loaded
            # machine); it opens the store only once P1 is dead
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(procs.spawn, "p1", "timer,late"))
                tg.start_soon(partial(procs.spawn, "p2", "timer", backend=place.backend, hold=True))
            p1, p2 = procs.workers["p1"], procs.workers["p2"]
            await p1.command(f"start timer 0 {count}", "started")
            await p1.command(f"start late 0 {count}", "started")
            for saga in (TimerSaga, LateTimerSaga):
                await settle(store, saga.name, "WAITING", count)
            await p1.kill()
            due = await due_times(store, TimerSaga.name, "sleep")
            late_due = await due_times(store, LateTimerSaga.name, "sleep")
            assert len(due) == len(late_due) == count

            # P2, a process that never ran them, starts its orchestrator before they are due
            await p2.go()
            p2_ready = time.time()
            assert p2_ready < min(due.values()), (p2_ready, min(due.values()))
            await settle(store, TimerSaga.name, "COMPLETED", count)

            # the others are due while no process runs them; P3 comes up after
            left = max(late_due.values()) + 0.3 - time.time()
            await anyio.sleep(max(left, 0.0))
            assert not [
                r for r in read_ledger(procs.ledger) if r.step == "b" and "late" in r.workflow
            ]
            p3 = await procs.spawn("p3", "late", backend=place.backend)
            assert p3.began > max(late_due.values())
            await settle(store, LateTimerSaga.name, "COMPLETED", count)
            await p2.stop()
            await p3.stop()
        finally:
            await procs.close()
        final = await counts(store, TimerSaga.name), await counts(store, LateTimerSaga.name)
    assert final == ({"COMPLETED": count}, {"COMPLETED": count})
    assert not procs.errors(), procs.errors()

    rows = by_workflow(read_ledger(procs.ledger))
    lateness, after_start = [], []
    for kind, taker, due_at in (("timer", "p2", due), ("late", "p3", late_due)):
        for n in range(count):
            wid = workflow_id(kind, n)
            # each step ran once: a in P1, b in the process that took the workflow up
            assert trail(rows[wid]) == [("a", False, "p1"), ("b", False, taker)], rows[wid]
            ran = rows[wid][1].t
            assert ran >= due_at[wid], (wid, "b ran before it was due", ran - due_at[wid])
            if kind == "timer":
                lateness.append(ran - due_at[wid])
            else:
                after_start.append(ran - p3.began)
    print(
        f"{place.kind}: timer b after its due time, in P2 started "
        f"{min(due.values()) - p2_ready:.2f}s before: {figures(lateness)}; "
        f"late b after P3 began (due {p3.began - max(late_due.values()):.2f}s+ before): "
        f"{figures(after_start)}"
    )
    assert max(lateness) <= ON_TIME, sorted(lateness)[-5:]
    assert max(after_start) <= ON_TIME, sorted(after_start)[-5:]


async def test_an_event_and_a_signal_wake_the_right_workflow_among_a_thousand(
    place: Place, events: Events, tmp_path: Path
) -> None:
    each = 500
    chosen_event, chosen_signal = 137, 421
    event_wid, signal_wid = workflow_id("event", chosen_event), workflow_id("signal", chosen_signal)
    event_note, signal_note = f"accepted-{uuid.uuid4().hex[:8]}", f"approved-{uuid.uuid4().hex[:8]}"
    procs = Processes(tmp_path, place, events)
    async with place.open() as store:
        try:
            worker = await procs.spawn("w", "event,signal")
            started = time.monotonic()
            await worker.command(f"start event 0 {each}", "started", timeout=60)
            await worker.command(f"start signal 0 {each}", "started", timeout=60)
            for saga in (EventSaga, SignalSaga):
                await settle(store, saga.name, "WAITING", each)
            parked = time.monotonic() - started

            # another process publishes the event (Redis) and sends the signal
            signal_args = ["--signal", "signal", signal_wid, signal_note]
            if events.crosses:
                lines = await procs.send(
                    "--publish", order_id("event", chosen_event), event_note, *signal_args
                )
                published = float(lines[0].split()[1])
                assert lines[1].startswith("sent") and lines[2] == "woke True", lines
                signalled = float(lines[1].split()[1])
            else:
                answer = await worker.command(
                    f"publish {order_id('event', chosen_event)} {event_note}", "sent"
                )
                published = float(answer.split()[1])
                lines = await procs.send(*signal_args)
                assert lines[0].startswith("sent") and lines[1] == "woke True", lines
                signalled = float(lines[0].split()[1])
            for saga in (EventSaga, SignalSaga):
                await settle(store, saga.name, "COMPLETED", 1)
            # the others stay waiting (longer than a process takes to see a signal)
            await anyio.sleep(WAIT_POLL + 0.5)
            final = await counts(store, EventSaga.name), await counts(store, SignalSaga.name)
            await worker.stop()
        finally:
            await procs.close()
    assert final == (
        {"COMPLETED": 1, "WAITING": each - 1},
        {"COMPLETED": 1, "WAITING": each - 1},
    ), final
    assert not procs.errors(), procs.errors()

    rows = read_ledger(procs.ledger)
    a_rows = [r.workflow for r in rows if r.step == "a"]
    assert len(a_rows) == len(set(a_rows)) == 2 * each
    b_rows = {r.workflow: r for r in rows if r.step == "b"}
    assert set(b_rows) == {event_wid, signal_wid}, sorted(b_rows)
    assert b_rows[event_wid].payload == event_note
    assert b_rows[signal_wid].payload == signal_note
    assert len(rows) == 2 * each + 2, "a step ran twice, or a compensation ran"
    by_event = b_rows[event_wid].t - published
    by_signal = b_rows[signal_wid].t - signalled
    print(
        f"{place.kind} ({'redis' if events.crosses else 'memory'}): {2 * each} workflows "
        f"waiting after {parked:.2f}s; publish to b {by_event:.3f}s, "
        f"signal (another process) to b {by_signal:.3f}s"
    )
    assert 0 < by_event <= ON_TIME
    assert 0 < by_signal <= WAIT_POLL + ON_TIME


async def test_an_event_published_before_its_workflow_starts_is_taken_at_once(
    place: Place, events: Events, tmp_path: Path
) -> None:
    wid, order = workflow_id("event", 0), order_id("event", 0)
    note = f"early-{uuid.uuid4().hex[:8]}"
    procs = Processes(tmp_path, place, events)
    async with place.open() as store:
        try:
            # a process running the orchestrator keeps the event in the store's mailbox
            w1 = await procs.spawn("w1", "event")
            if events.crosses:
                lines = await procs.send("--publish", order, note)
                assert lines[0].startswith("sent"), lines
            else:
                await w1.command(f"publish {order} {note}", "sent")
            with anyio.fail_after(10):
                while await place.mailbox(EventSaga.name, order) < 1:
                    await anyio.sleep(0.02)
            assert await counts(store, EventSaga.name) == {}
            starter = w1
            if events.crosses:
                # it stops; the workflow is started by another process
                await w1.stop()
                starter = await procs.spawn("w2", "event")
            started = time.time()
            await starter.command("start event 0 1", "started")
            await settle(store, EventSaga.name, "COMPLETED", 1)
            record = await store.load_workflow(wid)
            left = await place.mailbox(EventSaga.name, order)
            await starter.stop()
        finally:
            await procs.close()
    assert not procs.errors(), procs.errors()
    rows = read_ledger(procs.ledger)
    taker = "w2" if events.crosses else "w1"
    assert trail(rows) == [("a", False, taker), ("b", False, taker)], rows
    assert rows[1].payload == note
    # it took the event when it reached the wait: it never parked
    kinds = [entry[1] for entry in record.history]
    assert "woken" not in kinds, record.history
    took = [
        e for e in record.history if e[1] == "step_succeeded" and e[2] == "wait_for_seller_accepted"
    ]
    assert len(took) == 1 and "took message" in str(took[0]), record.history
    assert left == 0, "the event taken stays in the mailbox"
    delay = rows[1].t - started
    print(
        f"{place.kind} ({'redis' if events.crosses else 'memory'}): early event, "
        f"start to b {delay:.3f}s"
    )
    assert 0 < delay <= ON_TIME


async def test_a_timeout_that_passes_while_no_process_runs_compensates_in_reverse(
    place: Place, tmp_path: Path
) -> None:
    count = 10
    procs = Processes(tmp_path, place)
    async with place.open() as store:
        try:
            p1 = await procs.spawn("p1", "timeout")
            await p1.command(f"start timeout 0 {count}", "started")
            await settle(store, TimeoutSaga.name, "WAITING", count)
            await p1.kill()
            due = await due_times(store, TimeoutSaga.name, "wait_for_approve")
            assert len(due) == count
            # the timeout runs out while no process runs
            await anyio.sleep(max(max(due.values()) + 0.3 - time.time(), 0.0))
            assert await counts(store, TimeoutSaga.name) == {"WAITING": count}
            p2 = await procs.spawn("p2", "timeout", backend=place.backend)
            await settle(store, TimeoutSaga.name, "COMPENSATED", count)
            records = {
                wid: await store.load_workflow(wid)
                for wid in (workflow_id("timeout", n) for n in range(count))
            }
            await p2.stop()
        finally:
            await procs.close()
    assert not procs.errors(), procs.errors()
    rows = by_workflow(read_ledger(procs.ledger))
    delays = []
    for wid, record in records.items():
        assert trail(rows[wid]) == [
            ("a", False, "p1"),
            ("c", False, "p1"),
            ("c", True, "p2"),
            ("a", True, "p2"),
        ], rows[wid]
        assert rows[wid][2].t >= due[wid]
        state: dict[str, Any] = dict(record.state)
        assert state["error"]["type"] == "WaitTimeout", state["error"]
        assert state["error"]["step"] == "wait_for_approve"
        assert "WaitTimeout" in state["reason"], state["reason"]
        assert f"waited {TIMEOUT:g}s for signal Approve" in state["reason"], state["reason"]
        assert state["compensated"] == ["c", "a"], state["compensated"]
        assert "wait_timed_out" in [entry[1] for entry in record.history]
        delays.append(rows[wid][3].t - p2.began)
    print(f"{place.kind}: timeout compensated, from P2's start to undo_a: {figures(delays)}")
    assert max(delays) <= ON_TIME
